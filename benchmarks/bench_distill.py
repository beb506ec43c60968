"""Distillation recipes side by side on the shipped sample corpus: held-out figures of small students.

    python benchmarks/bench_distill.py --out benchmarks/results --name tiny_cpu

Trains, on the CPU with one thread, an ``arch=tiny`` teacher (2 layers) on ``data=sample`` with a token
budget, then three 1-layer students with the same token budget each: ``cramming.distill`` with this
project's default (``distill.recipe=crammed``), with ``distill.recipe=distilbert``, and the same
1-layer model pretrained from scratch (the teacher's tokenizer). Every final export is scored on one
held-out text (``cramming.heldout``: the sample's validation books, masked once at 15% with ``[MASK]``,
the same spans for every model), so the figures compare across training masking rates. Writes
``distill_<name>.json`` and ``.md`` under ``--out`` with the commands that made them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], log: Path) -> float:
    """Run a CLI with one thread and the PyTorch ops; its output goes to ``log``; returns wall seconds."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")
    return time.monotonic() - started


def plan(args, work: Path) -> dict[str, list[str]]:
    common = ["data=sample", f"data.cache_dir={work / 'cache'}", "impl.threads=1", "impl.kernels=torch",
              f"base_dir={work / 'outputs'}", f"seed={args.seed}", "train.validation_batches=20"]  # fmt: skip
    teacher = work / "outputs" / "teacher" / "model"
    pretrain, distill = [sys.executable, "-m", "cramming"], [sys.executable, "-m", "cramming.distill"]
    student = [*distill, f"teacher={teacher}", "student.num_layers=1", f"budget={args.student_tokens}tokens"]
    return {
        "teacher": [*pretrain, "arch=tiny", f"budget={args.teacher_tokens}tokens", "name=teacher", *common],
        "distill-crammed": [*student, "name=distill-crammed", *common],
        "distill-distilbert": [*student, "distill.recipe=distilbert", "name=distill-distilbert", *common],
        "scratch": [
            *pretrain,
            "arch=tiny",
            "arch.num_layers=1",
            f"budget={args.student_tokens}tokens",
            f"data.tokenizer.path={teacher / 'tokenizer.json'}",
            "name=scratch",
            *common,
        ],  # fmt: skip
    }


def score_all(work: Path, names: list[str], chars: int) -> dict[str, dict]:
    """Every export on one held-out text: the teacher's data config frames it (all share its tokenizer)."""
    from cramming.export.folder import load_model, read_tokenizer
    from cramming.heldout import build_heldout, heldout_documents, score
    from cramming.runtime import make_runtime

    make_runtime({"device": "cpu", "kernels": "torch", "threads": 1})  # as the CLIs run (common)
    data_cfg = yaml.safe_load((work / "outputs" / "teacher" / "config.yaml").read_text())["data"]
    docs = heldout_documents(data_cfg, chars)
    teacher_dir = work / "outputs" / "teacher" / "model"
    heldout = build_heldout(
        docs, read_tokenizer(teacher_dir), data_cfg, {"mask_rate": 0.15, "mask_style": "mask"}
    )
    return {name: score(load_model(work / "outputs" / name / "model"), heldout) for name in names}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default="tiny_cpu")
    p.add_argument("--work", type=Path, default=REPO / "outputs" / "bench_distill")
    p.add_argument("--teacher-tokens", type=int, default=400_000)
    p.add_argument("--student-tokens", type=int, default=200_000)
    p.add_argument("--heldout-chars", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse", action="store_true", help="keep finished runs under --work (same commands)")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    commands = plan(args, args.work)
    runs = {}
    for name, cmd in commands.items():
        done = args.work / "outputs" / name / "summary.json"
        reuse = args.reuse and done.is_file() and json.loads(done.read_text()).get("finished")
        wall = None if reuse else run(cmd, args.work / f"{name}.log")  # --reuse: a finished run of --work
        summary = json.loads(done.read_text())
        keep = ("steps", "tokens_seen", "elapsed_s", "valid_mlm_loss", "parameters")
        runs[name] = {**{k: summary.get(k) for k in keep}, "wall_s": None if wall is None else round(wall, 1)}
        print(f"{name}: {runs[name]}", flush=True)
    for name, result in score_all(args.work, list(commands), args.heldout_chars).items():
        runs[name]["heldout"] = {k: result[k] for k in ("nats_per_masked_token", "bits_per_char")}
    result = {
        "script": "benchmarks/bench_distill.py",
        "command": " ".join(
            ["python", "benchmarks/bench_distill.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "note": "CPU, impl.threads=1, data=sample, arch=tiny teacher; 1-layer students at one token budget; "
        "held-out: the sample's validation books (first --heldout-chars characters), 15% [MASK], one masking "
        "for all models; valid_mlm_loss is each run's own validation at its own training masking rate",
        "settings": {
            k: getattr(args, k) for k in ("teacher_tokens", "student_tokens", "heldout_chars", "seed")
        },
        "run_commands": {k: " ".join(v[1:]) for k, v in commands.items()},
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"distill_{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        "| run | steps | tokens | training s | held-out nats/masked token | bits/char |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        h = r["heldout"]
        rows.append(f"| {name} | {r['steps']} | {r['tokens_seen']:,} | {r['elapsed_s']:.0f} | "
                    f"{h['nats_per_masked_token']:.3f} | {h['bits_per_char']:.3f} |")  # fmt: skip
    (args.out / f"distill_{args.name}.md").write_text("\n".join(rows) + "\n")
    return result


if __name__ == "__main__":
    main()
