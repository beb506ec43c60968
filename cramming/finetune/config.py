"""The fine-tuning options GLUE and ``cramming.finetune`` share: one typed dataclass, each field checked once.

    settings = FinetuneSettings.from_mapping(cfg)          # keys of conf/glue.yaml or conf/finetune.yaml
    settings = settings.with_lr_for(hidden_size=768)       # lr=auto resolved for the model's width

Defaults are GLUE-sane (crammedBERT): AdamW 4e-5, betas (0.9, 0.98), eps 1e-6, no weight decay, no
gradient clipping, batch 16, 5 epochs, cosine with 10% warm-up, dropout 0.1 (attention too). Every bad
value is a ValueError naming it and what is accepted. Where a job runs (device, precision, compile)
is the ``impl`` group's business (``cramming.runtime``), not a fine-tuning option.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace

from cramming.models import CLASSIFIER_HEADS

REFERENCE_LR, REFERENCE_WIDTH = 4e-5, 768


def resolve_lr(lr: float | str, hidden_size: int) -> float:
    """``lr=auto``: the GLUE-sane 4e-5 for 768-wide models, scaled by 768 / hidden_size for others.

    Adam's best learning rate grows as models get narrower (about 1/width, as in muP); at the
    protocol's own width this is exactly 4e-5, while a 128-wide model gets 2.4e-4 instead of a
    step size too small to move it within a few epochs.
    """
    if lr == "auto":
        return REFERENCE_LR * REFERENCE_WIDTH / int(hidden_size)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= 1:
        raise ValueError(f"lr={lr!r} must be a number in (0, 1] or 'auto' (4e-5 x 768 / hidden_size)")
    return float(lr)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(key: str, value: object, low: int, note: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{key}={value!r} must be an integer >= {low}{note}")
    return value


def _fraction(key: str, value: object) -> float:
    """Dropout rates and the warm-up share: a number in [0, 1)."""
    if not _number(value) or not 0 <= value < 1:
        raise ValueError(f"{key}={value!r} must be a number in [0, 1)")
    return value


def _lr(key: str, value: object) -> float | str:
    return value if value == "auto" else resolve_lr(value, REFERENCE_WIDTH)


def _epochs(key: str, value: object) -> float:
    if not _number(value) or value <= 0:
        raise ValueError(f"{key}={value!r} must be a number > 0 (fractions allowed, e.g. 0.5)")
    return value


def _max_length(key: str, value: object) -> int:
    _integer(key, value, 1)
    if value < 8:
        raise ValueError(f"{key}={value} is too short for [CLS] a [SEP] b [SEP] (needs >= 8)")
    return value


def _betas(key: str, value: object) -> tuple[float, float]:
    if isinstance(value, str) or len(value) != 2 or not all(_number(b) and 0 <= b < 1 for b in value):
        raise ValueError(f"betas={value!r} must be two numbers in [0, 1), e.g. [0.9, 0.98]")
    return float(value[0]), float(value[1])


def _at_least_zero(note: str) -> Callable[[str, object], float]:
    def check(key: str, value: object) -> float:
        if not _number(value) or value < 0:
            raise ValueError(f"{key}={value!r} must be a number >= 0{note}")
        return value

    return check


def _eps(key: str, value: object) -> float:
    if not _number(value) or value <= 0:
        raise ValueError(f"{key}={value!r} must be a number > 0")
    return value


def check_head(key: str, value: object) -> str:
    if value != "auto" and value not in CLASSIFIER_HEADS:
        raise ValueError(f"head={value!r} is not one of {['auto', *CLASSIFIER_HEADS]}")
    return value


def _seed(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"seed={value!r} must be an integer")
    return value


# One check per field: it raises a ValueError naming the bad value, or returns the value normalised.
CHECKS: dict[str, Callable[[str, object], object]] = {
    "lr": _lr,
    "batch_size": lambda k, v: _integer(k, v, 1),
    "eval_batch_size": lambda k, v: _integer(k, v, 1),
    "epochs": _epochs,
    "warmup_fraction": _fraction,
    "weight_decay": _at_least_zero(""),
    "betas": _betas,
    "eps": _eps,
    "grad_clip": _at_least_zero(" (0 = no clipping)"),
    "dropout": _fraction,
    "attention_dropout": _fraction,
    "head": check_head,
    "max_length": _max_length,
    "seed": _seed,
    "log_every": lambda k, v: _integer(k, v, 0, " (0 = only the last step)"),
}


@dataclass(frozen=True)
class FinetuneSettings:
    """What fine-tuning does, for GLUE and your own task alike (conf/glue.yaml documents each key)."""

    lr: float | str = REFERENCE_LR  # a number in (0, 1], or "auto" (resolve_lr)
    batch_size: int = 16
    eval_batch_size: int = 64
    epochs: float = 5
    warmup_fraction: float = 0.1  # cosine schedule with linear warm-up over this share of the steps
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float = 0.0  # max gradient norm; 0 = no clipping
    dropout: float = 0.1  # hidden and head dropout
    attention_dropout: float = 0.1
    head: str = "auto"  # auto | one of cramming.models.CLASSIFIER_HEADS
    max_length: int = 128  # tokens per example, [CLS] and [SEP] included
    seed: int = 0
    log_every: int = 100  # optimizer steps between progress lines (0 = only the last step)

    def __post_init__(self):
        for field in fields(self):
            object.__setattr__(self, field.name, CHECKS[field.name](field.name, getattr(self, field.name)))

    @classmethod
    def from_mapping(cls, settings: Mapping) -> FinetuneSettings:
        """The fine-tuning keys of a GLUE or finetune config (other keys are not looked at)."""
        return cls(**{f.name: settings[f.name] for f in fields(cls) if f.name in settings})

    def with_lr_for(self, hidden_size: int) -> FinetuneSettings:
        """A copy with ``lr=auto`` resolved for a model ``hidden_size`` wide (a number is kept)."""
        return replace(self, lr=resolve_lr(self.lr, hidden_size))
