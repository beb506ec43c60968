"""The pretraining loop: MLM steps until the budget is spent, then validation and export.

The loop sees the model, the optimizer and batches; it never knows which kernels
run (``cramming.kernels.dispatch``) or how the corpus was prepared (``cramming.data``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cramming import distributed
from cramming.budget import Budget, BudgetClock, accumulation_steps, schedule_factor
from cramming.checkpoint import (
    all_finite,
    find_checkpoint,
    find_resume_point,
    identity,
    load_rank_state,
    model_state,
    plain,
    rank_state,
    save_checkpoint,
    trim_metrics,
)
from cramming.data.masking import build_collator as build_recipe_collator
from cramming.data.masking import uses_bert_family, wants_nsp
from cramming.data.prefetch import BatchStream
from cramming.export.folder import FRAMING, pretraining_framing, save_export
from cramming.heldout import PeriodicScorer
from cramming.kernels import dispatch
from cramming.microbatch import recover_from_oom, resolve_microbatch
from cramming.models import build_mlm, build_pretraining, count_parameters
from cramming.optim import build_optimizer
from cramming.perf import MFUMeter, flops_per_token
from cramming.plots import plot_run
from cramming.report import environment, report_at_end
from cramming.runtime import CompiledStep, Runtime, make_runtime
from cramming.tracking import Tracker, format_line

log = logging.getLogger("cramming")


@dataclass
class Progress:
    """What the loop has done so far; saved in checkpoints."""

    step: int = 0
    tokens: int = 0
    skipped_steps: int = 0
    nonfinite_streak: int = 0
    restores: int = 0  # reloads of the last good checkpoint after non-finite steps
    lr_scale: float = 1.0  # multiplied by train.nonfinite_lr_factor at each such reload
    # Training losses since the last log line: saved so a resumed run's next log line averages the same steps.
    losses: list = field(default_factory=list)


def model_vocab_size(tokenizer_size: int, multiple: int = 64) -> int:
    """Embedding rows: the tokenizer's vocabulary rounded up to a multiple of 64 (aligned matmuls).

    A small corpus can yield fewer tokens than data.vocab_size asks for; rows no token uses would
    only cost decoder FLOPs.
    """
    return -(-tokenizer_size // multiple) * multiple


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A collated microbatch on ``device``; pinned host memory first on CUDA (the prefetch thread
    already pins), so the copy is asynchronous."""
    pin = device.type == "cuda"
    return {
        name: (t.pin_memory() if pin and not t.is_pinned() else t).to(device, non_blocking=True)
        for name, t in batch.items()
    }


