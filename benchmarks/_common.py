"""Shared benchmark helpers: timing, device facts, result files and plots.

Every benchmark script runs in two modes:

- GPU mode (a CUDA device is present and ``--smoke`` is not given): real sizes,
  timed with ``triton.testing.do_bench`` (median and 20%/80% quantiles).
- smoke mode (no GPU, or ``--smoke``): tiny sizes, Triton kernels through the
  interpreter (``TRITON_INTERPRET=1``), wall-clock timing. It proves the script runs
  end to end; its timings are NOT comparable to anything.

Importing this module has no side effects. Scripts call ``setup(args)`` first thing in
``main()``: in smoke mode it sets ``TRITON_INTERPRET=1``, which must happen before the
kernels are imported (Triton reads it when ``@triton.jit`` decorates), so scripts import
``cramming.kernels`` inside functions, after ``setup``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

DEFAULT_OUT = Path(__file__).resolve().parent / "results"

# Peak HBM bandwidth (GB/s) by device-name substring; first match wins, so the form factors come first
# (H100 NVL 3.9 TB/s, PCIe 2.0 TB/s). The dense bf16 peaks are cramming.perf's table (the run's MFU).
_BANDWIDTH_GBS = {
    "H100 NVL": 3900.0,
    "H100 PCIe": 2000.0,
    "H200 NVL": 4800.0,
    "H200": 4800.0,
    "H100": 3350.0,
    "A100": 2039.0,
    "L40S": 864.0,
    "A10G": 600.0,
    "RTX 4090": 1008.0,
}


def base_parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark accepts: ``--out DIR`` and ``--smoke``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for CSV/JSON/PNG results")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, interpreter, timings not comparable"
    )
    parser.add_argument(
        "--bert-only",
        action="store_true",
        help="only the BERT shapes (128 tokens, width 768/3072): no sweeps",
    )
    return parser


def is_smoke(args: argparse.Namespace | None = None) -> bool:
    """Smoke mode: asked for with ``--smoke``, or forced because there is no CUDA device."""
    asked = bool(getattr(args, "smoke", False))
    return asked or not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def setup(args: argparse.Namespace | None = None) -> bool:
    """Decide the mode, print it, and prepare the environment; returns True in smoke mode."""
    smoke = is_smoke(args)
    if smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    _raise_compile_cache_limit()
    smoke_banner(smoke)
    return smoke


def _raise_compile_cache_limit(limit: int = 256) -> None:
    """Benchmarks compile one graph per shape; the default limit (8) would silently fall back to eager."""
    import torch._dynamo

    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, limit)


def bench_device(smoke: bool) -> torch.device:
    """The runtime's device (CPU in smoke mode, else the GPU), built as every entry point builds it. The
    benchmarks call the kernels directly, so the dispatch is left to PyTorch and nothing is self-checked."""
    from cramming.runtime import make_runtime

    return make_runtime({"device": "cpu" if smoke else "cuda", "kernels": "torch", "compile": False}).device


def device_info() -> dict:
    """Name of the device and its peak bandwidth / FLOP rate where known (else None)."""
    if not torch.cuda.is_available():
        return {"name": "cpu", "tag": "cpu", "bandwidth_gbs": None, "peak_tflops": None}
    from cramming.perf import gpu_table_peak

    name = torch.cuda.get_device_name()
    bandwidth = next((v for k, v in _BANDWIDTH_GBS.items() if k in name), None)
    tflops = (gpu_table_peak(name) or (None, None))[1]
    tag = next((k for k in _BANDWIDTH_GBS if k in name), name).lower().replace(" ", "_")
    return {"name": name, "tag": tag, "bandwidth_gbs": bandwidth, "peak_tflops": tflops}


def time_fn(fn: Callable[[], object], smoke: bool | None = None, rep_ms: int = 100) -> dict:
    """Time ``fn`` and return ``{"ms", "ms_p20", "ms_p80"}`` (median and 20%/80% quantiles)."""
    smoke = is_smoke() if smoke is None else smoke
    if not smoke:
        import triton.testing

        ms, p20, p80 = triton.testing.do_bench(fn, warmup=25, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return {"ms": ms, "ms_p20": p20, "ms_p80": p80}
    fn()  # warm-up (interpreter set-up, lazy imports)
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return {"ms": statistics.median(samples), "ms_p20": samples[0], "ms_p80": samples[-1]}


def gbps(num_bytes: int, ms: float) -> float:
    return num_bytes / (ms * 1e-3) / 1e9


def pct_of_peak(value: float, peak: float | None) -> float | None:
    return None if peak is None else 100.0 * value / peak


def time_bandwidth(step: Callable[[], object], num_bytes: int, smoke: bool, info: dict) -> dict:
    """Time ``step`` (see ``time_fn``) and add the bandwidth it reaches moving ``num_bytes``:
    ``{"ms", "ms_p20", "ms_p80", "gbps", "pct_peak_bw"}`` (the last None where the peak is unknown)."""
    timing = time_fn(step, smoke=smoke)
    gbs = gbps(num_bytes, timing["ms"])
    return {**timing, "gbps": gbs, "pct_peak_bw": pct_of_peak(gbs, info["bandwidth_gbs"])}


def add_speedups(
    rows: Sequence[dict],
    keys: Sequence[str],
    ours: str = "triton",
    baselines: Sequence[str] = ("eager", "compile"),
) -> None:
    """Add ``speedup_vs_<baseline>`` (baseline ms / our ms; > 1 is faster) to our rows, matching
    rows that agree on every field in ``keys``."""
    times = {(tuple(row[k] for k in keys), row["provider"]): row["ms"] for row in rows}
    for row in rows:
        if row["provider"] != ours:
            continue
        for base in baselines:
            other = times.get((tuple(row[k] for k in keys), base))
            row[f"speedup_vs_{base}"] = None if other is None else other / row["ms"]


def print_case(rows: Sequence[dict]) -> None:
    """One line per benchmark case: every provider/mode's time and bandwidth."""
    first = rows[0]
    timings = ", ".join(
        f"{r['provider']}/{r['mode']} {r['ms']:.3f} ms {r.get('gbps') or 0:.0f} GB/s" for r in rows
    )
    print(f"{first['op']} {first['rows']}x{first['width']} {first['dtype']}: {timings}")


