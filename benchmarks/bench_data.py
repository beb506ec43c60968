"""Data preparation throughput and peak memory: our pipeline vs a stand-in for the reference's approach.

    python benchmarks/bench_data.py [--twice] [--baseline-mb MB] [--corpus DIR]

Prepares the real corpus (wikipedia_en/train-0*.txt.gz + books_pd/train.txt.gz, ~139 MB of text) with
the 32768 WordPiece vocab into a temporary cache, and reports MB/s, tokens/s and peak RSS. Every
measurement runs in its own subprocess, since ru_maxrss is a per-process high-water mark:

- ``ours_full``: ``prepare_corpus`` from scratch (tokenizer training on the whole sample, then packing);
- ``ours``: packing only, reusing that tokenizer (``tokenizer.path``) in a fresh cache;
- ``ours_twice`` (``--twice``): the corpus listed twice (the second copy is removed as duplicates);
  its peak RSS (main process + largest encoding worker) must be within ±20% of ``ours``;
- ``reference``: the crammedBERT reference's preprocessing, re-created in-process with the same tokenizer:
  ``datasets.Dataset.from_generator`` over the same documents, ``.map(tokenizer(text,
  return_attention_mask=False, return_token_type_ids=False), batched=True, batch_size=1024)`` then
  ``.map(group_texts)`` into 128-token blocks. It skips the reference's shuffle and flatten passes, so
  it is a lower bound on the reference's time. ``--baseline-mb`` limits it to the first MB of text.

Our pipeline encodes in one worker process per core (``peak_rss_all_processes_mb`` bounds the total:
main + workers x the largest worker). CPU seconds (process + children) are recorded too: MB per CPU
second compares the two approaches independently of other jobs on the machine.
Results go to ``benchmarks/results/data_prep_<host>.json``. Cores are shared on CI/dev machines: the
load average is recorded; compare the ratio, which comes from one run under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = Path(os.environ.get("CRAMMING_SHARED_DATA", REPO.parent / "shared" / "data")) / "corpus"


def corpus_files(root: Path) -> list[str]:
    files = sorted(root.glob("wikipedia_en/train-0*.txt.gz")) + [root / "books_pd" / "train.txt.gz"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing or len(files) < 2:
        raise SystemExit(f"corpus files not found under {root}: {missing or 'wikipedia_en/train-0*.txt.gz'}")
    return [str(f) for f in files]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (all threads): robust to other
    jobs sharing the cores."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


# ----------------------------------------------------------------------------- children


def child_ours(args: argparse.Namespace) -> dict:
    from cramming.data import prepare_corpus

    tokenizer = {"sample_mb": 256, "path": args.tokenizer or None}
    cfg = {
        "files": args.files,
        "vocab_size": args.vocab,
        "seq_len": 128,
        "cache_dir": args.cache,
        "tokenizer": tokenizer,
    }
    start, cpu_start = time.perf_counter(), cpu_seconds()
    corpus = prepare_corpus(cfg, log=lambda msg: print(msg, file=sys.stderr))
    total, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    s = corpus.stats
    train = s["splits"]["train"]
    return {
        "total_s": total,
        "pack_s": train["seconds"],
        "tokenizer_and_other_s": total - train["seconds"],
        "text_mb": train["chars"] / 1e6,
        "documents_read": s["documents_read"],
        "documents": s["documents"],
        "tokens": s["tokens"],
        "sequences": s["sequences"],
        "filters": s["filters"]["train"],
        "mb_per_s": train["chars"] / 1e6 / train["seconds"],
        "tokens_per_s": train["tokens"] / train["seconds"],
        "peak_rss_mb": peak_rss_mb(),
        "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "workers": len(os.sched_getaffinity(0)),
        "cpu_s": cpu,
        "mb_per_cpu_s": train["chars"] / 1e6 / cpu,
        "tokenizer_file": str(corpus.cache_dir / "tokenizer.json"),
    }


def child_reference(args: argparse.Namespace) -> dict:
    import datasets
    import pyarrow.compute as pc
    from transformers import PreTrainedTokenizerFast

    from cramming.data.sources import iter_text_file

    datasets.disable_progress_bars()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=args.tokenizer)
    tokenizer.model_max_length = int(1e30)
    budget = args.baseline_mb * 1e6 if args.baseline_mb else float("inf")
    block, read = 128, {"chars": 0}

    def documents():
        for path in args.files:
            for doc in iter_text_file(Path(path)):
                if read["chars"] >= budget:
                    return
                read["chars"] += len(doc)
                yield {"text": doc}

    def tokenize(batch):
        return tokenizer(batch["text"], return_attention_mask=False, return_token_type_ids=False)

    def group_texts(examples):
        joined = {k: list(chain(*examples[k])) for k in examples.keys()}
        total = len(joined["input_ids"])
        total = (total // block) * block if total >= block else total
        return {k: [t[i : i + block] for i in range(0, total, block)] for k, t in joined.items()}

    start, cpu_start = time.perf_counter(), cpu_seconds()
    raw = datasets.Dataset.from_generator(documents, cache_dir=args.cache)
    loaded = time.perf_counter()
    tokenized = raw.map(tokenize, remove_columns=["text"], batched=True, batch_size=1024)
    grouped = tokenized.map(group_texts, batched=True, batch_size=1024)
    done, cpu = time.perf_counter(), cpu_seconds() - cpu_start
    tokens = pc.sum(pc.list_value_length(tokenized.data.column("input_ids"))).as_py()
    mb = read["chars"] / 1e6
    return {
        "load_s": loaded - start,
        "map_and_group_s": done - loaded,
        "total_s": done - start,
        "text_mb": mb,
        "tokens": tokens,
        "sequences": len(grouped),
        "mb_per_s": mb / (done - start),
        "tokens_per_s": tokens / (done - start),
        "map_group_mb_per_s": mb / (done - loaded),
        "peak_rss_mb": peak_rss_mb(),
        "cpu_s": cpu,
        "mb_per_cpu_s": mb / cpu,
    }


# ----------------------------------------------------------------------------- driver


def run_child(kind: str, files: list[str], cache: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--cache", str(cache), "--files", *files, *extra]
    print(f"[bench_data] running {kind} ...", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"[bench_data] {kind}: {json.dumps(result)} ({time.perf_counter() - start:.0f}s)", flush=True)
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--twice", action="store_true", help="also prepare the corpus listed twice")
    parser.add_argument(
        "--baseline-mb", type=float, default=0.0, help="reference stand-in on this many MB (0 = all)"
    )
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--files", nargs="*", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.child:
        result = child_ours(args) if args.child == "ours" else child_reference(args)
        print(json.dumps(result))
        return

    files = corpus_files(args.corpus)
    host = socket.gethostname()
    report = {
        "host": host,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
        "files": files,
        "vocab_size": args.vocab,
        "seq_len": 128,
    }
    measure_all(args, files, report)
    report["load_avg_end"] = os.getloadavg()
    out = args.out or REPO / "benchmarks" / "results" / f"data_prep_{host}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = summary(report)  # before writing: it adds peak_rss_all_processes_mb to the report
    out.write_text(json.dumps(report, indent=1))
    print(f"[bench_data] wrote {out}")
    print(text)


def measure_all(args: argparse.Namespace, files: list[str], report: dict) -> None:
    """Every measurement in its own subprocess (see the module docstring), added to ``report``."""
    vocab = ["--vocab", str(args.vocab)]
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        tmp = Path(tmp)
        report["ours_full"] = run_child("ours", files, tmp / "full", vocab)
        tok = ["--tokenizer", report["ours_full"]["tokenizer_file"]]
        report["ours"] = run_child("ours", files, tmp / "once", vocab + tok)
        if args.twice:
            report["ours_twice"] = run_child("ours", files + files, tmp / "twice", vocab + tok)
            once, twice = report["ours"], report["ours_twice"]
            ratio = (twice["peak_rss_mb"] + twice["worker_peak_rss_mb"]) / (
                once["peak_rss_mb"] + once["worker_peak_rss_mb"]
            )
            report["twice_peak_rss_ratio"] = ratio
            report["twice_peak_rss_within_20pct"] = abs(ratio - 1) <= 0.2
        if not args.skip_reference:
            ref_args = vocab + tok + ["--baseline-mb", str(args.baseline_mb)]
            report["reference"] = run_child("reference", files, tmp / "ref", ref_args)
            report["speedup_vs_reference"] = report["ours"]["mb_per_s"] / report["reference"]["mb_per_s"]
            report["speedup_vs_reference_map_group_only"] = (
                report["ours"]["mb_per_s"] / report["reference"]["map_group_mb_per_s"]
            )
            report["cpu_efficiency_vs_reference"] = (
                report["ours"]["mb_per_cpu_s"] / report["reference"]["mb_per_cpu_s"]
            )


def summary(r: dict) -> str:
    lines = [f"load average at start {r['load_avg_start']}, end {r['load_avg_end']} on {r['cpus']} CPUs"]
    for name in ("ours_full", "ours", "ours_twice", "reference"):
        if name in r:
            x = r[name]
            if "worker_peak_rss_mb" in x:
                x["peak_rss_all_processes_mb"] = x["peak_rss_mb"] + x["workers"] * x["worker_peak_rss_mb"]
            lines.append(
                f"{name:10s} {x['text_mb']:7.1f} MB in {x['total_s']:7.1f}s: {x['mb_per_s']:6.2f} MB/s, "
                f"{x['tokens_per_s']:11,.0f} tok/s, peak RSS {x['peak_rss_mb']:6.0f} MB, "
                f"{x['mb_per_cpu_s']:.2f} MB/CPU-s"
                + (f", all processes ≤ {x['peak_rss_all_processes_mb']:.0f} MB" if "workers" in x else "")
            )
    if "speedup_vs_reference" in r:
        lines.append(
            f"speed-up vs reference stand-in: {r['speedup_vs_reference']:.2f}x "
            f"({r['speedup_vs_reference_map_group_only']:.2f}x vs its map+group alone); "
            f"MB per CPU-second {r['cpu_efficiency_vs_reference']:.2f}x"
        )
    if "twice_peak_rss_ratio" in r:
        lines.append(f"peak RSS twice/once: {r['twice_peak_rss_ratio']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