def optimizer_step(
    model,
    optimizer,
    next_microbatch,
    accum: int,
    lr: float,
    grad_clip: float,
    runtime,
    stop=None,
    scaler=None,
    inject_nan: bool = False,
    extras: dict | None = None,
):
    """Accumulate gradients over ``accum`` microbatches and step.

    ``next_microbatch()`` returns the model's keyword arguments (``input_ids``, ``labels``, ...).

    Under DDP the gradients are all-reduced only on the last microbatch (``no_sync`` for the others),
    and the returned loss is the mean over all ranks. ``scaler`` is the fp16 GradScaler (a disabled one
    is a pass-through). ``inject_nan`` poisons the first microbatch's loss (a testing aid).
    A microbatch is ``(inputs, labels)`` or a dict of model keyword arguments (BERT/RoBERTa recipes);
    ``extras`` (optional) receives the mean over microbatches of the model's side metrics (``mlm_loss``,
    ``nsp_loss``, ``nsp_accuracy``).
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
        batch = next_microbatch()  # the model's keyword arguments
        with distributed.sync_context(model, last_microstep=index == accum - 1):
            with runtime.autocast():
                out = model(**batch)
                loss = out["loss"]
            _add_side_metrics(extras, out, accum)
            if inject_nan and index == 0:
                loss = loss * float("nan")
            scaled = loss / accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total += loss.detach()
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    mean_loss = distributed.mean_across_ranks(total / accum)
    finite = bool(torch.isfinite(grad_norm) & torch.isfinite(mean_loss))
    if finite:
        scaler.step(optimizer) if scaler is not None else optimizer.step()
    if scaler is not None:
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return mean_loss, grad_norm, finite


SIDE_METRICS = (
    "mlm_loss",
    "nsp_loss",
    "nsp_accuracy",
    "kl_loss",
    "cosine_loss",
)  # the last two: distillation


def _add_side_metrics(extras: dict | None, out: Mapping, accum: int) -> None:
    if extras is None:
        return
    for key in SIDE_METRICS:
        if key in out:
            extras[key] = extras.get(key, 0.0) + out[key].detach().float() / accum  # no host sync here


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
        batch = collator(ids, generator=generator)
        with runtime.autocast():
            out = model(**{name: t.to(runtime.device) for name, t in batch.items()})
            # BERT: the MLM part; distillation: the student's MLM loss, not the weighted KL/cosine sum
            loss = out.get("mlm_loss", out["loss"])
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
        self.vocab_size = model_vocab_size(corpus.tokenizer.get_vocab_size())
        self.bert_family = uses_bert_family(cfg["data"])  # recipe=bert / roberta: own model and batches
        self.model = self.build_model().to(runtime.device)
        self.optimizer = build_optimizer(self.model, self.train_cfg, runtime.device)
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.dtype == torch.float16)
        wrapped = distributed.wrap_ddp(self.model, runtime.device)
        if self.bert_family:
            self.collator = build_recipe_collator(
                cfg["data"], corpus.tokenizer.get_vocab_size(), corpus.special_ids
            )
        else:
            self.collator = MLMCollator(
                corpus.tokenizer.get_vocab_size(), corpus.special_ids, float(cfg["data"]["mlm_probability"])
            )
        self.microbatch = resolve_microbatch(self)  # microbatch_size=auto: measured now, before the clock
        global_micro = int(self.train_cfg["microbatch_size"]) * runtime.world_size
        most = max(accumulation_steps(p, global_micro, *self.ramp()) for p in (0.0, 1.0))  # the ramp's ends
        # impl.compile, eager fallback; reduce-overhead is refused when steps accumulate microbatches
        self.step = CompiledStep(wrapped, runtime, "pretraining step", max_microbatches=most)
        micro = int(self.train_cfg["microbatch_size"])
        self.loader = SequenceLoader(
            corpus.train, micro, seed=int(cfg["seed"]), rank=runtime.rank, world_size=runtime.world_size
        )
        self.side_metrics: dict[str, float] = {}  # NSP accuracy etc. summed over the steps since the last log
        self.mask_generator = torch.Generator().manual_seed(int(cfg["seed"]) + runtime.rank)
        # Batches made ahead in a background thread (impl.dataloader_workers of them), pinned for the GPU.
        self.batches = BatchStream(
            self.loader,
            self.collator,
            self.mask_generator,
            depth=int(cfg["impl"]["dataloader_workers"]),
            pin=runtime.device.type == "cuda",
            delay_s=float(self.train_cfg["debug_data_delay_s"]),  # testing aid: a slow disk
        )
        micro = int(self.train_cfg["microbatch_size"]) * runtime.world_size
        # the ETA of a step budget weighs the ramp (late steps run more microbatches)
        self.clock = BudgetClock(budget, ramp=(micro, *self.ramp()))
        self.progress = Progress()
        self.identity = identity(cfg["arch"], self.vocab_size, corpus.tokenizer.to_str())
        # Testing aid: poison the loss at these step numbers (once each), to exercise the non-finite path.
        self.nan_steps = {int(s) for s in self.train_cfg["debug_nan_steps"]}
        self.saved_step = -1
        self.num_params = count_parameters(self.model)
        self.flops_per_token = flops_per_token(
            cfg["arch"],
            self.num_params,
            corpus.seq_len,
            float(cfg["data"]["mlm_probability"]),
            self.vocab_size,
        )
        self.tracker = Tracker(self.run_dir, cfg["wandb"], cfg, rank=runtime.rank, resume=bool(cfg["resume"]))
        self.heldout = PeriodicScorer(self.train_cfg.get("heldout"), cfg["data"], corpus.tokenizer)

    def build_model(self) -> torch.nn.Module:
        """The module the loop trains (a hook: distillation trains a student against a teacher)."""
        if self.bert_family:
            return build_pretraining(self.cfg["arch"], self.vocab_size, nsp=wants_nsp(self.cfg["data"]))
        return build_mlm(self.cfg["arch"], self.vocab_size)

    def export(self, summary: dict) -> None:
        """Write ``RUN/model`` (a hook: distillation exports the student alone, naming its teacher)."""
        # how pretraining framed the inputs (seq_len, [CLS], masking, normaliser), for evaluation code
        framing = pretraining_framing(self.cfg, self.corpus.tokenizer)
        extra = {"pretraining": summary, FRAMING: framing}
        save_export(self.model, self.corpus.tokenizer, self.run_dir / "model", extra=extra)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The whole run's state; a collective under DDP (every rank's cursor and RNGs are gathered).

        Tensors and plain Python values only, so ``torch.load(weights_only=True)`` reads it back.
        """
        progress = dict(vars(self.progress), losses=list(self.progress.losses))
        loader_state, mask_rng = self.batches.state()  # as of the last batch used, not the producer's
        rank = rank_state(loader_state, mask_rng, self.runtime.device)
        return {
            "step": self.progress.step,
            "progress": progress,
            "model": model_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "clock": self.clock.state_dict(),
            "ranks": distributed.gather_objects(rank),
            "arch": dict(self.cfg["arch"]),
            "vocab_size": self.vocab_size,
            "tokenizer": self.corpus.tokenizer.to_str(),
            "budget": self.budget.text,
            "config": plain(self.cfg),
        }

    def load_state_dict(self, state: dict, rewind: bool = False) -> None:
        """Continue from ``state``; ``rewind``: a reload within this run (time spent is not given back)."""
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler.is_enabled() and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if rewind:
            self.clock.rewind(state["clock"])
        else:
            self.clock.load_state_dict(state["clock"])
        rt = self.runtime
        self.batches.stop()  # batches made ahead belong to the old position
        load_rank_state(state["ranks"], rt.rank, rt.world_size, self.loader, self.mask_generator, rt.device)
        self.progress = Progress(**state["progress"])

    def resume(self) -> bool:
        """Continue from the newest good checkpoint; False (a fresh start) when there is none at all."""
        found = find_resume_point(self.run_dir, self.identity, self.cfg, self.runtime.rank)
        if found is not None:
            self.load_state_dict(found[1])
            self.saved_step = self.progress.step
            log.info(
                "resumed from %s: step %d, %s tokens, %.1f s of budget already spent",
                found[0],
                self.progress.step,
                f"{self.progress.tokens:,}",
                self.clock.elapsed(),
            )
        if self.runtime.rank == 0:  # metrics of steps about to be redone would be logged twice
            dropped = trim_metrics(self.tracker.path, self.progress.step)
            if dropped:
                log.info("dropped %d metrics records after step %d (redone now)", dropped, self.progress.step)
        return found is not None

    def restore_last_good(self) -> None:
        """After too many non-finite steps in a row: reload the last good checkpoint with a lower LR."""
        t, prog = self.train_cfg, self.progress
        what = f"{prog.nonfinite_streak} non-finite steps in a row at step {prog.step}"
        if prog.restores >= int(t["max_nonfinite_restores"]):
            raise FloatingPointError(
                f"{what}, after {prog.restores} reloads (train.max_nonfinite_restores="
                f"{t['max_nonfinite_restores']}); stopping. Lower train.lr and resume."
            )
        found = find_checkpoint(self.run_dir, self.identity, self.runtime.rank)
        if found is None:
            raise FloatingPointError(
                f"{what} and no checkpoint to go back to yet; stopping so no NaN weights are saved. "
                "Lower train.lr and start again."
            )
        skipped, restores = prog.skipped_steps, prog.restores + 1
        scale = prog.lr_scale * float(t["nonfinite_lr_factor"])
        self.load_state_dict(found[1], rewind=True)
        self.progress.skipped_steps, self.progress.restores, self.progress.lr_scale = skipped, restores, scale
        self.saved_step = self.progress.step
        log.warning(
            "reloaded %s (step %d) after non-finite steps; learning rate now x%g of the schedule",
            found[0],
            self.progress.step,
            scale,
        )

    # -- the loop ------------------------------------------------------------------------------
    def next_microbatch(self) -> dict[str, torch.Tensor]:
        """input_ids (B, T), masked_positions and labels (B, k): fixed shapes, as the compiled model wants."""
        return to_device(next(self.batches), self.runtime.device)  # read and masked ahead by a thread

    def control(self) -> tuple[float, bool, bool]:
        """(budget fraction, budget spent, timed checkpoint due): rank 0's view, shared with all ranks."""
        minutes = float(self.train_cfg["checkpoint_minutes"])
        due = minutes > 0 and time.monotonic() - self.last_ckpt_time >= 60 * minutes
        p, done, due = distributed.broadcast_floats(
            [self.clock.progress(), float(self.clock.exhausted()), float(due)]
        )
        return p, bool(done), bool(due)

    def time_is_up(self) -> bool:
        """Checked between microbatches; rank 0 decides, so all ranks drop the same partial step."""
        if self.budget.kind != "time":
            return False
        return bool(distributed.broadcast_floats([float(self.clock.exhausted())])[0])

    def run(self) -> dict:
        """Train until the budget is spent (or ``train.stop_after_steps``), then finish."""
        self.loop_start = time.monotonic()
        try:
            stopped_early = self.train_loop()
        finally:
            self.batches.stop()  # on exceptions too: no producer thread outlives the loop
            self.loop_seconds = time.monotonic() - self.loop_start
        return self.stop_early() if stopped_early else self.finish()

    def train_loop(self) -> bool:
        """Steps until the budget is spent; True when ``train.stop_after_steps`` ended it early."""
        t = self.train_cfg
        self.mfu = MFUMeter(self.flops_per_token, self.runtime.device, self.runtime.dtype)  # before the clock
        self.model.train()
        self.clock.start()
        self.heldout.start(self.progress.tokens)  # a resumed run goes on from its next multiple
        self.loop_start = time.monotonic()  # the data-wait fraction's denominator starts with the clock
        self.new_window()
        self.last_ckpt_time = self.last_valid = time.monotonic()
        self.last_lr = self.last_grad_norm = p = float("nan")
        every, stop_after = int(t["checkpoint_every_steps"]), int(t["stop_after_steps"])
        while True:
            p, done, checkpoint_due = self.control()
            if done:
                break
            if checkpoint_due:
                self.save_checkpoint()
            if not self.train_step(p):
                log.info(
                    "budget ran out inside step %d; its partial accumulation was dropped",
                    self.progress.step + 1,
                )
                break
            if every and self.progress.step % every == 0 and self.saved_step != self.progress.step:
                self.save_checkpoint()
            if self.progress.step == stop_after:  # ==: a resumed run passing the same override goes on
                return True
            self.maybe_validate()
        if self.progress.losses:
            p = self.clock.progress()
            self.log_train(self.last_lr, self.last_grad_norm, getattr(self, "last_batch", 0), p)
        return False

    def ramp(self) -> tuple[int, int, float]:
        t = self.train_cfg
        return int(t["batch_size_start"]), int(t["batch_size"]), float(t["batch_ramp_fraction"])

    def train_step(self, p: float) -> bool:
        """One optimizer step at budget fraction ``p``; False when the budget ran out inside it."""
        t, micro = self.train_cfg, int(self.train_cfg["microbatch_size"])
        # train.batch_size is the global batch: each of the ranks does 1/world_size of it.
        accum = accumulation_steps(p, micro * self.runtime.world_size, *self.ramp())
        schedule = schedule_factor(t, p)  # train.schedule and its fractions
        lr = float(t["lr"]) * self.progress.lr_scale * schedule
        number = self.progress.step + 1
        inject = number in self.nan_steps
        step_metrics: dict[str, float] = {}  # NSP accuracy etc. of this step (BERT/RoBERTa recipes)
        self.nan_steps.discard(number)  # fires once, so a reload does not hit it again

        def one_step(model, next_microbatch):  # on `model`: compiled, or eager after a compile failure
            step_metrics.clear()
            return optimizer_step(
                model,
                self.optimizer,
                next_microbatch,
                accum,
                lr,
                float(t["grad_clip"]),
                self.runtime,
                stop=self.time_is_up,
                scaler=self.scaler,
                inject_nan=inject,
                extras=step_metrics,
            )

        try:
            result = self.step.run(one_step, self.next_microbatch)
        except torch.OutOfMemoryError as err:  # fragmentation late in a run: microbatch=auto halves it once
            if not recover_from_oom(self, err):
                raise
            return True  # back at the last checkpoint with half the microbatch; the loop goes on
        if result is None:
            return False
        loss, grad_norm, finite = result
        loss = float(loss)
        if math.isfinite(loss):
            self.progress.losses.append(loss)
            for key, value in step_metrics.items():
                self.side_metrics[key] = self.side_metrics.get(key, 0.0) + float(value)
            self.side_metrics["steps"] = self.side_metrics.get("steps", 0) + 1
        self.last_lr, self.last_grad_norm = lr, float(grad_norm)
        self.last_batch = accum * micro * self.runtime.world_size  # sequences this step actually used
        tokens = self.last_batch * self.corpus.seq_len
        restored = self.after_step(tokens, finite, math.isfinite(loss))
        if not restored and self.should_log():
            self.log_train(lr, float(grad_norm), self.last_batch, p)
        return True

    def after_step(self, tokens: int, finite: bool, loss_finite: bool) -> bool:
        """Count the step; True when a streak of non-finite steps made it reload the last checkpoint."""
        prog = self.progress
        if finite:
            prog.nonfinite_streak = 0
        elif loss_finite and self.scaler.is_enabled():
            prog.skipped_steps += 1  # fp16 overflow: the scaler lowers its scale; not a divergence
        else:
            prog.skipped_steps += 1
            prog.nonfinite_streak += 1
            log.warning(
                "step %d: non-finite loss or gradient, update skipped (%d so far)",
                prog.step + 1,
                prog.skipped_steps,
            )
        prog.step += 1
        prog.tokens += tokens
        self.clock.update(prog.step, prog.tokens)
        self.window["tokens"] += tokens
        self.window["steps"] += 1
        if prog.nonfinite_streak >= int(self.train_cfg["max_nonfinite_steps"]):
            if self.train_cfg["on_nonfinite"] != "restore":
                raise FloatingPointError(
                    f"{prog.nonfinite_streak} non-finite steps in a row at step {prog.step} "
                    f"(train.on_nonfinite=stop); stopping so no NaN weights are saved. "
                    f"Lower train.lr and resume from the last checkpoint."
                )
            self.restore_last_good()
            return True
        return False

    def should_log(self) -> bool:
        """Every ``log_every`` steps; for time budgets also at most ``log_every_seconds`` apart.

        Step and token budgets log by step only, so a resumed run logs exactly the lines (and loss
        averages) an uninterrupted one would.
        """
        t = self.train_cfg
        if self.progress.step == 1 or self.progress.step % int(t["log_every"]) == 0:
            return True
        if self.budget.kind != "time":
            return False
        return time.monotonic() - self.window["time"] >= float(t["log_every_seconds"])

    def log_train(self, lr: float, grad_norm: float, batch_size: int, p: float) -> None:
        if self.runtime.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.monotonic()
        seconds = max(now - self.window["time"], 1e-9)
        tokens_per_s = self.window["tokens"] / seconds
        losses = self.progress.losses
        metrics = {
            "step": self.progress.step,
            "loss": sum(losses) / len(losses) if losses else float("nan"),  # nan: only skipped steps
            "lr": lr,
            "grad_norm": grad_norm,
            "batch_size": batch_size,
            "tokens": self.progress.tokens,
            "tokens_per_s": tokens_per_s,
            "mfu": self.mfu(tokens_per_s),
            "mem_gb": self.runtime.memory_gb(),
            "budget_used": p,
            "elapsed_s": self.clock.elapsed(),
            "eta_s": self.clock.eta_seconds(),
            "skipped_steps": self.progress.skipped_steps,
            # Share of the window's wall time the loop stood waiting for its next batch.
            "data_wait": (self.batches.waited - self.window["waited"]) / seconds,
        }
        steps = self.side_metrics.pop("steps", 0)
        metrics.update({k: v / steps for k, v in self.side_metrics.items()} if steps else {})
        self.side_metrics = {}
        log.info(format_line(metrics))
        self.tracker.log(metrics, "train")
        self.last_side_metrics = {k: metrics[k] for k in SIDE_METRICS if k in metrics}
        self.last_train_loss = metrics["loss"]
        self.progress.losses = []
        self.mfu.refresh_if_due()
        self.new_window()

    def new_window(self) -> None:
        """Start the span the next log line averages over."""
        self.window = {"time": time.monotonic(), "tokens": 0, "steps": 0, "waited": self.batches.waited}

    def validate(self) -> float | None:
        """Held-out MLM loss, on rank 0 only (no collectives, so the other ranks just wait)."""
        if self.runtime.rank != 0 or self.corpus.valid is None or len(self.corpus.valid) == 0:
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

    def maybe_validate(self) -> None:
        """Periodic validation; its time is not charged to the budget (nor to the log window's tok/s)."""
        minutes = float(self.train_cfg["validate_every_minutes"])
        started = time.monotonic()
        with self.clock.paused():
            if minutes > 0 and time.monotonic() - self.last_valid >= 60 * minutes:
                self.validate()
                self.last_valid = time.monotonic()
            if self.heldout.due(self.progress.tokens) and self.runtime.rank == 0:
                self.score_heldout()
        self.window["time"] += time.monotonic() - started

    def score_heldout(self) -> None:
        """The fixed held-out text (cramming.heldout), logged as metrics kind "heldout"."""
        prog = self.progress
        # elapsed_s before scoring: the evaluation is not training time
        record = {"step": prog.step, "tokens": prog.tokens, "elapsed_s": self.clock.elapsed()}
        result = self.heldout(self.model, self.runtime.device)
        if result is None:
            return
        record |= {"loss": result["nats_per_masked_token"], "bits_per_char": result["bits_per_char"]}
        line = "held-out | step %d | %.4f nats/masked token | %.4f bits/char"
        log.info(line, prog.step, record["loss"], record["bits_per_char"])
        self.tracker.log(record, "heldout")

    def save_checkpoint(self) -> Path | None:
        """A collective under DDP (rank states are gathered); only rank 0 writes. Never saves NaN weights."""
        step = self.progress.step
        if not all_finite(self.model.state_dict()):
            log.error(
                "step %d: the weights are not finite; checkpoint NOT saved (earlier ones are kept)", step
            )
            return None
        state, path = self.state_dict(), None
        if self.runtime.rank == 0:
            meta = {**self.identity, "budget": self.budget.text, "world_size": self.runtime.world_size}
            path = save_checkpoint(
                self.run_dir,
                state,
                keep=int(self.train_cfg["keep_checkpoints"]),
                meta={**meta, "config": self.cfg},
            )
            log.info("checkpoint saved: %s (step %d)", path, step)
        distributed.barrier()  # the other ranks may read it at once (reload after non-finite steps)
        self.saved_step, self.last_ckpt_time = step, time.monotonic()
        return path

    def stop_early(self) -> dict:
        """``train.stop_after_steps`` (a testing aid): checkpoint, then end like a crash: no export, no summary."""
        if self.saved_step != self.progress.step:
            self.save_checkpoint()
        log.warning(
            "train.stop_after_steps=%d reached: stopping without finishing the run", self.progress.step
        )
        self.tracker.finish()
        return {"name": self.run_dir.name, "steps": self.progress.step, "finished": False}

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
            "recipe": self.cfg.get("recipe", "crammed"),
            "budget": self.budget.text,
            "budget_kind": self.budget.kind,
            "hardware": self.runtime.hardware_name(),
            "precision": str(self.runtime.dtype).replace("torch.", ""),
            "parameters": self.num_params,
            "steps": self.progress.step,
            "tokens_seen": self.progress.tokens,
            "skipped_steps": self.progress.skipped_steps,
            "nonfinite_restores": self.progress.restores,
            "final_mlm_loss": getattr(self, "last_side_metrics", {}).get(
                "mlm_loss", getattr(self, "last_train_loss", None)
            ),
            **{f"final_{k}": v for k, v in getattr(self, "last_side_metrics", {}).items() if k != "mlm_loss"},
            "valid_mlm_loss": valid_loss,
            "elapsed_s": elapsed,
            "overshoot_s": overshoot,
            "tokens_per_s": self.progress.tokens / max(elapsed, 1e-9),
            "data_wait": self.batches.waited / max(self.loop_seconds, 1e-9),  # this process's loop
            "compiled": self.step.module is not self.step.eager,
            "compile_s": self.step.compile_seconds,  # the first step's time, compilation included
            "kernels": dispatch.describe(self.runtime.device),  # what ran, for the run report
            "microbatch": self.microbatch.as_dict(),  # the size used and why (train.microbatch_size=auto)
            "environment": environment(),  # versions and git revision
            "finished": True,
        }
        if self.saved_step != self.progress.step:
            self.save_checkpoint()
        if self.runtime.rank == 0:
            self.export(summary)
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            plot_run(self.run_dir)
            log.info("exported model to %s", self.run_dir / "model")
            report_at_end(self.run_dir)  # RUN/report.html (rewritten by GLUE when eval=glue)
        self.tracker.finish(summary)
        return summary


