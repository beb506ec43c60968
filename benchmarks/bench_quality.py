"""Recipes side by side at equal budget: held-out MLM loss and GLUE-lite for each named variant.

    python benchmarks/bench_quality.py --name order budget=10m arch=small data=local \\
        data.files='[corpus/wikipedia_en/*.txt.gz]' data.validation_files='[corpus/wikipedia_en/valid.txt.gz]' \\
        variants.base='' variants.sorted='data.ordering=sentence-length' --glue-dir glue_data --seeds 2
    python benchmarks/bench_quality.py --variants my_variants.yaml --glue-dir glue_data ...
    python benchmarks/bench_quality.py --smoke --glue-dir glue_data data.files='[tiny/train.txt]' ...

Every argument of the form ``KEY=VALUE`` that does not start with ``variants.`` is a Hydra override of
``python -m cramming`` shared by all variants (budget, arch, data, threads...). ``variants.NAME='...'``
names one variant by its extra overrides (space-separated, shell-quoted; ``''`` = the shared settings
alone). A variant's overrides that start with ``glue.`` go to the GLUE fine-tuning instead (e.g.
``variants.wd='glue.weight_decay=0.01'``); variants with the same pretraining overrides share their
pretrained runs, so a fine-tuning variant costs no pretraining. A YAML file given with ``--variants`` holds ``{NAME: [override, ...]}`` (or ``NAME: "a=1 b=2"``).

Each variant is trained with the product's own code paths (``python -m cramming``, then
``python -m cramming.glue``) in a subprocess, once per pretraining seed (``--seeds``), with the same
budget, threads and held-out files. It is scored by

- the held-out MLM loss on ``data.validation_files`` with the loop's fixed masking seed (comparable
  across variants only when they share a tokenizer: the report says whether they do), and
- GLUE-lite: SST-2, CoLA, STS-B, MRPC, RTE from local TSVs, at most ``--glue-examples`` training examples
  each, ``--glue-seeds`` fine-tuning seeds (the median is taken per pretraining run).

Every figure is reported as the mean over pretraining seeds with its spread (min..max). Every variant's
overrides are checked (composed and validated) before any training starts; a variant that fails later
is reported as failed and the others still run.

``--reuse`` keeps a finished run made by exactly the same pretraining command (e.g. to add fine-tuning
variants or GLUE-lite later), and GLUE-lite results whose recorded settings match; any other earlier run
folder of the same name is replaced.

Writes ``<out>/quality_<name>.json``, ``.md`` and ``.png`` (loss against wall-clock time for every run on
one axis, GLUE-lite bars with the seed spread). ``--smoke`` is a seconds-long profile for tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
GLUE_LITE = ("sst2", "cola", "stsb", "mrpc", "rte")
SMOKE_SHARED = [
    "arch=tiny",
    "budget=3steps",
    "data=local",
    "data.vocab_size=1024",
    "train.microbatch_size=4",
    "train.batch_size_start=4",
    "train.batch_size=4",
    "train.validation_batches=2",
    "impl.threads=1",
]
SMOKE_GLUE = {"examples": 24, "eval_examples": 48, "seeds": 1, "epochs": 1, "tasks": ("sst2", "rte")}


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str], dict[str, list[str]]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", default="quality", help="result files are quality_<name>.{json,md,png}")
    p.add_argument("--variants", type=Path, help="YAML file of {name: [override, ...]}")
    p.add_argument("--seeds", type=int, default=1, help="pretraining seeds per variant (seed=0, 1, ...)")
    p.add_argument("--glue-dir", type=Path, help="local glue_data folder (CoLA/train.tsv, ...)")
    p.add_argument("--no-glue", action="store_true", help="held-out MLM loss only")
    p.add_argument("--glue-examples", type=int, default=2000, help="max training examples per task")
    p.add_argument("--glue-seeds", type=int, default=3, help="fine-tuning seeds per task (median)")
    p.add_argument("--glue-eval-examples", type=int, default=None, help="max dev examples per task")
    p.add_argument("--glue-epochs", type=int, default=None, help="fine-tuning epochs (default: GLUE's own)")
    p.add_argument("--glue-tasks", default=",".join(GLUE_LITE), help="comma-separated GLUE task names")
    p.add_argument("--runs-dir", type=Path, default=Path("outputs/quality"), help="where the runs go")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON/MD/PNG results")
    p.add_argument("--smoke", action="store_true", help="tiny model, 3 steps, 2 small GLUE tasks")
    p.add_argument("--reuse", action="store_true", help="keep finished runs made by the same command")
    p.add_argument("--timeout", type=float, default=None, help="seconds before a run counts as failed")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE shared overrides and variants.NAME='...'")
    args = p.parse_args(argv)
    shared, variants = split_overrides(args.overrides)
    if args.variants:
        variants.update(read_variant_file(args.variants))
    if not variants:
        p.error("no variants: pass variants.NAME='overrides' or --variants FILE.yaml")
    if args.seeds < 1 or args.glue_seeds < 1:
        p.error(f"--seeds and --glue-seeds must be at least 1 (got {args.seeds}, {args.glue_seeds})")
    if not args.no_glue and args.glue_dir is None:
        p.error("--glue-dir is required for GLUE-lite (or pass --no-glue)")
    if args.smoke:
        shared = SMOKE_SHARED + shared
    return args, shared, variants


def split_overrides(items: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Shared overrides and {variant: overrides} from the command line."""
    shared, variants = [], {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"bench_quality: error: {item!r} is not KEY=VALUE")
        if key.startswith("variants."):
            name = key.removeprefix("variants.")
            check_variant_name(name)
            variants[name] = shlex.split(value)
        else:
            shared.append(item)
    return shared, variants


