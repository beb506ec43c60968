"""Helpers of benchmarks/run_gpu.sh (standard library only, so they run before anything is installed).

    python benchmarks/run_gpu_report.py corpus PATH MB   # a synthetic corpus: random words, fixed seed
    python benchmarks/run_gpu_report.py summary DIR      # DIR/summary.{md,json} from everything in DIR

The summary gathers what the check is for: versions, GPU and its MFU peak (env.json); what ran per op
after the self-check; per training setting (eager/compile x torch/Triton ops, and 4 microbatches per
step) the steady-state tokens/s and MFU (the median over per-step log lines after the first 10% of the
run, which hold compilation, autotuning and warm-up), data-wait share, peak memory, the first step's
seconds (compile + autotune), graph breaks and recompiles logged (TORCH_LOGS); Dynamo's graph count
and breaks per kernel choice (dynamo.json); the first 100 losses of eager and compiled runs side by
side; bf16 errors vs fp64 (errors.json); the benchmark tables; the steps' status; the tests' last lines.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

SETTINGS = ("eager_torch", "eager_triton", "compile_torch", "compile_triton", "compile_triton_acc4")
LOSS_PAIRS = (("eager_torch", "compile_torch"), ("eager_triton", "compile_triton"))


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> None:
    """Documents of random lowercase words (Zipf-like frequencies) in the local corpus format:
    one paragraph per line, a blank line between documents. Enough distinct words that a
    32768-token WordPiece vocabulary fills up, so the model has crammed-BERT's real decoder size."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = list({"".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(40000)})
    weights = [1.0 / (rank + 1) for rank in range(len(words))]
    cumulative, total = [], 0.0
    for w in weights:
        total += w
        cumulative.append(total)
    path.parent.mkdir(parents=True, exist_ok=True)
    budget = int(megabytes * 2**20)
    with path.open("w") as f:
        while budget > 0:
            for _ in range(rng.randint(3, 8)):  # paragraphs of one document
                sentences = [
                    " ".join(rng.choices(words, cum_weights=cumulative, k=rng.randint(6, 20))) + "."
                    for _ in range(rng.randint(3, 6))
                ]
                line = " ".join(sentences) + "\n"
                f.write(line)
                budget -= len(line)
            f.write("\n")


def _median(values: list) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _train_records(run_dir: Path) -> list[dict]:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return []
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("kind", "train") == "train" and "tokens_per_s" in r]


def _logged(out: Path, setting: str, text: str) -> int | None:
    """Lines holding ``text`` in the run's console output (TORCH_LOGS goes there); None for eager runs."""
    log = out / f"train_{setting}.txt"
    if not setting.startswith("compile") or not log.exists():
        return None
    return sum(text in line for line in log.read_text(errors="replace").splitlines())