def prepare_corpus_once(data_cfg: Mapping):
    """Rank 0 prepares (or verifies) the cache first; the other ranks wait, then load it."""
    from cramming.data import prepare_corpus

    if distributed.rank() != 0:
        distributed.barrier()
    corpus = prepare_corpus(data_cfg, log=log.info)
    if distributed.rank() == 0:
        distributed.barrier()
    return corpus


def pretrain(cfg: Mapping, run_dir: Path, budget: Budget, trainer_class: type | None = None) -> dict:
    """Prepare the data (the clock is not running yet), then train until the budget is spent.

    ``trainer_class``: a Pretrainer subclass (distillation's); the loop is the same.
    """
    runtime = make_runtime(cfg["impl"])
    log.info(
        "device %s, precision %s, kernels %s, %d process(es)",
        runtime.device,
        runtime.dtype,
        dispatch.describe(runtime.device),
        runtime.world_size,
    )
    start = time.monotonic()
    corpus = prepare_corpus_once(cfg["data"])
    log.info(
        "data ready in %.1f s: %s train sequences of %d tokens",
        time.monotonic() - start,
        f"{len(corpus.train):,}",
        corpus.seq_len,
    )
    if cfg["prepare_only"]:
        log.info("prepare_only=true: corpus and tokenizer cached at %s; not training", corpus.cache_dir)
        return {"prepared": str(corpus.cache_dir), "stats": corpus.stats}
    trainer = (trainer_class or Pretrainer)(cfg, run_dir, budget, corpus, runtime)
    log.info("model %s: %s parameters", cfg["arch"]["name"], f"{trainer.num_params:,}")
    resumed = trainer.resume() if cfg["resume"] else False
    if not resumed and not cfg["train"]["start_clock_after_data"]:
        trainer.clock.charge(time.monotonic() - start)
    return trainer.run()