def check_variant_name(name: str) -> None:
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise SystemExit(f"bench_quality: error: variant name {name!r} must be letters, digits, - or _")


def read_variant_file(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        raise SystemExit(f"bench_quality: error: variants file {path} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise SystemExit(f"bench_quality: error: {path} must map variant names to override lists")
    variants = {}
    for name, value in data.items():
        check_variant_name(str(name))
        if value is None:
            value = []
        elif isinstance(value, str):
            value = shlex.split(value)
        elif not isinstance(value, list):
            raise SystemExit(f"bench_quality: error: variant {name!r} in {path}: expected a list or a string")
        variants[str(name)] = [str(v) for v in value]
    return variants


def check_variants(shared: list[str], variants: dict[str, list[str]]) -> None:
    """Compose and validate every variant's config before anything trains: a typo fails in seconds."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from cramming.conf import CONF_DIR
    from cramming.config import validate_run

    problems = []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name, extra in variants.items():
            pretrain_overrides, glue_overrides = split_variant(extra)
            try:
                cfg = compose("pretrain", overrides=[*shared, *pretrain_overrides, "name=check"])
                compose("glue", overrides=[*glue_overrides, "model=check"])
                validate_run(OmegaConf.to_container(cfg, resolve=True))
            except Exception as err:  # Hydra's and ours: each names the bad key or value
                problems.append(f"variant {name!r} ({' '.join(extra) or 'shared settings'}): {err}")
    if problems:
        raise SystemExit(
            "bench_quality: error: bad variants, nothing was trained:\n  " + "\n  ".join(problems)
        )


def split_variant(extra: list[str]) -> tuple[list[str], list[str]]:
    """(pretraining overrides, GLUE overrides without their ``glue.`` prefix)."""
    glue = [o.removeprefix("glue.") for o in extra if o.startswith("glue.")]
    return [o for o in extra if not o.startswith("glue.")], glue


def run_logged(cmd: list[str], log_path: Path, timeout: float | None, label: str) -> tuple[bool, str]:
    """Run a child command, echoing its progress lines with a label; (ok, last error line)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    last = ""
    with open(log_path, "w", encoding="utf-8") as log_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        started = time.monotonic()
        for line in proc.stdout:
            log_file.write(line)
            line = line.rstrip()
            if line and not line.startswith("Set the environment variable HYDRA_FULL_ERROR"):
                last = line
            if " step " in line or "error" in line.lower() or "budget spent" in line:
                print(f"  [{label}] {line}", flush=True)
            if timeout and time.monotonic() - started > timeout:
                proc.kill()
                return False, f"timed out after {timeout:.0f} s"
        code = proc.wait()
    return code == 0, "" if code == 0 else last


def file_hash(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def pretrain_run(args, shared: list[str], name: str, extra: list[str], seed: int) -> dict:
    run_name = f"{args.name}_{name}_s{seed}"
    run_dir = args.runs_dir / run_name
    cmd = [sys.executable, "-m", "cramming", *shared, *extra, f"seed={seed}", f"name={run_name}",
           f"base_dir={args.runs_dir}"]  # fmt: skip
    stamp = run_dir / "bench_quality.json"  # the exact pretraining command, for --reuse
    if args.reuse and finished_with(run_dir, stamp, cmd[1:]):
        print(f"== {name} seed {seed}: reusing the finished run {run_dir}", flush=True)
        ok, error = True, ""
    else:
        print(f"== {name} seed {seed}: pretraining ({' '.join(extra) or 'shared settings'})", flush=True)
        if args.reuse and run_dir.exists():  # an unfinished or different earlier run: start afresh
            shutil.rmtree(run_dir)
        ok, error = run_logged(
            cmd, run_dir.parent / f"{run_name}.pretrain.log", args.timeout, f"{name}/{seed}"
        )
        if ok and run_dir.is_dir():
            stamp.write_text(json.dumps({"command": cmd[1:]}) + "\n")
    record = {"variant": name, "seed": seed, "run_dir": str(run_dir), "overrides": extra, "ok": ok}
    if not ok:
        record["error"] = error or "pretraining failed (see its log)"
        return record
    if not (run_dir / "summary.json").is_file():  # e.g. stopped early on purpose: no finished model
        record["ok"], record["error"] = False, "the run ended without summary.json (not finished)"
        return record
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("valid_mlm_loss", "final_mlm_loss", "steps", "tokens_seen", "tokens_per_s", "elapsed_s"):
        record[key] = summary.get(key)
    record["tokenizer"] = file_hash(run_dir / "model" / "tokenizer.json")
    record["curve"] = loss_curve(run_dir / "metrics.jsonl")
    return record


def finished_with(run_dir: Path, stamp: Path, command: list[str]) -> bool:
    """A finished earlier run made by exactly this pretraining command (--reuse)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        return bool(summary.get("finished")) and json.loads(stamp.read_text())["command"] == command
    except (OSError, ValueError, KeyError):
        return False


def loss_curve(path: Path) -> dict[str, list]:
    """Training and held-out loss against elapsed budget seconds, from the run's metrics.jsonl."""
    curve = {"train": [], "valid": []}
    if not path.is_file():
        return curve
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r.get("kind") in curve and r.get("loss") is not None and r.get("elapsed_s") is not None:
            curve[r["kind"]].append([float(r["elapsed_s"]), float(r["loss"])])
    return curve


def glue_lite(args, record: dict, glue: dict, overrides: list[str]) -> None:
    """Fine-tune the run's export on the GLUE-lite tasks; adds per-task headline numbers and their mean."""
    run_dir = Path(record["run_dir"])
    out_dir = run_dir / f"glue_lite_{record['variant']}"
    tasks = "[" + ",".join(glue["tasks"]) + "]"
    cmd = [sys.executable, "-m", "cramming.glue", f"model={run_dir / 'model'}", f"glue_dir={args.glue_dir}",
           f"tasks={tasks}", f"max_train_examples={glue['examples']}", f"seeds={glue['seeds']}",
           "submission=false", f"out_dir={out_dir}"]  # fmt: skip
    if glue["epochs"]:
        cmd.append(f"epochs={glue['epochs']}")
    if glue["eval_examples"]:
        cmd.append(f"max_eval_examples={glue['eval_examples']}")
    cmd += [o for o in args.shared if o.startswith("impl.")]  # the same device, threads and kernels
    cmd += overrides
    label = f"{record['variant']}/{record['seed']} glue"
    if args.reuse and glue_done_with(out_dir / "results.json", cmd[3:]):
        print(f"== {label}: reusing {out_dir / 'results.json'}", flush=True)
        ok, error = True, ""
    else:
        ok, error = run_logged(cmd, out_dir.with_suffix(".log"), args.timeout, label)
    if not ok:
        record["ok"], record["error"] = False, f"GLUE-lite failed: {error}"
        return
    results = json.loads((out_dir / "results.json").read_text())
    record["glue"] = {col: v for t in results["tasks"].values() for col, v in t["headline"].items()}
    record["glue_average"] = results["average"]["value"]


def glue_done_with(path: Path, overrides: list[str]) -> bool:
    """An earlier GLUE-lite results.json whose recorded settings match every ``key=value`` we would pass."""
    try:
        settings = json.loads(path.read_text())["settings"]
    except (OSError, ValueError, KeyError):
        return False
    for item in overrides:
        key, _, value = item.partition("=")
        node = settings
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        wanted = yaml.safe_load(value)
        if key in ("model", "glue_dir", "out_dir"):
            node, wanted = str(Path(str(node)).resolve()), str(Path(value).resolve())
        if node != wanted and str(node) != str(wanted):
            return False
    return True


def spread(values: list[float]) -> dict | None:
    """Mean with min..max (and the sample std when there are two or more values)."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    out = {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}
    out["std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def summarize(records: list[dict], variants: dict[str, list[str]]) -> dict[str, dict]:
    table = {}
    for name, extra in variants.items():
        runs = [r for r in records if r["variant"] == name]
        good = [r for r in runs if r["ok"]]
        row = {"overrides": extra, "runs": len(runs), "ok": len(good)}
        row["failed"] = [f"seed {r['seed']}: {r['error']}" for r in runs if not r["ok"]]
        for key in ("valid_mlm_loss", "final_mlm_loss", "tokens_per_s", "steps", "glue_average"):
            row[key] = spread([r.get(key) for r in good])
        columns = sorted({c for r in good for c in r.get("glue", {})})
        row["glue"] = {c: spread([r["glue"].get(c) for r in good if "glue" in r]) for c in columns}
        table[name] = row
    return table


def fmt(s: dict | None, digits: int = 3) -> str:
    if s is None:
        return "n/a"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ({s['min']:.{digits}f}..{s['max']:.{digits}f})"


def to_markdown(report: dict) -> str:
    table, columns = report["variants"], report["glue_columns"]
    lines = [f"# Quality benchmark `{report['name']}`", "",
             f"Shared overrides: `{' '.join(report['shared']) or '(none)'}`; {report['seeds']} pretraining "
             f"seed(s) per variant; figures are the mean over seeds with (min..max).", "",
             report["comparability"], ""]  # fmt: skip
    head = ["variant", "overrides", "held-out MLM loss", "train loss", "tok/s", "GLUE-lite avg", *columns]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in table.items():
        if not row["ok"]:
            cells = [name, f"`{' '.join(row['overrides'])}`", "FAILED: " + "; ".join(row["failed"])]
            lines.append("| " + " | ".join(cells + [""] * (len(head) - 3)) + " |")
            continue
        cells = [name, f"`{' '.join(row['overrides']) or '-'}`", fmt(row["valid_mlm_loss"]),
                 fmt(row["final_mlm_loss"]), fmt(row["tokens_per_s"], 0), fmt(row["glue_average"], 2),
                 *[fmt(row["glue"].get(c), 1) for c in columns]]  # fmt: skip
        if row["failed"]:
            cells[1] += " (" + "; ".join(row["failed"]) + ")"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparability(records: list[dict]) -> str:
    hashes = {r.get("tokenizer") for r in records if r["ok"]}
    if len(hashes) <= 1:
        return "All runs share one tokenizer: held-out MLM losses are directly comparable."
    return (f"The runs use {len(hashes)} different tokenizers: held-out MLM losses are NOT directly "
            "comparable across them (compare GLUE-lite instead).")  # fmt: skip


def plot(report: dict, records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_glue) = plt.subplots(1, 2, figsize=(13, 5), width_ratios=[3, 2])
    colors = {name: f"C{i}" for i, name in enumerate(report["variants"])}
    for r in records:
        if not r["ok"]:
            continue
        color, label = colors[r["variant"]], f"{r['variant']} s{r['seed']}"
        train = r["curve"]["train"]
        if train:
            ax_loss.plot(
                [t / 60 for t, _ in train], [v for _, v in train], color=color, alpha=0.8, label=label
            )
        valid = r["curve"]["valid"]
        if valid:
            ax_loss.plot([t / 60 for t, _ in valid], [v for _, v in valid], "o", color=color)
    ax_loss.set_xlabel("budget used (minutes of training)")
    ax_loss.set_ylabel("MLM loss (line: training, dots: held-out)")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=7)
    names = [n for n, row in report["variants"].items() if row["glue_average"]]
    means = [report["variants"][n]["glue_average"]["mean"] for n in names]
    low = [m - report["variants"][n]["glue_average"]["min"] for n, m in zip(names, means)]
    high = [report["variants"][n]["glue_average"]["max"] - m for n, m in zip(names, means)]
    ax_glue.bar(names, means, yerr=[low, high], capsize=4, color=[colors[n] for n in names])
    ax_glue.set_ylabel("GLUE-lite average (min..max over seeds)")
    ax_glue.grid(alpha=0.3, axis="y")
    fig.suptitle(f"quality benchmark {report['name']}: {' '.join(report['shared'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args, shared, variants = parse_args(argv)
    args.shared = shared
    check_variants(shared, variants)
    glue = {"examples": args.glue_examples, "eval_examples": args.glue_eval_examples,
            "seeds": args.glue_seeds, "epochs": args.glue_epochs,
            "tasks": tuple(t.strip() for t in args.glue_tasks.split(",") if t.strip())}  # fmt: skip
    if args.smoke:
        glue = dict(SMOKE_GLUE)
    records, pretrained = [], {}
    for seed in range(args.seeds):  # seed-major: an early stop still leaves every variant measured
        for name, extra in variants.items():
            pretrain_overrides, glue_overrides = split_variant(extra)
            key = (tuple(pretrain_overrides), seed)
            if key not in pretrained:
                pretrained[key] = pretrain_run(args, shared, name, pretrain_overrides, seed)
            record = {**pretrained[key], "variant": name, "overrides": extra}
            if record["ok"] and not args.no_glue:
                glue_lite(args, record, glue, glue_overrides)
            records.append(record)
    table = summarize(records, variants)
    columns = sorted({c for row in table.values() for c in row["glue"]})
    report = {"name": args.name, "shared": shared, "seeds": args.seeds, "glue": None if args.no_glue else glue,
              "variants": table, "glue_columns": columns, "comparability": comparability(records),
              "runs": records}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"quality_{args.name}"
    Path(f"{stem}.json").write_text(json.dumps(report, indent=2, default=list) + "\n")
    Path(f"{stem}.md").write_text(to_markdown(report))
    plot(report, records, Path(f"{stem}.png"))
    print(to_markdown(report))
    print(f"wrote {stem}.json, .md and .png")
    return report


if __name__ == "__main__":
    main()
