"""The fine-tuning options GLUE and ``cramming.finetune`` share: one typed dataclass, each field checked once.

    settings = FinetuneSettings.from_mapping(cfg)          # keys of conf/glue.yaml or conf/finetune.yaml
    settings = settings.with_lr_for(hidden_size=768)       # lr=auto resolved for the model's width

Defaults are conf/glue.yaml's (GLUE-sane, crammedBERT; that file documents each key), read once by
``yaml_defaults``: the YAML is their one source, so a key left out here takes the value the GLUE command
would. Every bad value is a ValueError naming it and what is accepted. Where a job runs (device,
precision, compile) is the ``impl`` group's business (``cramming.runtime``), not a fine-tuning option.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from cramming.conf import read_yaml
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


@functools.cache
def yaml_defaults() -> dict[str, Any]:
    """conf/glue.yaml's values of the fine-tuning keys (CHECKS), read once: their defaults' one source."""
    values = read_yaml("glue.yaml")
    missing = sorted(set(CHECKS) - set(values))
    if missing:
        raise KeyError(
            f"conf/glue.yaml lacks the fine-tuning key(s) {missing}; it sets the defaults of {list(CHECKS)}"
        )
    return {key: values[key] for key in CHECKS}


def _from_yaml(key: str) -> Any:
    """A field whose default is conf/glue.yaml's ``key`` (read on first use, not on import)."""
    return field(default_factory=lambda: yaml_defaults()[key])


@dataclass(frozen=True)
class FinetuneSettings:
    """What fine-tuning does, for GLUE and your own task alike (conf/glue.yaml documents each key and holds
    its default)."""

    lr: float | str = _from_yaml("lr")  # a number in (0, 1], or "auto" (resolve_lr)
    batch_size: int = _from_yaml("batch_size")
    eval_batch_size: int = _from_yaml("eval_batch_size")
    epochs: float = _from_yaml("epochs")
    warmup_fraction: float = _from_yaml("warmup_fraction")  # cosine schedule, linear warm-up over this share
    weight_decay: float = _from_yaml("weight_decay")
    betas: tuple[float, float] = _from_yaml("betas")
    eps: float = _from_yaml("eps")
    grad_clip: float = _from_yaml("grad_clip")  # max gradient norm; 0 = no clipping
    dropout: float = _from_yaml("dropout")  # hidden and head dropout
    attention_dropout: float = _from_yaml("attention_dropout")
    head: str = _from_yaml("head")  # auto | one of cramming.models.CLASSIFIER_HEADS
    max_length: int = _from_yaml("max_length")  # tokens per example, [CLS] and [SEP] included
    seed: int = _from_yaml("seed")
    log_every: int = _from_yaml("log_every")  # optimizer steps between progress lines (0 = last step only)

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, CHECKS[f.name](f.name, getattr(self, f.name)))

    @classmethod
    def from_mapping(cls, settings: Mapping) -> FinetuneSettings:
        """The fine-tuning keys of a GLUE or finetune config (other keys are not looked at; missing ones take
        conf/glue.yaml's values)."""
        return cls(**{f.name: settings[f.name] for f in fields(cls) if f.name in settings})

    def with_lr_for(self, hidden_size: int) -> FinetuneSettings:
        """A copy with ``lr=auto`` resolved for a model ``hidden_size`` wide (a number is kept)."""
        return replace(self, lr=resolve_lr(self.lr, hidden_size))