def save_results(rows: Sequence[dict], name: str, out_dir: Path | str) -> tuple[Path, Path]:
    """Write ``rows`` (a list of flat dicts) to ``<out_dir>/<name>.csv`` and ``.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_dir / f"{name}.csv", out_dir / f"{name}.json"
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    meta = {"device": device_info(), "torch": torch.__version__, "argv": sys.argv, "rows": list(rows)}
    json_path.write_text(json.dumps(meta, indent=2, default=str))
    return csv_path, json_path


def save_width_sweep(
    rows: Sequence[dict], sweep: Sequence[dict], prefix: str, out_dir: Path | str, smoke: bool, title: str
) -> None:
    """Write ``rows`` to ``<out_dir>/<prefix>_<device tag>[-smoke].csv|json`` and plot the ``sweep``
    rows' GB/s against width, one line per provider and mode, to the same name with ``.png``."""
    name = f"{prefix}_{device_info()['tag']}{'-smoke' if smoke else ''}"
    csv_path, json_path = save_results(rows, name, out_dir)
    for row in sweep:  # after saving: the label is for the plot only, not a column of the result files
        row["series"] = f"{row['provider']} {row['mode']}"
    png = plot(sweep, "width", "gbps", "series", Path(out_dir) / f"{name}.png", title=title)
    print(f"wrote {csv_path}, {json_path}" + (f", {png}" if png else " (no timings to plot)"))
    if smoke:
        print("(smoke mode: the timings above are interpreter/CPU timings and are NOT comparable)")


def plot_title(title: str) -> str:
    """``title`` with every absolute path reduced to its last part (no machine paths in figures)."""
    absolute = r"(?<![\w.])(?:~|[A-Za-z]:)?(?:[/\\][^\s/\\]+)+[/\\]?"
    return re.sub(absolute, lambda m: re.split(r"[/\\]", m.group().rstrip("/\\"))[-1], title)


def plot(
    rows: Sequence[dict], x: str, y: str, series: str, path: Path | str, title: str = "", logx: bool = True
) -> Path | None:
    """Line plot of ``y`` against ``x``, one line per distinct value of ``series``; saved as PNG.

    Nothing is written (None) when no row has a ``y`` value: an empty panel says nothing."""
    lines = {}
    for label in dict.fromkeys(row[series] for row in rows):
        points = sorted((row[x], row[y]) for row in rows if row[series] == label and row[y] is not None)
        if points:
            lines[label] = points
    if not lines:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in lines.items():
        ax.plot(*zip(*points), marker="o", label=str(label))
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(plot_title(title))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def smoke_banner(smoke: bool) -> None:
    if smoke:
        print(
            "SMOKE MODE (no GPU or --smoke): tiny sizes through the Triton interpreter on CPU. "
            "These timings are NOT comparable to GPU numbers or to each other; they only show the "
            "script runs end to end."
        )
    else:
        info = device_info()
        print(f"device: {info['name']} (peak bandwidth {info['bandwidth_gbs']} GB/s)")
