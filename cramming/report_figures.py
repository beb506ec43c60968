"""The run report's figures: matplotlib PNGs returned as base64 ``data:`` URIs (no file, no network).

Every function takes the ``train`` / ``valid`` records of metrics.jsonl and returns an
``<img>``-ready URI, or None when the run logged nothing to draw.
"""

from __future__ import annotations

import base64
import io
import math
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

DPI = 96


def _uri(fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def time_axis(seconds: list[float]) -> tuple[list[float], str]:
    """Wall-clock values in the unit that reads best for the run's length (s, min or h)."""
    top = max(seconds, default=0.0)
    if top >= 3 * 3600:
        return [s / 3600 for s in seconds], "wall clock (h)"
    if top >= 180:
        return [s / 60 for s in seconds], "wall clock (min)"
    return list(seconds), "wall clock (s)"


def _si(value: float, _pos=None) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:g}"


def _finite(records: list[dict], key: str) -> list[dict]:
    return [r for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]


def loss_figure(train: list[dict], valid: list[dict]) -> str | None:
    """MLM loss against wall clock (left) and tokens seen (right, log scale)."""
    train = _finite(train, "loss")
    if not train:
        return None
    fig, (ax_t, ax_n) = plt.subplots(1, 2, figsize=(12, 4.2))
    xs, label = time_axis([r["elapsed_s"] for r in train])
    ax_t.plot(xs, [r["loss"] for r in train], ".-", label="train (mean since last log line)")
    if valid:
        vx, _ = time_axis([r["elapsed_s"] for r in train] + [r["elapsed_s"] for r in valid])
        ax_t.plot(vx[len(train) :], [r["loss"] for r in valid], "o", color="tab:red", label="validation")
    ax_t.set(xlabel=label, ylabel="MLM loss (nats/token)", title="loss against wall clock")
    ax_n.plot([r["tokens"] for r in train], [r["loss"] for r in train], ".-")
    ax_n.set_xscale("log")
    ax_n.xaxis.set_major_formatter(FuncFormatter(_si))
    ax_n.set(xlabel="tokens seen (log scale)", ylabel="MLM loss (nats/token)", title="loss against tokens")
    for ax in (ax_t, ax_n):
        ax.grid(alpha=0.3)
    ax_t.legend()
    return _uri(fig)


def schedule_figure(train: list[dict]) -> str | None:
    """Learning rate and batch size (sequences) against the fraction of budget used."""
    if not train:
        return None
    fig, ax_lr = plt.subplots(figsize=(12, 3.6))
    p = [100 * r.get("budget_used", 0.0) for r in train]
    ax_lr.plot(p, [r["lr"] for r in train], ".-", color="tab:green", label="learning rate")
    ax_lr.set(xlabel="budget used (%)", ylabel="learning rate", title="learning-rate and batch-size ramp")
    ax_lr.grid(alpha=0.3)
    ax_bs = ax_lr.twinx()
    ax_bs.step(p, [r["batch_size"] for r in train], where="post", color="tab:red", label="batch size")
    ax_bs.set_ylabel("batch size (sequences)")
    lines = ax_lr.get_lines() + ax_bs.get_lines()
    ax_lr.legend(lines, [line.get_label() for line in lines], loc="upper left")
    return _uri(fig)


def throughput_figure(train: list[dict]) -> str | None:
    """Tokens/s and MFU (%) against wall clock."""
    train = _finite(train, "tokens_per_s")
    if not train:
        return None
    fig, ax_tok = plt.subplots(figsize=(12, 3.6))
    xs, label = time_axis([r["elapsed_s"] for r in train])
    ax_tok.plot(xs, [r["tokens_per_s"] for r in train], ".-", label="tokens/s")
    ax_tok.yaxis.set_major_formatter(FuncFormatter(_si))
    ax_tok.set(xlabel=label, ylabel="throughput (tokens/s)", title="throughput and model FLOPs utilisation")
    ax_tok.set_ylim(bottom=0)
    ax_tok.grid(alpha=0.3)
    ax_mfu = ax_tok.twinx()
    ax_mfu.plot(xs, [100 * r.get("mfu", float("nan")) for r in train], "--", color="tab:orange", label="MFU")
    ax_mfu.set_ylabel("MFU (% of peak)")
    ax_mfu.set_ylim(bottom=0)
    lines = ax_tok.get_lines() + ax_mfu.get_lines()
    ax_tok.legend(lines, [line.get_label() for line in lines], loc="lower right")
    return _uri(fig)


def wait_figure(train: list[dict]) -> str | None:
    """Share of wall time waiting for data (%) and peak memory (GB) against wall clock."""
    if not train:
        return None
    fig, ax_wait = plt.subplots(figsize=(12, 3.2))
    xs, label = time_axis([r["elapsed_s"] for r in train])
    ax_wait.plot(
        xs, [100 * r.get("data_wait", 0.0) for r in train], ".-", color="tab:purple", label="data wait"
    )
    ax_wait.set(xlabel=label, ylabel="data wait (% of wall time)", title="data wait and memory")
    ax_wait.set_ylim(bottom=0)
    ax_wait.grid(alpha=0.3)
    ax_mem = ax_wait.twinx()
    ax_mem.plot(
        xs, [r.get("mem_gb", float("nan")) for r in train], ".-", color="tab:gray", label="peak memory"
    )
    ax_mem.set_ylabel("peak memory (GB)")
    mem = [r["mem_gb"] for r in train if isinstance(r.get("mem_gb"), (int, float))]
    ax_mem.set_ylim(0, 1.15 * max(mem, default=1.0) or 1.0)  # room above a flat line
    lines = ax_wait.get_lines() + ax_mem.get_lines()
    ax_wait.legend(lines, [line.get_label() for line in lines], loc="upper right")
    return _uri(fig)


def seed_spread_figure(tasks: dict) -> str | None:
    """Every fine-tuning seed's headline score per GLUE task (dots) and their median (bar)."""
    rows = []
    for result in tasks.values():
        key = next(iter(result.get("headline") or {}), None)
        metric = (result.get("metrics") or [None])[0]
        scores = [s["scores"].get(metric) for s in result.get("seeds") or [] if metric]
        scores = [s for s in scores if isinstance(s, (int, float))]
        if key and scores:
            rows.append((key, scores))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(12, 0.5 * len(rows) + 1.4))
    for i, (_name, scores) in enumerate(rows):
        ax.scatter(
            scores, [i] * len(scores), color="tab:blue", zorder=3, label="one seed" if i == 0 else None
        )
        median = statistics.median(scores)
        ax.plot([median, median], [i - 0.3, i + 0.3], color="black", lw=2, label="median" if i == 0 else None)
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax.set(xlabel="dev score (%)", title="GLUE scores of every fine-tuning seed")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(loc="lower right")
    return _uri(fig)
