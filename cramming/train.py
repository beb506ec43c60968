"""The pretraining loop: MLM steps until the budget is spent, then validation and export.

The loop sees the model, the optimizer and batches; it never knows which kernels
run (``cramming.ops``) or how the corpus was prepared (``cramming.data``).
"""

from __future__ import annotations

import json
import logging
import platform
import resource
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cramming import ops
from cramming.budget import Budget, BudgetClock, accumulation_steps, batch_size_at, lr_factor
from cramming.checkpoint import latest_checkpoint, load_checkpoint, model_state, save_checkpoint
from cramming.config import resolve_device, resolve_precision, set_threads
from cramming.export import save_export
from cramming.model import build_mlm, count_parameters, flops_per_token
from cramming.optim import build_optimizer
from cramming.plots import plot_run
from cramming.tracking import Tracker, format_line

log = logging.getLogger("cramming")


@dataclass
class Runtime:
    """Where and how the run executes (``cfg.impl`` resolved), and who this process is."""

    device: torch.device
    dtype: torch.dtype
    rank: int = 0
    world_size: int = 1

    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


@dataclass
class Progress:
    """What the loop has done so far; saved in checkpoints."""

    step: int = 0
    tokens: int = 0
    skipped_steps: int = 0
    nonfinite_streak: int = 0
    losses: list = field(default_factory=list)  # training loss since the last log line


def make_runtime(impl: Mapping) -> Runtime:
    set_threads(impl)
    device = resolve_device(impl)
    ops.configure(impl)
    return Runtime(device=device, dtype=resolve_precision(impl, device))


def memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def hardware_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def peak_flops(runtime: Runtime) -> float:
    """The device's peak for the MFU figure (measured on CPU); NaN if unknown."""
    try:
        from cramming.perf import device_peak_flops
    except ImportError:
        return float("nan")
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(runtime.dtype, "fp32")
    return device_peak_flops(runtime.device, precision)


def optimizer_step(
    model, optimizer, next_microbatch, accum: int, lr: float, grad_clip: float, runtime, stop=None
):
    """Accumulate gradients over ``accum`` microbatches and step.

    Returns (mean loss, grad norm, finite), or None when ``stop()`` turned true between
    microbatches: the partial step is dropped, so a long accumulation cannot overshoot
    the budget by more than one microbatch.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    total = torch.zeros((), device=runtime.device)
    for index in range(accum):
        if index > 0 and stop is not None and stop():
            optimizer.zero_grad(set_to_none=True)
            return None
        inputs, labels = next_microbatch()
        with runtime.autocast():
            loss = model(inputs, labels)["loss"]
        (loss / accum).backward()
        total += loss.detach()
    params = [p for p in model.parameters() if p.grad is not None]
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    mean_loss = total / accum
    finite = bool(torch.isfinite(grad_norm) & torch.isfinite(mean_loss))
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return mean_loss, grad_norm, finite


@torch.no_grad()
def evaluate_mlm(model, sequences, collator, runtime: Runtime, batch_size: int, max_batches: int) -> float:
    """Mean MLM loss on held-out sequences with a fixed masking seed, so runs are comparable."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(1234)
    losses = []
    count = min(len(sequences), batch_size * max_batches)
    for start in range(0, count, batch_size):
        ids = torch.as_tensor(sequences[start : min(start + batch_size, count)].astype("int64"))
        inputs, labels = collator(ids, generator=generator)
        with runtime.autocast():
            loss = model(inputs.to(runtime.device), labels.to(runtime.device))["loss"]
        losses.append(float(loss))
    model.train(was_training)
    return sum(losses) / max(1, len(losses))


