"""Figures of a run, drawn from its metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cramming.tracking import read_metrics  # noqa: E402


def plot_run(run_dir: Path) -> Path | None:
    """plots/loss.png: training and validation MLM loss, learning rate and batch size against steps."""
    records = read_metrics(Path(run_dir) / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    if not train:
        return None
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=[2, 1])
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train MLM loss")
    if valid:
        ax_loss.plot(
            [r["step"] for r in valid], [r["loss"] for r in valid], "o-", label="validation MLM loss"
        )
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(f"{Path(run_dir).name}")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_lr.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:green", label="lr")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_bs = ax_lr.twinx()
    ax_bs.plot(
        [r["step"] for r in train], [r["batch_size"] for r in train], color="tab:red", label="batch size"
    )
    ax_bs.set_ylabel("batch size (sequences)")
    ax_lr.grid(alpha=0.3)
    lines = ax_lr.get_lines() + ax_bs.get_lines()
    ax_lr.legend(lines, [line.get_label() for line in lines], loc="upper left")
    fig.tight_layout()
    out = Path(run_dir) / "plots" / "loss.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
