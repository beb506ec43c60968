"""The value checks behind the schema: each dataclass in ``schema.py`` runs its group's check once.

Types are the schema's job (OmegaConf refuses ``arch.hidden_size=abc`` while composing); these
functions check ranges, choices and how keys combine, with one-paragraph errors that name the
value and what would be accepted. A check reads and raises; it never changes global state (the
kernel choice is set by ``runtime.make_runtime``, not here).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch

from cramming.budget import SCHEDULES, schedule_factor

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# default: Inductor's fused kernels; max-autotune-no-cudagraphs: also benchmarks matmul/Triton templates
# (longer compile, sometimes faster steps); reduce-overhead: CUDA graphs (less launch overhead; keeps
# static copies of inputs, so more memory; one microbatch per optimizer step only, see check_accumulation).
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead")
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


def check_arch(arch: Mapping) -> None:
    """``cfg.arch``: positive sizes, heads dividing the width, known switches."""
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
    head_dim = arch["hidden_size"] // arch["num_heads"]
    _require(
        arch["position_embedding"] != "rotary" or head_dim % 2 == 0,
        f"arch.position_embedding=rotary needs an even head dimension; hidden_size/num_heads = {head_dim}",
    )
    qk_norm = arch["qk_norm"]
    _require(isinstance(qk_norm, bool), f"arch.qk_norm={qk_norm!r} must be true or false")


def check_train(train: Mapping) -> None:
    """``cfg.train``: optimizer, schedule, LR and batch sizes, then the resilience keys."""
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
        train["batch_size"] >= train["batch_size_start"],
        f"train.batch_size={train['batch_size']} must be at least train.batch_size_start={train['batch_size_start']}",
    )
    _require(train["grad_clip"] >= 0, f"train.grad_clip={train['grad_clip']!r} must be >= 0 (0 = off)")
    _require(
        0.0 <= train["batch_ramp_fraction"] <= 1.0,
        f"train.batch_ramp_fraction={train['batch_ramp_fraction']!r} must lie in [0, 1]",
    )
    delay = train["debug_data_delay_s"]
    _require(
        _num("train.debug_data_delay_s", delay) >= 0,
        f"train.debug_data_delay_s={delay!r} must be >= 0 seconds (0 = off)",
    )
    check_train_resilience(train)


def check_train_resilience(train: Mapping) -> None:
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


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"impl.precision={precision!r} is not one of {list(PRECISIONS)}")
    return precision


def check_compile(compile: object, mode: object = "default") -> None:
    if not (isinstance(compile, bool) or compile == "auto"):
        raise ConfigError(f"impl.compile={compile!r} is not one of auto, true, false")
    if mode not in COMPILE_MODES:
        raise ConfigError(f"impl.compile_mode={mode!r} is not one of {list(COMPILE_MODES)}")


def check_threads(threads: object) -> int | None:
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(
            f"impl.threads={threads!r} must be a positive integer, or null (see conf/impl/default.yaml)"
        )
    return threads


def check_device(device: object) -> str:
    """``impl.device``: auto, cpu, cuda or cuda:N; a GPU that torch cannot see is refused here."""
    device = str(device)
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"impl.device={device!r} is not one of auto, cpu, cuda, cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"impl.device={device!r} asks for a GPU, but torch sees no CUDA device (use cpu or auto)"
        )
    return device


def check_workers(value: object) -> int:
    """``impl.dataloader_workers`` as an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"impl.dataloader_workers={value!r} must be a whole number >= 0 "
            "(0 = batches made in the training loop; N = one background thread keeps N batches ready)"
        )
    return value


def check_impl(impl: Mapping) -> None:
    """The impl group's values (device, precision, compile, threads, kernels, dataloader workers)."""
    from cramming.kernels import dispatch

    check_device(impl["device"])
    check_workers(impl["dataloader_workers"])
    check_precision(impl["precision"])
    check_compile(impl["compile"], impl["compile_mode"])
    check_threads(impl["threads"])
    try:
        choice = dispatch.check_kernels(impl)  # validates only: the runtime configures
    except ValueError as err:
        raise ConfigError(str(err)) from None
    forced = sorted(op for op, value in choice.items() if value == "triton")
    on_cpu = impl["device"] == "cpu" or not torch.cuda.is_available()
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    _require(
        not (forced and on_cpu and not interpreting),
        f"impl.kernels=triton (ops {forced}) needs a CUDA GPU; on CPU set TRITON_INTERPRET=1 to run the kernels "
        "in the Triton interpreter (slow, for tests), or use impl.kernels=auto|torch",
    )


def check_wandb(wandb: Mapping) -> None:
    mode = wandb["mode"]
    _require(mode in WANDB_MODES, f"wandb.mode={mode!r} is not one of {list(WANDB_MODES)}")


def check_run(cfg: Mapping) -> None:
    """The root keys of a pretraining run and the checks that span groups."""
    from cramming.budget import parse_budget

    parse_budget(cfg["budget"])
    name = str(cfg["name"])
    _require(
        bool(re.fullmatch(r"[\w.\-+=:,@]+", name)),
        f"name={name!r} is not a usable run name: use letters, digits and . _ - + = : , @ (no slashes or spaces)",
    )
    seq_len, arch = cfg["data"]["seq_len"], cfg["arch"]
    max_len = arch["max_position_embeddings"]
    _require(
        seq_len <= max_len,
        f"data.seq_len={seq_len} exceeds arch.max_position_embeddings={max_len} of arch={arch['name']!r}",
    )


# distill.*: the loss terms and their recipe (cramming/distill)
DISTILL_SOFT_TARGETS = ("masked", "all")
DISTILL_COSINE_LAYERS = ("last", "aligned")
DISTILL_RECIPES = ("crammed", "distilbert")


def check_distill_config(cfg: Mapping) -> None:
    """``cfg.distill``: non-negative weights (not all zero), a positive temperature, known modes."""
    weights = {k: cfg[k] for k in ("alpha_ce", "alpha_mlm", "alpha_cos")}
    for key, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"distill.{key}={value!r} must be a number >= 0")
    if not any(weights.values()):
        raise ConfigError("distill.alpha_ce, alpha_mlm and alpha_cos are all 0: nothing would be learned")
    t = cfg["temperature"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
        raise ConfigError(f"distill.temperature={t!r} must be a number > 0")
    if cfg["soft_targets"] not in DISTILL_SOFT_TARGETS:
        raise ConfigError(
            f"distill.soft_targets={cfg['soft_targets']!r} is not one of {list(DISTILL_SOFT_TARGETS)}"
        )
    if cfg.get("recipe", "crammed") not in DISTILL_RECIPES:
        raise ConfigError(f"distill.recipe={cfg['recipe']!r} is not one of {list(DISTILL_RECIPES)}")
    if cfg["cosine_layers"] not in DISTILL_COSINE_LAYERS:
        raise ConfigError(
            f"distill.cosine_layers={cfg['cosine_layers']!r} is not one of {list(DISTILL_COSINE_LAYERS)}"
        )
