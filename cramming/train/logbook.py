"""The loop's log lines: which steps log, the window a line averages over, tokens/s, MFU, side metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import torch

from cramming.perf import MFUMeter
from cramming.tracking import Tracker, format_line
from cramming.train.step import SIDE_METRICS

log = logging.getLogger("cramming")


class Logbook:
    """Averages over the steps since the last log line and writes the line (console, metrics.jsonl, wandb)."""

    def __init__(self, train_cfg: Mapping, budget_kind: str, tracker: Tracker, runtime, batches,
                 flops_per_token: float):  # fmt: skip
        self.train_cfg, self.budget_kind, self.tracker = train_cfg, budget_kind, tracker
        self.runtime, self.batches, self.flops_per_token = runtime, batches, flops_per_token
        self.side_metrics: dict[str, float] = {}  # NSP accuracy etc. summed over the steps since the last log
        self.side_steps = 0
        self.last_side_metrics: dict[str, float] = {}  # of the last log line: the summary's final_* figures
        self.last_train_loss: float | None = None
        self.mfu: MFUMeter | None = None  # measured in start(): before the clock (a CPU peak is measured)
        self.window = {"time": time.monotonic(), "tokens": 0, "steps": 0, "waited": 0.0}

    def start(self) -> None:
        self.mfu = MFUMeter(self.flops_per_token, self.runtime.device, self.runtime.dtype)
        self.new_window()

    def new_window(self) -> None:
        """Start the span the next log line averages over."""
        self.window = {"time": time.monotonic(), "tokens": 0, "steps": 0, "waited": self.batches.waited}

    def count(self, tokens: int) -> None:
        self.window["tokens"] += tokens
        self.window["steps"] += 1

    def add_side_metrics(self, values: Mapping[str, float]) -> None:
        """One step's side metrics (floats of the step's one transfer)."""
        for key, value in values.items():
            self.side_metrics[key] = self.side_metrics.get(key, 0.0) + value
        self.side_steps += 1

    def due(self, step: int) -> bool:
        """Every ``log_every`` steps; for time budgets also at most ``log_every_seconds`` apart.

        Step and token budgets log by step only, so a resumed run logs exactly the lines (and loss
        averages) an uninterrupted one would.
        """
        t = self.train_cfg
        if step == 1 or step % int(t["log_every"]) == 0:
            return True
        if self.budget_kind != "time":
            return False
        return time.monotonic() - self.window["time"] >= float(t["log_every_seconds"])

    def write(self, progress, clock, lr: float, grad_norm: float, batch_size: int, p: float) -> None:
        """The log line of the window just ended; clears ``progress.losses``."""
        if self.runtime.device.type == "cuda":
            torch.cuda.synchronize()  # the window's end: its kernels done, so tokens/s is true
        seconds = max(time.monotonic() - self.window["time"], 1e-9)
        tokens_per_s = self.window["tokens"] / seconds
        losses = progress.losses
        metrics = {
            "step": progress.step,
            "loss": sum(losses) / len(losses) if losses else float("nan"),  # nan: only skipped steps
            "lr": lr,
            "grad_norm": grad_norm,
            "batch_size": batch_size,
            "tokens": progress.tokens,
            "tokens_per_s": tokens_per_s,
            "mfu": self.mfu(tokens_per_s),
            "mem_gb": self.runtime.memory_gb(),
            "budget_used": p,
            "elapsed_s": clock.elapsed(),
            "eta_s": clock.eta_seconds(),
            "skipped_steps": progress.skipped_steps,
            # Share of the window's wall time the loop stood waiting for its next batch.
            "data_wait": (self.batches.waited - self.window["waited"]) / seconds,
        }
        if self.side_steps:
            metrics.update({k: v / self.side_steps for k, v in self.side_metrics.items()})
        self.side_metrics, self.side_steps = {}, 0
        log.info(format_line(metrics))
        self.tracker.log(metrics, "train")
        self.last_side_metrics = {k: metrics[k] for k in SIDE_METRICS if k in metrics}
        self.last_train_loss = metrics["loss"]
        progress.losses = []
        self.mfu.refresh_if_due()
        self.new_window()
