"""The pretraining loop: MLM steps until the budget is spent, then validation and export.

The loop sees the model, the optimizer and batches; it never knows which kernels run
(``cramming.kernels.dispatch``) or how the corpus was prepared (``cramming.data``). What it trains comes from an
``Objective`` (cramming.train.objective): the MLM by default, a distilled student in cramming.distill.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from cramming import distributed
from cramming.budget import Budget, BudgetClock, accumulation_steps, schedule_factor
from cramming.heldout import PeriodicScorer
from cramming.kernels import dispatch
from cramming.models import count_parameters
from cramming.optim import build_optimizer
from cramming.perf import flops_per_token
from cramming.runtime import CompiledStep, Runtime, make_runtime, seed_everything
from cramming.tracking import Tracker
from cramming.train.batches import build_batches, build_collator
from cramming.train.checkpoint import CheckpointManager, Progress, identity
from cramming.train.evaluate import score_heldout, validate
from cramming.train.finish import finish, stop_early
from cramming.train.logbook import Logbook
from cramming.train.microbatch import recover_from_oom, resolve_microbatch
from cramming.train.objective import Objective, ObjectiveFactory, mlm_objective
from cramming.train.step import optimizer_step, to_device

log = logging.getLogger("cramming")


class Pretrainer:
    """One pretraining run: wires model, optimizer, data, clock, checkpoints and log, and runs the loop."""

    def __init__(self, cfg: Mapping, run_dir: Path, budget: Budget, corpus, runtime: Runtime,
                 objective: Objective | None = None):  # fmt: skip
        self.cfg, self.train_cfg, self.run_dir = cfg, cfg["train"], Path(run_dir)
        self.budget, self.corpus, self.runtime = budget, corpus, runtime
        seed_everything(int(cfg["seed"]))
        self.objective = objective or mlm_objective(cfg, corpus, runtime)
        self.model = self.objective.build_model().to(runtime.device)
        self.optimizer = build_optimizer(self.model, self.train_cfg, runtime.device)
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.dtype == torch.float16)
        wrapped = distributed.wrap_ddp(self.model, runtime.device)
        self.collator = build_collator(cfg["data"], corpus)
        self.microbatch = resolve_microbatch(self)  # microbatch_size=auto: measured now, before the clock
        global_micro = int(self.train_cfg["microbatch_size"]) * runtime.world_size
        most = max(accumulation_steps(p, global_micro, *self.ramp()) for p in (0.0, 1.0))  # the ramp's ends
        # impl.compile, eager fallback; reduce-overhead is refused when steps accumulate microbatches
        self.compiled = CompiledStep(wrapped, runtime, "pretraining step", max_microbatches=most)
        self.loader, self.mask_generator, self.batches = build_batches(cfg, corpus, self.collator, runtime)
        # the ETA of a step budget weighs the ramp (late steps run more microbatches)
        self.clock = BudgetClock(budget, ramp=(global_micro, *self.ramp()))
        self.progress = Progress()
        vocab = self.objective.vocab_size
        self.identity = identity(cfg["arch"], vocab, corpus.tokenizer.to_str()) | self.objective.identity
        self.tracker = Tracker(self.run_dir, cfg["wandb"], cfg, rank=runtime.rank, resume=bool(cfg["resume"]))
        self.checkpoints = CheckpointManager(
            self.run_dir, cfg, budget.text, runtime, self.identity, corpus.tokenizer.to_str(), self.model,
            self.optimizer, self.scaler, self.clock, self.batches, self.loader, self.mask_generator, self.progress,
        )  # fmt: skip
        self.num_params = count_parameters(self.model)
        flops = flops_per_token(cfg["arch"], self.num_params, corpus.seq_len,
                                float(cfg["data"]["mlm_probability"]), vocab)  # fmt: skip
        self.logbook = Logbook(self.train_cfg, budget.kind, self.tracker, runtime, self.batches,
                               flops + self.objective.extra_flops_per_token)  # fmt: skip
        self.heldout = PeriodicScorer(self.train_cfg.get("heldout"), cfg["data"], corpus.tokenizer)
        # Testing aid: poison the loss at these step numbers (once each), to exercise the non-finite path.
        self.nan_steps = {int(s) for s in self.train_cfg["debug_nan_steps"]}
        self.loop_start, self.loop_seconds = time.monotonic(), 0.0  # the data-wait fraction's denominator
        self.last_valid = time.monotonic()
        self.last = {
            "lr": float("nan"),
            "grad_norm": float("nan"),
            "batch": 0,
        }  # the last step's, for a log line

    def ramp(self) -> tuple[int, int, float]:
        t = self.train_cfg
        return int(t["batch_size_start"]), int(t["batch_size"]), float(t["batch_ramp_fraction"])

    def save_checkpoint(self) -> Path | None:
        return self.checkpoints.save(keep=int(self.train_cfg["keep_checkpoints"]))

    def resume(self) -> bool:
        return self.checkpoints.resume(self.tracker.path)

    def next_microbatch(self) -> dict[str, torch.Tensor]:
        """input_ids (B, T), masked_positions and labels (B, k): fixed shapes, as the compiled model wants."""
        return to_device(next(self.batches), self.runtime.device)  # read and masked ahead by a thread

    def control(self) -> tuple[float, bool, bool]:
        """(budget fraction, budget spent, timed checkpoint due): rank 0's view, shared with all ranks."""
        minutes = float(self.train_cfg["checkpoint_minutes"])
        due = minutes > 0 and time.monotonic() - self.checkpoints.last_save >= 60 * minutes
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
        return stop_early(self) if stopped_early else finish(self)

    def train_loop(self) -> bool:
        """Steps until the budget is spent; True when ``train.stop_after_steps`` ended it early."""
        t = self.train_cfg
        self.logbook.start()  # MFU's peak: measured before the clock starts
        self.model.train()
        self.clock.start()
        self.heldout.start(self.progress.tokens)  # a resumed run goes on from its next multiple
        self.loop_start = time.monotonic()  # the data-wait fraction's denominator starts with the clock
        self.logbook.new_window()
        self.checkpoints.last_save = self.last_valid = time.monotonic()
        every, stop_after = int(t["checkpoint_every_steps"]), int(t["stop_after_steps"])
        while True:
            p, done, checkpoint_due = self.control()
            if done:
                break
            if checkpoint_due:
                self.save_checkpoint()
            if not self.train_step(p):
                log.info("budget ran out inside step %d; its partial accumulation was dropped",
                         self.progress.step + 1)  # fmt: skip
                break
            if (
                every
                and self.progress.step % every == 0
                and self.checkpoints.saved_step != self.progress.step
            ):
                self.save_checkpoint()
            if self.progress.step == stop_after:  # ==: a resumed run passing the same override goes on
                return True
            self.maybe_validate()
        if self.progress.losses:
            self.write_log(self.clock.progress())
        return False

    def train_step(self, p: float) -> bool:
        """One optimizer step at budget fraction ``p``; False when the budget ran out inside it."""
        t, micro = self.train_cfg, int(self.train_cfg["microbatch_size"])
        # train.batch_size is the global batch: each of the ranks does 1/world_size of it.
        accum = accumulation_steps(p, micro * self.runtime.world_size, *self.ramp())
        lr = float(t["lr"]) * self.progress.lr_scale * schedule_factor(t, p)  # train.schedule, its fractions
        number = self.progress.step + 1
        inject = number in self.nan_steps
        self.nan_steps.discard(number)  # fires once, so a reload does not hit it again
        side: dict[str, float] = {}  # NSP accuracy etc. of this step (BERT/RoBERTa recipes, distillation)

        def one_step(model, next_microbatch):  # on `model`: compiled, or eager after a compile failure
            side.clear()
            return optimizer_step(model, self.optimizer, next_microbatch, accum, lr, float(t["grad_clip"]),
                                  self.runtime, stop=self.time_is_up, scaler=self.scaler, inject_nan=inject,
                                  extras=side)  # fmt: skip

        try:
            result = self.compiled.run(one_step, self.next_microbatch)
        except torch.OutOfMemoryError as err:  # fragmentation late in a run: microbatch=auto halves it once
            if not recover_from_oom(self, err):
                raise
            return True  # back at the last checkpoint with half the microbatch; the loop goes on
        if result is None:
            return False
        loss, grad_norm, finite = result  # Python floats: the step's one read of the device
        loss_finite = math.isfinite(loss)
        if loss_finite:
            self.progress.losses.append(loss)
            self.logbook.add_side_metrics(side)
        batch = accum * micro * self.runtime.world_size  # sequences this step actually used
        self.last = {"lr": lr, "grad_norm": grad_norm, "batch": batch}
        restored = self.after_step(batch * self.corpus.seq_len, finite, loss_finite)
        if not restored and self.logbook.due(self.progress.step):
            self.write_log(p)
        return True

    def write_log(self, p: float) -> None:
        last = self.last
        self.logbook.write(self.progress, self.clock, last["lr"], last["grad_norm"], last["batch"], p)

    def after_step(self, tokens: int, finite: bool, loss_finite: bool) -> bool:
        """Count the step; True when a streak of non-finite steps made it reload the last checkpoint."""
        prog, t = self.progress, self.train_cfg
        if finite:
            prog.nonfinite_streak = 0
        elif loss_finite and self.scaler.is_enabled():
            prog.skipped_steps += 1  # fp16 overflow: the scaler lowers its scale; not a divergence
        else:
            prog.skipped_steps += 1
            prog.nonfinite_streak += 1
            log.warning("step %d: non-finite loss or gradient, update skipped (%d so far)",
                        prog.step + 1, prog.skipped_steps)  # fmt: skip
        prog.step += 1
        prog.tokens += tokens
        self.clock.update(prog.step, prog.tokens)
        self.logbook.count(tokens)
        if prog.nonfinite_streak < int(t["max_nonfinite_steps"]):
            return False
        if t["on_nonfinite"] != "restore":
            raise FloatingPointError(
                f"{prog.nonfinite_streak} non-finite steps in a row at step {prog.step} "
                f"(train.on_nonfinite=stop); stopping so no NaN weights are saved. "
                f"Lower train.lr and resume from the last checkpoint."
            )
        self.checkpoints.restore_last_good(t)
        return True

    def maybe_validate(self) -> None:
        """Periodic validation; its time is not charged to the budget (nor to the log window's tok/s)."""
        minutes = float(self.train_cfg["validate_every_minutes"])
        started = time.monotonic()
        with self.clock.paused():
            if minutes > 0 and time.monotonic() - self.last_valid >= 60 * minutes:
                validate(self)
                self.last_valid = time.monotonic()
            if self.heldout.due(self.progress.tokens) and self.runtime.rank == 0:
                score_heldout(self)
        self.logbook.window["time"] += time.monotonic() - started


