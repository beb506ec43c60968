"""Helpers of benchmarks/run_gpu.sh (standard library only, so they run before anything is installed).

    python benchmarks/run_gpu_report.py corpus PATH MB   # a synthetic corpus: random words, fixed seed
    python benchmarks/run_gpu_report.py summary DIR      # DIR/summary.{md,json} from DIR/runs/*, printed

The training table has one row per setting (eager/compile x torch/Triton ops): steady-state tokens/s
and MFU (the median over log windows after the first, which holds compilation and warm-up), MFU
against the device's dense bf16 peak (cramming.perf's table: 989 TFLOP/s on an H200), the data-wait
fraction (when the train log has ``data_wait``), peak memory, and the first step's time (compile).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

SETTINGS = ("eager_torch", "eager_triton", "compile_torch", "compile_triton")


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


def run_row(run_dir: Path) -> dict:
    """One setting's figures from its metrics.jsonl and summary.json (whatever exists of them)."""
    row: dict = {"setting": run_dir.name}
    metrics = run_dir / "metrics.jsonl"
    records = []
    if metrics.exists():
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind", "train") == "train" and "tokens_per_s" in r]
    steady = [r for r in train if r.get("step", 0) > 1] or train
    row["steps"] = max((r.get("step", 0) for r in train), default=0)
    row["tokens_per_s"] = _median([r.get("tokens_per_s") for r in steady])
    row["mfu"] = _median([r.get("mfu") for r in steady])
    row["data_wait"] = _median([r.get("data_wait") for r in steady])  # a fraction; absent before prefetch
    row["peak_mem_gb"] = max((r.get("mem_gb", 0.0) for r in train), default=None)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    row["first_step_s"] = summary.get("compile_s")
    row["compiled"] = summary.get("compiled")
    row["finished"] = bool(summary.get("finished"))
    row["hardware"] = summary.get("hardware")
    return row


def _cell(value, fmt: str, scale: float = 1.0, suffix: str = "") -> str:
    return "n/a" if value is None else format(scale * value, fmt) + suffix


def markdown(rows: list[dict], steps: list[list[str]]) -> str:
    lines = [
        "| setting | steps | tokens/s | MFU (dense bf16 peak) | data wait | peak mem GB | first step s | compiled |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cells = [
            r["setting"], str(r["steps"]), _cell(r["tokens_per_s"], ",.0f"), _cell(r["mfu"], ".1f", 100, "%"),
            _cell(r["data_wait"], ".1f", 100, "%"), _cell(r["peak_mem_gb"], ".1f"),
            _cell(r["first_step_s"], ".1f"), str(r["compiled"]),
        ]  # fmt: skip
        lines.append(f"| {' | '.join(cells)} |")
    lines += ["", "| step | status | seconds |", "|---|---|---:|"]
    lines += [f"| {' | '.join(s)} |" for s in steps]
    return "\n".join(lines) + "\n"


def summarize(out: Path) -> dict:
    rows = [run_row(out / "runs" / name) for name in SETTINGS if (out / "runs" / name).is_dir()]
    steps_file = out / "steps.tsv"
    steps = (
        [line.split("\t") for line in steps_file.read_text().splitlines()[1:]] if steps_file.exists() else []
    )
    result = {"runs": rows, "steps": [dict(zip(("step", "status", "seconds"), s)) for s in steps]}
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(rows, steps)
    (out / "summary.md").write_text(table)
    print(table)
    tests = out / "tests.txt"
    if tests.exists():
        print("kernel tests:", (tests.read_text().strip().splitlines() or ["(no output)"])[-1])
    for bench in sorted(out.glob("bench_*.txt")):
        tail = bench.read_text().strip().splitlines()[-3:]
        print(f"{bench.stem}:", *tail, sep="\n  ")
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