class Pretrainer:
    """Owns the model, optimizer, data stream and clock of one pretraining run."""

    def __init__(self, cfg: Mapping, run_dir: Path, budget: Budget, corpus, runtime: Runtime):
        from cramming.data import MLMCollator, SequenceLoader

        self.cfg, self.train_cfg, self.run_dir = cfg, cfg["train"], Path(run_dir)
        self.budget, self.corpus, self.runtime = budget, corpus, runtime
        torch.manual_seed(int(cfg["seed"]))
        self.model = build_mlm(cfg["arch"], corpus.vocab_size).to(runtime.device)
        self.optimizer = build_optimizer(self.model, self.train_cfg, runtime.device)
        self.step_model = torch.compile(self.model) if cfg["impl"]["compile"] else self.model
        micro = int(self.train_cfg["microbatch_size"])
        self.loader = SequenceLoader(
            corpus.train, micro, seed=int(cfg["seed"]), rank=runtime.rank, world_size=runtime.world_size
        )
        self.collator = MLMCollator(
            corpus.vocab_size, corpus.special_ids, float(cfg["data"]["mlm_probability"])
        )
        self.mask_generator = torch.Generator().manual_seed(int(cfg["seed"]) + runtime.rank)
        self.clock = BudgetClock(budget)
        self.progress = Progress()
        self.num_params = count_parameters(self.model)
        self.flops_per_token = flops_per_token(
            cfg["arch"],
            self.num_params,
            corpus.seq_len,
            float(cfg["data"]["mlm_probability"]),
            corpus.vocab_size,
        )
        self.tracker = Tracker(
            self.run_dir, cfg["wandb"], cfg, rank=runtime.rank, resume=bool(cfg.get("resume", False))
        )

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.progress.step,
            "progress": vars(self.progress),
            "model": model_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "clock": self.clock.state_dict(),
            "loader": self.loader.state_dict(),
            "mask_rng": self.mask_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "arch": dict(self.cfg["arch"]),
            "vocab_size": self.corpus.vocab_size,
            "tokenizer": self.corpus.tokenizer.to_str(),
            "budget": self.budget.text,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.clock.load_state_dict(state["clock"])
        self.loader.load_state_dict(state["loader"])
        self.mask_generator.set_state(state["mask_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.progress = Progress(**state["progress"])

    def resume(self) -> bool:
        path = latest_checkpoint(self.run_dir)
        if path is None:
            log.info(
                "resume=true but %s has no checkpoint; starting from scratch", self.run_dir / "checkpoints"
            )
            return False
        state = load_checkpoint(path)
        if state["arch"] != dict(self.cfg["arch"]) or state["tokenizer"] != self.corpus.tokenizer.to_str():
            raise ValueError(
                f"checkpoint {path} was made for another architecture or tokenizer than this config"
            )
        self.load_state_dict(state)
        log.info(
            "resumed from %s: step %d, %.0f s of budget already spent",
            path,
            self.progress.step,
            self.clock.elapsed(),
        )
        return True

    # -- the loop ------------------------------------------------------------------------------
    def next_microbatch(self) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = self.collator(next(self.loader), generator=self.mask_generator)
        device = self.runtime.device
        return inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def time_is_up(self) -> bool:
        return self.budget.kind == "time" and self.clock.exhausted()

    def run(self) -> dict:
        t = self.train_cfg
        micro, seq_len = int(t["microbatch_size"]), self.corpus.seq_len
        ramp = (int(t["batch_size_start"]), int(t["batch_size"]), float(t["batch_ramp_fraction"]))
        self.peak = peak_flops(self.runtime)
        self.model.train()
        self.clock.start()
        self.window = {"time": time.monotonic(), "tokens": 0, "steps": 0}
        last_ckpt = last_valid = time.monotonic()
        lr = grad_norm = float("nan")
        while not self.clock.exhausted():
            p = self.clock.progress()
            accum = accumulation_steps(p, micro, *ramp)
            lr = float(t["lr"]) * lr_factor(t["schedule"], p, float(t.get("warmup_fraction", 0.1)))
            result = optimizer_step(
                self.step_model,
                self.optimizer,
                self.next_microbatch,
                accum,
                lr,
                float(t["grad_clip"]),
                self.runtime,
                stop=self.time_is_up,
            )
            if result is None:
                log.info(
                    "budget ran out inside step %d; its partial accumulation was dropped",
                    self.progress.step + 1,
                )
                break
            loss, grad_norm, finite = result
            self.after_step(accum * micro * seq_len * self.runtime.world_size, finite)
            self.progress.losses.append(float(loss))
            if self.should_log():
                self.log_train(lr, float(grad_norm), batch_size_at(p, *ramp), p)
            now = time.monotonic()
            if float(t["checkpoint_minutes"]) > 0 and now - last_ckpt >= 60 * float(t["checkpoint_minutes"]):
                self.save_checkpoint()
                last_ckpt = now
            if float(t["validate_every_minutes"]) > 0 and now - last_valid >= 60 * float(
                t["validate_every_minutes"]
            ):
                self.validate()
                last_valid = now
        if self.progress.losses:
            self.log_train(
                lr, float(grad_norm), batch_size_at(self.clock.progress(), *ramp), self.clock.progress()
            )
        return self.finish()

    def after_step(self, tokens: int, finite: bool) -> None:
        prog = self.progress
        if finite:
            prog.nonfinite_streak = 0
        else:
            prog.skipped_steps += 1
            prog.nonfinite_streak += 1
            log.warning(
                "step %d: non-finite loss or gradient, update skipped (%d so far)",
                prog.step,
                prog.skipped_steps,
            )
            if prog.nonfinite_streak >= int(self.train_cfg["max_nonfinite_steps"]):
                raise FloatingPointError(
                    f"{prog.nonfinite_streak} non-finite steps in a row at step {prog.step}; stopping so no NaN "
                    f"weights are saved. Lower train.lr or resume from the last checkpoint."
                )
        prog.step += 1
        prog.tokens += tokens
        self.clock.update(prog.step, prog.tokens)
        self.window["tokens"] += tokens
        self.window["steps"] += 1

    def should_log(self) -> bool:
        t = self.train_cfg
        if self.progress.step == 1 or self.progress.step % int(t["log_every"]) == 0:
            return True
        return time.monotonic() - self.window["time"] >= float(t.get("log_every_seconds", 60))

    def log_train(self, lr: float, grad_norm: float, batch_size: int, p: float) -> None:
        if self.runtime.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.monotonic()
        seconds = max(now - self.window["time"], 1e-9)
        tokens_per_s = self.window["tokens"] / seconds
        losses = self.progress.losses
        metrics = {
            "step": self.progress.step,
            "loss": sum(losses) / max(1, len(losses)),
            "lr": lr,
            "grad_norm": grad_norm,
            "batch_size": batch_size,
            "tokens": self.progress.tokens,
            "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * self.flops_per_token / self.peak if self.peak else float("nan"),
            "mem_gb": memory_gb(self.runtime.device),
            "budget_used": p,
            "elapsed_s": self.clock.elapsed(),
            "eta_s": self.clock.eta_seconds(),
            "skipped_steps": self.progress.skipped_steps,
        }
        log.info(format_line(metrics))
        self.tracker.log(metrics, "train")
        self.last_train_loss = metrics["loss"]
        self.progress.losses = []
        self.window = {"time": now, "tokens": 0, "steps": 0}

    def validate(self) -> float | None:
        if self.corpus.valid is None or len(self.corpus.valid) == 0:
            return None
        t = self.train_cfg
        loss = evaluate_mlm(
            self.model,
            self.corpus.valid,
            self.collator,
            self.runtime,
            int(t["microbatch_size"]),
            int(t["validation_batches"]),
        )
        log.info("validation | step %d | MLM loss %.4f", self.progress.step, loss)
        self.tracker.log(
            {"step": self.progress.step, "loss": loss, "elapsed_s": self.clock.elapsed()}, "valid"
        )
        return loss

    def save_checkpoint(self) -> Path | None:
        if self.runtime.rank != 0:
            return None
        path = save_checkpoint(self.run_dir, self.state_dict(), keep=int(self.train_cfg["keep_checkpoints"]))
        log.info("checkpoint saved: %s", path)
        return path

    def finish(self) -> dict:
        elapsed = self.clock.elapsed()
        overshoot = elapsed - self.budget.amount if self.budget.kind == "time" else 0.0
        log.info(
            "budget spent: %s after %d steps, %s tokens, %.1f s (overshoot %.1f s)",
            self.budget.describe(),
            self.progress.step,
            f"{self.progress.tokens:,}",
            elapsed,
            overshoot,
        )
        valid_loss = self.validate()
        summary = {
            "name": self.run_dir.name,
            "arch": self.cfg["arch"]["name"],
            "budget": self.budget.text,
            "budget_kind": self.budget.kind,
            "hardware": hardware_name(self.runtime.device),
            "precision": str(self.runtime.dtype).replace("torch.", ""),
            "parameters": self.num_params,
            "steps": self.progress.step,
            "tokens_seen": self.progress.tokens,
            "skipped_steps": self.progress.skipped_steps,
            "final_mlm_loss": getattr(self, "last_train_loss", None),
            "valid_mlm_loss": valid_loss,
            "elapsed_s": elapsed,
            "overshoot_s": overshoot,
            "tokens_per_s": self.progress.tokens / max(elapsed, 1e-9),
            "finished": True,
        }
        if self.runtime.rank == 0:
            self.save_checkpoint()
            save_export(
                self.model, self.corpus.tokenizer, self.run_dir / "model", extra={"pretraining": summary}
            )
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            plot_run(self.run_dir)
            log.info("exported model to %s", self.run_dir / "model")
        self.tracker.finish(summary)
        return summary


def pretrain(cfg: Mapping, run_dir: Path, budget: Budget) -> dict:
    """Prepare the data (the clock is not running yet), then train until the budget is spent."""
    from cramming.data import prepare_corpus

    runtime = make_runtime(cfg["impl"])
    log.info("device %s, precision %s, kernels %s", runtime.device, runtime.dtype, ops.configure(cfg["impl"]))
    start = time.monotonic()
    corpus = prepare_corpus(cfg["data"], log=log.info)
    log.info(
        "data ready in %.1f s: %s train sequences of %d tokens",
        time.monotonic() - start,
        f"{len(corpus.train):,}",
        corpus.seq_len,
    )
    if cfg.get("prepare_only"):
        log.info("prepare_only=true: corpus and tokenizer cached at %s; not training", corpus.cache_dir)
        return {"prepared": str(corpus.cache_dir), "stats": corpus.stats}
    trainer = Pretrainer(cfg, run_dir, budget, corpus, runtime)
    log.info("model %s: %s parameters", cfg["arch"]["name"], f"{trainer.num_params:,}")
    resumed = trainer.resume() if cfg.get("resume") else False
    if not resumed and not cfg["train"].get("start_clock_after_data", True):
        trainer.clock.spent_before += time.monotonic() - start
    return trainer.run()
