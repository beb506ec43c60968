"""Checks on the composed config, run before any long work starts.

Hydra composes ``conf/``; this module turns bad values into one-paragraph errors
that name the value and what would be accepted, and resolves ``auto`` choices.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch

from cramming.budget import SCHEDULES, Budget, parse_budget, schedule_factor

ARCH_KEYS = (
    "hidden_size",
    "num_layers",
    "num_heads",
    "intermediate_size",
    "ffn",
    "norm_position",
    "norm_eps",
    "position_embedding",
    "max_position_embeddings",
)
WANDB_MODES = ("disabled", "offline", "online")


class ConfigError(ValueError):
    """A config value that cannot work; the message names it and what is accepted."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _num(name: str, value: object, kind: type = float) -> float:
    """``value`` as a number, or a ConfigError naming the key (``float('abc')`` alone would not)."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value)
        if kind is int and number != float(value):
            raise ValueError
        return number
    except (TypeError, ValueError):
        expected = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name}={value!r} is not {expected}") from None


def validate_arch(arch: Mapping) -> None:
    missing = [key for key in ARCH_KEYS if key not in arch]
    _require(not missing, f"arch config {arch.get('name')!r} lacks keys {missing}")
    for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"):
        _require(
            _num(f"arch.{key}", arch[key], int) > 0, f"arch.{key}={arch[key]!r} must be a positive integer"
        )
    _require(
        arch["hidden_size"] % arch["num_heads"] == 0,
        f"arch.hidden_size={arch['hidden_size']} must be divisible by arch.num_heads={arch['num_heads']}",
    )
    _require(arch["ffn"] in ("glu", "gelu"), f"arch.ffn={arch['ffn']!r} is not one of ['glu', 'gelu']")
    _require(
        arch["norm_position"] in ("pre", "post"),
        f"arch.norm_position={arch['norm_position']!r} is not one of ['pre', 'post']",
    )
    positions = ("scaled-sinusoidal", "learned", "rotary")
    _require(
        arch["position_embedding"] in positions,
        f"arch.position_embedding={arch['position_embedding']!r} is not one of {list(positions)}",
    )
    head_dim = int(arch["hidden_size"]) // int(arch["num_heads"])
    _require(
        arch["position_embedding"] != "rotary" or head_dim % 2 == 0,
        f"arch.position_embedding=rotary needs an even head dimension; hidden_size/num_heads = {head_dim}",
    )
    qk_norm = arch.get("qk_norm", False)
    _require(isinstance(qk_norm, bool), f"arch.qk_norm={qk_norm!r} must be true or false")


def validate_train(train: Mapping) -> None:
    from cramming.optim import check_optimizer

    try:
        check_optimizer(train)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _require(
        train["schedule"] in SCHEDULES,
        f"train.schedule={train['schedule']!r} is not one of {list(SCHEDULES)}",
    )
    _require(_num("train.lr", train["lr"]) > 0, f"train.lr={train['lr']!r} must be positive")
    if train["schedule"] == "wsd":
        try:
            schedule_factor(train, 0.0)  # checks the warm-up and cool-down fractions and the shape
        except (TypeError, ValueError) as err:
            raise ConfigError(str(err)) from None
    for key in ("batch_size", "batch_size_start") if train["microbatch_size"] == "auto" else (
        "microbatch_size", "batch_size", "batch_size_start"):  # fmt: skip
        _require(
            _num(f"train.{key}", train[key], int) >= 1,
            f"train.{key}={train[key]!r} must be a positive integer",
        )
    for key in ("grad_clip", "batch_ramp_fraction", "validate_every_minutes", "weight_decay"):
        _num(f"train.{key}", train[key])
    _require(
        int(train["batch_size"]) >= int(train["batch_size_start"]),
        f"train.batch_size={train['batch_size']} must be at least train.batch_size_start={train['batch_size_start']}",
    )
    _require(float(train["grad_clip"]) >= 0, f"train.grad_clip={train['grad_clip']!r} must be >= 0 (0 = off)")
    _require(
        0.0 <= float(train["batch_ramp_fraction"]) <= 1.0,
        f"train.batch_ramp_fraction={train['batch_ramp_fraction']!r} must lie in [0, 1]",
    )
    delay = train["debug_data_delay_s"]
    _require(
        _num("train.debug_data_delay_s", delay) >= 0,
        f"train.debug_data_delay_s={delay!r} must be >= 0 seconds (0 = off)",
    )
    validate_train_resilience(train)


def validate_train_resilience(train: Mapping) -> None:
    """The checkpoint and non-finite keys of ``cfg.train``."""
    on_nonfinite = train["on_nonfinite"]
    _require(
        on_nonfinite in ("restore", "stop"),
        f"train.on_nonfinite={on_nonfinite!r} is not one of ['restore', 'stop']",
    )
    factor = _num("train.nonfinite_lr_factor", train["nonfinite_lr_factor"])
    _require(0.0 < factor <= 1.0, f"train.nonfinite_lr_factor={factor!r} must lie in (0, 1]")
    for key, low in [
        ("keep_checkpoints", 1),
        ("max_nonfinite_steps", 1),
        ("checkpoint_every_steps", 0),
        ("max_nonfinite_restores", 0),
        ("stop_after_steps", 0),
    ]:
        value = train[key]
        _require(
            not isinstance(value, bool) and isinstance(value, (int, float)) and int(value) == value >= low,
            f"train.{key}={value!r} must be a whole number >= {low}",
        )
    minutes = train["checkpoint_minutes"]
    _require(
        _num("train.checkpoint_minutes", minutes) >= 0,
        f"train.checkpoint_minutes={minutes!r} must be >= 0 (0 = off)",
    )


def validate_impl(impl: Mapping) -> None:
    """The impl group's values (device, precision, threads, kernels, dataloader workers)."""
    from cramming import runtime
    from cramming.data.prefetch import check_workers
    from cramming.kernels import dispatch

    try:
        check_workers(runtime.resolve_impl(impl)["dataloader_workers"])
        choices = dispatch.check_kernels(impl)  # validates only: the runtime configures
    except ValueError as err:
        raise ConfigError(str(err)) from None
    on_cpu = impl["device"] == "cpu" or not torch.cuda.is_available()
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    forced = sorted(op for op, choice in choices.items() if choice == "triton")
    _require(
        not (forced and on_cpu and not interpreting),
        f"impl.kernels=triton (ops {forced}) needs a CUDA GPU; on CPU set TRITON_INTERPRET=1 to run the kernels "
        "in the Triton interpreter (slow, for tests), or use impl.kernels=auto|torch",
    )


def validate_run(cfg: Mapping) -> Budget:
    """Check the whole pretraining config (data files included); returns the parsed budget."""
    budget = parse_budget(cfg["budget"])
    name = str(cfg["name"])
    _require(
        bool(re.fullmatch(r"[\w.\-+=:,@]+", name)),
        f"name={name!r} is not a usable run name: use letters, digits and . _ - + = : , @ (no slashes or spaces)",
    )
    validate_arch(cfg["arch"])
    validate_train(cfg["train"])
    validate_impl(cfg["impl"])
    mode = cfg["wandb"]["mode"]
    _require(mode in WANDB_MODES, f"wandb.mode={mode!r} is not one of {list(WANDB_MODES)}")
    seq_len = _num("data.seq_len", cfg["data"]["seq_len"], int)
    max_len = _num("arch.max_position_embeddings", cfg["arch"]["max_position_embeddings"], int)
    _require(
        seq_len <= max_len,
        f"data.seq_len={seq_len} exceeds arch.max_position_embeddings={max_len} of arch={cfg['arch']['name']!r}",
    )
    from cramming.data import validate_data_config

    validate_data_config(cfg["data"])
    return budget
