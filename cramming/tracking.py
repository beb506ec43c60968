"""Where the figures go: one log line, a metrics JSONL file, and wandb (rank 0 only)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("cramming")


FORMAT = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S")


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def _not_printed_already(record: logging.LogRecord) -> bool:
    """False for records a library logger already printed with a console handler of its own.

    huggingface_hub and datasets add a StreamHandler to their loggers and still propagate to the
    root, so without this filter every hub retry message appeared twice on the console. The record
    still reaches the log files on the root logger, once.
    """
    logger = logging.getLogger(record.name)
    while logger is not None and logger is not logging.root:
        if any(_is_console(h) for h in logger.handlers):
            return False
        if not logger.propagate:
            return True
        logger = logger.parent
    return True


def setup_logging(run_dir: Path | None, rank: int = 0) -> None:
    """INFO to the console (one handler, each message once) and to run_dir/log.txt; other ranks only warn.

    Every entry point calls this; under Hydra's ``job_logging: stdout`` its console handler is kept.
    """
    root = logging.getLogger()
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    if not any(_is_console(h) for h in root.handlers):
        console = logging.StreamHandler()
        console.setFormatter(FORMAT)
        root.addHandler(console)
    for handler in root.handlers:
        if _is_console(handler) and _not_printed_already not in handler.filters:
            handler.addFilter(_not_printed_already)
    if run_dir is not None and rank == 0:
        log_file = str(Path(run_dir) / "log.txt")
        if not any(getattr(h, "baseFilename", None) == log_file for h in root.handlers):
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(log_file)
            handler.setFormatter(FORMAT)
            root.addHandler(handler)


@contextlib.contextmanager
def log_to_file(path: Path):
    """Copy every log line (this package's INFO and up, libraries' warnings) into ``path`` while the block runs."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    package = logging.getLogger("cramming")
    previous = package.level
    if package.getEffectiveLevel() > logging.INFO:  # the file gets progress even if the caller is quiet
        package.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)
        package.setLevel(previous)
        handler.close()


def _fmt_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_line(m: Mapping) -> str:
    """`step | loss | lr | grad_norm | tok/s | mfu | data wait | mem | budget used | eta` (+ NSP accuracy for recipe=bert)"""
    nsp = (
        f" (mlm {m['mlm_loss']:.4f} + nsp {m['nsp_loss']:.4f}, nsp acc {m['nsp_accuracy']:.3f})"
        if "nsp_loss" in m
        else ""
    )
    return (
        f"step {m['step']:>6} | loss {m['loss']:.4f}{nsp} | lr {m['lr']:.2e} | grad {m['grad_norm']:.3f} "
        f"| batch {m['batch_size']} | {m['tokens_per_s']:,.0f} tok/s | mfu {100 * m['mfu']:.1f}% "
        f"| data wait {100 * m['data_wait']:.1f}% "
        f"| mem {m['mem_gb']:.2f} GB | budget {100 * m['budget_used']:.1f}% | eta {_fmt_seconds(m['eta_s'])}"
    )


class Tracker:
    """Writes metrics.jsonl and forwards to wandb; a no-op on ranks other than 0."""

    def __init__(
        self, run_dir: Path, wandb_cfg: Mapping, config: Mapping, rank: int = 0, resume: bool = False
    ):
        self.enabled = rank == 0
        self.path = Path(run_dir) / "metrics.jsonl"
        self.wandb = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume and self.path.exists():
            self.path.unlink()
        if wandb_cfg.get("mode", "disabled") != "disabled":
            import wandb

            self.wandb = wandb.init(
                project=wandb_cfg.get("project", "cramming"),
                entity=wandb_cfg.get("entity"),
                name=Path(run_dir).name,
                dir=str(run_dir),
                mode=wandb_cfg["mode"],
                tags=list(wandb_cfg.get("tags") or []),
                config=dict(config),
                resume="allow" if resume else None,
            )

    def log(self, metrics: Mapping, kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"kind": kind, **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(
                {f"{kind}/{k}": v for k, v in metrics.items() if k != "step"}, step=metrics.get("step")
            )

    def finish(self, summary: Mapping | None = None) -> None:
        if self.wandb is not None:
            if summary:
                self.wandb.summary.update(dict(summary))
            self.wandb.finish()


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