def run_row(run_dir: Path, out: Path | None = None) -> dict:
    """One setting's figures from its metrics.jsonl and summary.json (whatever exists of them)."""
    row: dict = {"setting": run_dir.name}
    train = _train_records(run_dir)
    last = max((r.get("step", 0) for r in train), default=0)
    steady = [r for r in train if r.get("step", 0) > max(1, last // 10)] or train
    row["steps"] = last
    row["microbatches"] = 4 if run_dir.name.endswith("_acc4") else 1
    row["tokens_per_s"] = _median([r.get("tokens_per_s") for r in steady])
    row["mfu"] = _median([r.get("mfu") for r in steady])
    row["data_wait"] = _median([r.get("data_wait") for r in steady])  # a fraction
    row["peak_mem_gb"] = max((r.get("mem_gb", 0.0) for r in train), default=None)
    summary = _read_json(run_dir / "summary.json")
    row["first_step_s"] = summary.get("compile_s")  # compiled runs: compile + autotune + the step
    first = next((r for r in train if r.get("step") == 1 and r.get("tokens_per_s")), None)
    if row["first_step_s"] is None and first and first.get("tokens"):  # eager: autotune + the step
        row["first_step_s"] = first["tokens"] / first["tokens_per_s"]
    row["compiled"] = summary.get("compiled")
    row["finished"] = bool(summary.get("finished"))
    row["kernels"] = summary.get("kernels")
    row["hardware"] = summary.get("hardware")
    out = out or run_dir.parent.parent
    row["graph_breaks_logged"] = _logged(out, run_dir.name, "Graph break")
    row["recompiles_logged"] = _logged(out, run_dir.name, "Recompiling function")
    return row


def first_losses(out: Path, count: int = 100) -> dict:
    """{"step": [1..], setting: [loss per step]} for the settings with per-step losses."""
    losses: dict = {}
    for setting in SETTINGS[:4]:
        records = _train_records(out / "runs" / setting)
        by_step = {r["step"]: r.get("loss") for r in records if r.get("step", 0) <= count}
        if by_step:
            losses[setting] = [by_step.get(step) for step in range(1, count + 1)]
    return {"step": list(range(1, count + 1)), **losses} if losses else {}


def loss_gaps(losses: dict) -> dict:
    """Max |eager - compiled| over the first steps, per kernel choice, where both runs have the step."""
    gaps = {}
    for eager, compiled in LOSS_PAIRS:
        if eager in losses and compiled in losses:
            pairs = [
                (a, b) for a, b in zip(losses[eager], losses[compiled]) if a is not None and b is not None
            ]
            gaps[f"{eager} vs {compiled}"] = max((abs(a - b) for a, b in pairs), default=None)
    return gaps


def _cell(value, fmt: str, scale: float = 1.0, suffix: str = "") -> str:
    return "n/a" if value is None else format(scale * value, fmt) + suffix


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    return lines + [f"| {' | '.join(map(str, r))} |" for r in rows]


def runs_table(rows: list[dict]) -> list[str]:
    header = ["setting", "microbatches/step", "steps", "tokens/s", "MFU", "data wait", "peak mem GB",
              "first step s", "compiled", "graph breaks", "recompiles"]  # fmt: skip
    body = [
        [r["setting"], r.get("microbatches", 1), r["steps"], _cell(r["tokens_per_s"], ",.0f"),
         _cell(r["mfu"], ".1f", 100, "%"), _cell(r["data_wait"], ".1f", 100, "%"), _cell(r["peak_mem_gb"], ".1f"),
         _cell(r["first_step_s"], ".1f"), r["compiled"], _cell(r.get("graph_breaks_logged"), ".0f"),
         _cell(r.get("recompiles_logged"), ".0f")]
        for r in rows
    ]  # fmt: skip
    return _table(header, body)


def env_lines(env: dict) -> list[str]:
    if not env:
        return ["(no env.json: the env_check step did not finish)"]
    keys = ("gpu", "capability", "sms", "memory_gb", "peak_table_key", "peak_bf16_tflops", "torch", "triton",
            "cuda", "cudnn", "python", "float32_matmul_precision")  # fmt: skip
    lines = [f"- {k}: {env.get(k)}" for k in keys if k in env]
    header = ["impl.kernels / step", "layer_norm", "gelu", "attention", "self-check"]
    body = []
    for key, found in env.get("kernels", {}).items():
        ran = found.get("ran", {})
        checks = found.get("error") or ", ".join(f"{op} {v}" for op, v in found.get("self_check", {}).items())
        body.append(
            [key, ran.get("layer_norm", "-"), ran.get("gelu", "-"), ran.get("attention", "-"), checks or "-"]
        )
    return lines + ["", *_table(header, body)]


def dynamo_lines(dynamo: dict) -> list[str]:
    header = ["impl.kernels (compiled)", "graphs", "graph breaks", "break reasons"]
    body = [[k, v.get("graphs"), v.get("graph_breaks"), "; ".join(v.get("break_reasons", [])) or "-"]
            for k, v in dynamo.items()]  # fmt: skip
    return _table(header, body) if body else ["(no dynamo.json)"]


def errors_lines(errors: dict) -> list[str]:
    """One row per (op, implementation): relative RMS error of the output and of each input gradient."""
    body = []
    for impl, per_op in errors.items():
        for op, parts in per_op.items():
            cells = [f"{part} {_cell(e.get('rel_rms'), '.2e')} (max {_cell(e.get('max_abs'), '.1e')})"
                     for part, e in parts.items()]  # fmt: skip
            body.append([op, impl, "; ".join(cells)])
    header = ["op", "implementation", "relative RMS error vs fp64 (max abs): forward; gradient of input i"]
    return _table(header, sorted(body)) if body else ["(no errors.json)"]


def bench_lines(out: Path) -> list[str]:
    """Each benchmark's rows: the case, then milliseconds per provider."""
    lines = []
    for path in sorted((out / "bench").glob("*.json")):
        rows = _read_json(path).get("rows", [])
        cases: dict = {}
        for r in rows:
            case = ", ".join(f"{k}={r[k]}" for k in ("op", "mode", "padded", "B", "T", "rows", "width", "dtype")
                             if k in r)  # fmt: skip
            ms = r.get("ms")
            cases.setdefault(case, {})[r.get("provider")] = "n/a" if ms is None else f"{ms:.3f}"
        providers = list(dict.fromkeys(p for case in cases.values() for p in case))
        body = [[case, *[times.get(p, "-") for p in providers]] for case, times in cases.items()]
        lines += [f"**{path.stem}** (ms, lower is better)", "", *_table(["case", *providers], body), ""]
    return lines or ["(no benchmark results)"]


def losses_lines(losses: dict) -> list[str]:
    if not losses:
        return ["(no per-step losses)"]
    settings = [k for k in losses if k != "step"]
    shown = [s for s in (1, 2, 3, 5, 10, 20, 50, 100) if s <= len(losses["step"])]
    body = [[step, *[_cell(losses[k][step - 1], ".4f") for k in settings]] for step in shown]
    gaps = [f"- max |{pair}| over the first {len(losses['step'])} steps: {_cell(g, '.2e')}"
            for pair, g in loss_gaps(losses).items()]  # fmt: skip
    return [*_table(["step", *settings], body), "", *gaps, "", "(every step: summary.json, losses.tsv)"]


def tests_lines(out: Path) -> list[str]:
    lines = []
    for name in ("kernel_tests", "slow_tests"):
        path = out / f"{name}.txt"
        text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        lines.append(f"- {name}: {text[-1] if text else '(no output)'}")
    return lines


def markdown(result: dict, out: Path) -> str:
    steps = [[s.get("step"), s.get("status"), s.get("seconds"), s.get("cap", "")] for s in result["steps"]]
    parts = [
        "# run_gpu.sh summary", "", "## Machine and kernels", "", *env_lines(result["env"]), "",
        "## Training (crammed-bert, bf16, microbatch 128 x 128 tokens)", "", *runs_table(result["runs"]), "",
        "## Graph breaks under torch.compile (torch._dynamo.explain of the pretraining forward)", "",
        *dynamo_lines(result["dynamo"]), "", "## First losses, eager vs compiled, same seed", "",
        *losses_lines(result["losses"]), "", "## bf16 error vs fp64 at BERT shapes", "",
        *errors_lines(result["errors"]), "", "## Benchmarks", "", *bench_lines(out),
        "## Tests", "", *tests_lines(out), "", "## Steps", "", *_table(["step", "status", "seconds", "cap"], steps),
    ]  # fmt: skip
    return "\n".join(str(p) for p in parts) + "\n"


def summarize(out: Path) -> dict:
    """summary.json and summary.md in ``out`` from whatever the steps left there; returns the result."""
    rows = [run_row(out / "runs" / name, out) for name in SETTINGS if (out / "runs" / name).is_dir()]
    steps_file = out / "steps.tsv"
    lines = steps_file.read_text().splitlines()[1:] if steps_file.exists() else []
    steps = [dict(zip(("step", "status", "seconds", "cap"), line.split("\t"))) for line in lines]
    losses = first_losses(out)
    result = {
        "env": _read_json(out / "env.json"), "runs": rows, "losses": losses, "loss_gaps": loss_gaps(losses),
        "dynamo": _read_json(out / "dynamo.json"), "errors": _read_json(out / "errors.json"), "steps": steps,
        "tests": tests_lines(out),
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    if losses:
        settings = [k for k in losses if k != "step"]
        table = ["\t".join(["step", *settings])]
        table += [
            "\t".join(str(losses[k][i]) for k in ["step", *settings]) for i in range(len(losses["step"]))
        ]
        (out / "losses.tsv").write_text("\n".join(table) + "\n")
    text = markdown(result, out)
    (out / "summary.md").write_text(text)
    print(text)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    corpus = sub.add_parser("corpus", help="write a synthetic corpus")
    corpus.add_argument("path", type=Path)
    corpus.add_argument("megabytes", type=float)
    summary = sub.add_parser("summary", help="summary.md and summary.json of a run_gpu.sh results folder")
    summary.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "corpus":
        write_corpus(args.path, args.megabytes)
    else:
        summarize(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