def prepare_corpus_once(data_cfg: Mapping):
    """Rank 0 prepares (or verifies) the cache first; the other ranks wait, then load it."""
    from cramming.data import prepare_corpus

    if distributed.rank() != 0:
        distributed.barrier()
    corpus = prepare_corpus(data_cfg, log=log.info)
    if distributed.rank() == 0:
        distributed.barrier()
    return corpus


def pretrain(cfg: Mapping, run_dir: Path, budget: Budget, objective: ObjectiveFactory | None = None) -> dict:
    """Prepare the data (the clock is not running yet), then train until the budget is spent.

    ``objective(cfg, corpus, runtime)``: what to train (default: the MLM; cramming.distill: a student).
    """
    runtime = make_runtime(cfg["impl"])
    log.info("device %s, precision %s, kernels %s, %d process(es)",
             runtime.device, runtime.dtype, dispatch.describe(runtime.device), runtime.world_size)  # fmt: skip
    start = time.monotonic()
    corpus = prepare_corpus_once(cfg["data"])
    log.info("data ready in %.1f s: %s train sequences of %d tokens",
             time.monotonic() - start, f"{len(corpus.train):,}", corpus.seq_len)  # fmt: skip
    if cfg["prepare_only"]:
        log.info("prepare_only=true: corpus and tokenizer cached at %s; not training", corpus.cache_dir)
        return {"prepared": str(corpus.cache_dir), "stats": corpus.stats}
    plan = (objective or mlm_objective)(cfg, corpus, runtime)  # a teacher loads here, before the seeding
    trainer = Pretrainer(cfg, run_dir, budget, corpus, runtime, plan)
    log.info("model %s: %s parameters", cfg["arch"]["name"], f"{trainer.num_params:,}")
    resumed = trainer.resume() if cfg["resume"] else False
    if not resumed and not cfg["train"]["start_clock_after_data"]:
        trainer.clock.charge(time.monotonic() - start)
    return trainer.run()
