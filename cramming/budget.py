"""The budget: parsing, the clock, and the schedules keyed to the fraction of budget used.

A budget is wall-clock time (``24h``), optimizer steps (``500steps``) or training
tokens (``2e9tokens``). Every schedule is a function of ``p``, the fraction used,
so a step or token budget drives the same schedules deterministically.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_DURATION = re.compile(rf"^(?:{_NUMBER}(s|sec|min|m|h|d))+$")
_PART = re.compile(rf"({_NUMBER})(s|sec|min|m|h|d)")
_COUNT = re.compile(rf"^({_NUMBER})\s*(steps|tokens)$")

ACCEPTED = (
    "a positive duration such as 24h, 90m, 1.5h, 45s or 1h30m, a bare number of hours such as 24, "
    "or a deterministic budget such as 500steps or 2e9tokens"
)


@dataclass(frozen=True)
class Budget:
    kind: str  # "time" (seconds) | "steps" | "tokens"
    amount: float
    text: str

    def describe(self) -> str:
        if self.kind == "time":
            return f"{self.text} ({self.amount:.0f} s of wall-clock time)"
        return f"{self.amount:.0f} {self.kind}"


def parse_budget(value: object) -> Budget:
    """Parse ``budget=``; raise ValueError naming the value and the accepted forms."""
    text = str(value).strip().lower().replace(" ", "")
    amount, kind = None, "time"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        amount = float(value) * 3600.0
    elif re.fullmatch(_NUMBER, text):
        amount = float(text) * 3600.0
    elif _DURATION.match(text):
        amount = sum(float(m.group(1)) * _UNITS[m.group(3)] for m in _PART.finditer(text))
    elif match := _COUNT.match(text):
        amount, kind = float(match.group(1)), match.group(3)
    if amount is None or not math.isfinite(amount) or amount <= 0:
        raise ValueError(f"budget={value!r} is not a valid budget: expected {ACCEPTED}.")
    if kind == "steps" and amount != int(amount):
        raise ValueError(
            f"budget={value!r}: a step budget must be a whole number of steps; accepted: {ACCEPTED}."
        )
    return Budget(kind, amount, str(value))


class BudgetClock:
    """Tracks how much of the budget is used. Time already spent (before a resume) counts."""

    def __init__(self, budget: Budget, spent_seconds: float = 0.0, ramp: tuple | None = None):
        self.budget = budget
        self.spent_before = spent_seconds
        # (microbatch, batch_size_start, batch_size, batch_ramp_fraction): a step budget's ETA weighs each
        # step by the microbatches it runs, so late steps of a ramp count for more than early ones.
        self.ramp = ramp
        self.started_at: float | None = None
        self.steps = 0
        self.tokens = 0

    def start(self) -> None:
        self.started_at = time.monotonic()

    def charge(self, seconds: float) -> None:
        """Count ``seconds`` spent outside the loop (data preparation with start_clock_after_data=false)."""
        self.spent_before += seconds

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside is not charged to the budget (periodic held-out evaluation)."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.spent_before -= time.monotonic() - start

    def elapsed(self) -> float:
        """Seconds of training so far, including those spent before a resume."""
        running = 0.0 if self.started_at is None else time.monotonic() - self.started_at
        return self.spent_before + running

    def update(self, steps: int, tokens: int) -> None:
        self.steps, self.tokens = steps, tokens

    def progress(self) -> float:
        """Fraction of the budget used, p (may exceed 1 by the last step's overshoot)."""
        used = {"time": self.elapsed(), "steps": self.steps, "tokens": self.tokens}[self.budget.kind]
        return used / self.budget.amount

    def exhausted(self) -> bool:
        return self.progress() >= 1.0

    def eta_seconds(self) -> float:
        """Seconds left, assuming each microbatch costs what the ones so far cost.

        Time and token budgets: work is proportional to the fraction used (a token costs the same in a
        big step as in a small one). Step budgets with a batch ramp: the steps left are larger than the
        steps done, so the fraction of *work* done is ``ramp_work(p) / ramp_work(1)``, not ``p``.
        """
        p = self.progress()
        if p <= 0:
            return float("nan")
        done = p
        if self.budget.kind == "steps" and self.ramp is not None:
            steps = int(self.budget.amount)
            done = ramp_work(min(p, 1.0), steps, *self.ramp) / ramp_work(1.0, steps, *self.ramp)
        return max(0.0, self.elapsed() * (1.0 - done) / done)

    def state_dict(self) -> dict:
        return {"elapsed": self.elapsed(), "steps": self.steps, "tokens": self.tokens}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's counts and the time it had spent (a resumed run)."""
        self.spent_before = float(state["elapsed"])
        self.steps, self.tokens = int(state["steps"]), int(state["tokens"])
        if self.started_at is not None:
            self.started_at = time.monotonic()

    def rewind(self, state: dict) -> None:
        """Go back to a checkpoint's step and token counts within a run (a reload after non-finite
        steps); the wall-clock time spent since is not given back."""
        elapsed = self.elapsed()
        self.load_state_dict(state)
        self.spent_before = elapsed


SCHEDULES = ("budget-triangle2", "budget-cosine", "budget-linear", "wsd", "constant")
DECAY_SHAPES = ("linear", "1-sqrt")


def cosine_with_warmup(p: float, warmup_fraction: float) -> float:
    """Linear warm-up from 0 to 1 over the first ``warmup_fraction``, then cosine decay to 0 at p=1.

    Pretraining's ``budget-cosine`` (p = budget fraction) and fine-tuning (p = step / total steps).
    """
    p = min(max(p, 0.0), 1.0)
    if p < warmup_fraction:
        return p / warmup_fraction
    progress = (p - warmup_fraction) / max(1e-12, 1.0 - warmup_fraction)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_stable_decay(p: float, warmup_fraction: float, decay_fraction: float, shape: str) -> float:
    """The trapezoid: linear warm-up from 0 over ``warmup_fraction``, the peak, then a cool-down to 0
    over the last ``decay_fraction`` of the budget, ``linear`` (1 - q) or ``1-sqrt`` (1 - sqrt(q)),
    q the fraction of the cool-down done (Hägele et al. 2024 found 1-sqrt the better cool-down)."""
    p = min(max(p, 0.0), 1.0)
    if p < warmup_fraction:
        return p / warmup_fraction
    q = (p - (1.0 - decay_fraction)) / decay_fraction
    if q <= 0.0:
        return 1.0
    return max(0.0, 1.0 - q) if shape == "linear" else max(0.0, 1.0 - math.sqrt(min(q, 1.0)))


def lr_factor(
    schedule: str,
    p: float,
    warmup_fraction: float = 0.1,
    decay_fraction: float = 0.2,
    decay_shape: str = "linear",
) -> float:
    """Multiplier of the peak learning rate at budget fraction ``p``."""
    p = min(max(p, 0.0), 1.0)
    if schedule == "budget-triangle2":
        # 0.25·peak at p=0, rising to peak at p=0.75, then falling to 0 at p=1.
        return max(0.0, min(0.25 + p, 4.0 - 4.0 * p))
    if schedule == "budget-cosine":
        return cosine_with_warmup(p, warmup_fraction)
    if schedule == "budget-linear":
        # BERT / RoBERTa: linear warm-up to peak over warmup_fraction, then linear decay to 0 at p=1.
        if p < warmup_fraction:
            return p / warmup_fraction
        return max(0.0, (1.0 - p) / max(1e-12, 1.0 - warmup_fraction))
    if schedule == "wsd":
        check_wsd(warmup_fraction, decay_fraction, decay_shape)
        return warmup_stable_decay(p, warmup_fraction, decay_fraction, decay_shape)
    if schedule == "constant":
        return 1.0
    raise ValueError(f"train.schedule={schedule!r} is not one of {list(SCHEDULES)}")


def check_wsd(warmup_fraction: float, decay_fraction: float, decay_shape: str) -> None:
    """A ValueError naming a ``wsd`` setting that leaves no trapezoid."""
    if decay_shape not in DECAY_SHAPES:
        raise ValueError(f"train.decay_shape={decay_shape!r} is not one of {list(DECAY_SHAPES)}")
    if not 0.0 < decay_fraction <= 1.0:
        raise ValueError(f"train.decay_fraction={decay_fraction!r} must lie in (0, 1]")
    if not 0.0 <= warmup_fraction <= 1.0 - decay_fraction:
        raise ValueError(
            f"train.warmup_fraction={warmup_fraction!r} must lie in [0, 1 - train.decay_fraction] = "
            f"[0, {1.0 - decay_fraction:g}] for train.schedule=wsd (warm-up and cool-down may not overlap)"
        )


def schedule_factor(train: Mapping, p: float) -> float:
    """``lr_factor`` for ``cfg.train``'s schedule keys (schedule, warmup_fraction, decay_fraction,
    decay_shape) at budget fraction ``p``."""
    return lr_factor(
        train["schedule"],
        p,
        float(train["warmup_fraction"]),
        float(train.get("decay_fraction", 0.2)),
        str(train.get("decay_shape", "linear")),
    )


def batch_size_at(p: float, start: int, final: int, ramp_fraction: float) -> int:
    """Sequences per optimizer step: linear from ``start`` to ``final`` at ``ramp_fraction`` of the budget."""
    if ramp_fraction <= 0:
        return final
    fraction = min(max(p, 0.0) / ramp_fraction, 1.0)
    return int(start + (final - start) * fraction)


def accumulation_steps(p: float, microbatch: int, start: int, final: int, ramp_fraction: float) -> int:
    """Microbatches per optimizer step for the ramped batch size (at least one)."""
    return max(1, round(batch_size_at(p, start, final, ramp_fraction) / microbatch))


def ramp_work(p: float, steps: int, microbatch: int, start: int, final: int, ramp_fraction: float) -> float:
    """Microbatches run by the first ``p`` of a ``steps``-step budget under the batch ramp.

    Step i runs ``accumulation_steps(i / steps, ...)`` microbatches (as the loop does); for long budgets
    the sum is taken over at most 2000 evenly spaced steps, each standing for its share of the run.
    """
    points = max(1, min(steps, 2000))
    position = p * points
    whole = int(position)
    per_step = [
        accumulation_steps(i / points, microbatch, start, final, ramp_fraction) for i in range(points)
    ]
    work = float(sum(per_step[:whole]))
    if whole < points:
        work += (position - whole) * per_step[whole]  # the part of the current step (long budgets)
    return work
