"""Where and how a job runs: the ``impl`` config group turned into one ``Runtime``.

Every entry point builds its runtime here with ``make_runtime(cfg.impl)``: pretraining
(``python -m cramming``), GLUE (``cramming.glue``), ``cramming.finetune`` and
``cramming.predict``. So ``impl.device``, ``impl.precision``, ``impl.threads`` and
``impl.kernels`` mean the same everywhere, and the GPU kernel self-check (a failing
Triton kernel falls back to PyTorch) guards every one of them. ``impl.compile`` (``auto``: on for
CUDA, off for CPU) and ``impl.compile_mode`` choose ``torch.compile`` for the training step;
``CompiledStep`` runs it, falling back to eager once if compiling fails.

    runtime = make_runtime({"device": "auto", "precision": "auto", "threads": None})
    with runtime.autocast():
        loss = model(inputs.to(runtime.device), labels.to(runtime.device))["loss"]
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from cramming import distributed
from cramming.conf import read_yaml
from cramming.config import check_group
from cramming.config.checks import check_device, check_precision, check_threads
from cramming.kernels import dispatch

log = logging.getLogger("cramming")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Runtime:
    """The resolved ``impl`` group, and who this process is under torchrun."""

    device: torch.device
    dtype: torch.dtype
    rank: int = 0
    world_size: int = 1
    threads: int = 1  # torch's CPU threads (impl.threads resolved)
    compile: bool = False  # impl.compile resolved for this device
    compile_mode: str = "default"

    @property
    def precision(self) -> str:
        return next(name for name, dtype in DTYPES.items() if dtype == self.dtype)

    def autocast(self):
        """Mixed precision for the forward pass; fp32 runs without autocast."""
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def memory_gb(self) -> float:
        """Peak memory: allocated GPU memory, or the process's peak RSS on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB

    def hardware_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def impl_defaults() -> dict:
    """conf/impl/default.yaml: the defaults of the impl group (Python callers may pass only a few keys)."""
    return read_yaml("impl", "default.yaml")


def resolve_impl(impl: Mapping | None) -> dict:
    """``impl`` overlaid on the YAML defaults and checked by the schema (``ImplConfig``); an unknown key
    is a ValueError naming the known ones."""
    merged = impl_defaults()
    merged.update(dict(impl or {}))
    check_group("impl", merged)
    return merged


def resolve_compile(compile: bool | str, device: torch.device) -> bool:
    """``auto``: compile where it pays, on CUDA GPUs Triton supports (compute capability 7.0+); on CPU
    compiling the step costs minutes and gains little. ``true``/``false`` are honoured anywhere."""
    if compile == "auto":
        return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (7, 0)
    return bool(compile)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda`` (or ``cuda:N``) without a GPU is an error."""
    if isinstance(device, torch.device):
        return device
    device = check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 autocast on GPUs that support it (fp16 on older ones), fp32 on CPU, where bf16
    matmuls are far slower. Explicit bf16/fp16/fp32 are honoured on any device."""
    if check_precision(precision) == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return DTYPES[precision]


def set_threads(threads: int | None) -> int:
    """Set torch's CPU threads from ``impl.threads``; returns the number set.

    ``null`` means ``OMP_NUM_THREADS`` when the user set it, else every core this process may
    run on (its CPU affinity, which honours taskset and container CPU sets). Not the load
    average: it counts this very process (GLUE right after pretraining would get one thread)
    and changes from run to run. On a machine shared with other jobs pass ``impl.threads=N``;
    idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY``, see cramming/__init__.py),
    so oversubscribed cores cost little.
    """
    n = check_threads(threads)
    if n is None:
        from_env = os.environ.get("OMP_NUM_THREADS", "")
        if from_env.isdigit() and int(from_env) > 0:
            n = int(from_env)
        elif hasattr(os, "sched_getaffinity"):
            n = len(os.sched_getaffinity(0))
        else:
            n = os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def make_runtime(impl: Mapping | None) -> Runtime:
    """Threads, device (this rank's GPU under torchrun), kernels and precision from ``impl``.

    On a GPU each Triton op is checked once against its PyTorch reference first: with ``auto`` a kernel
    that fails here falls back to PyTorch instead of killing a long run later; with ``triton`` it is an
    error. fp32 matmuls may use TF32 there (``allow_tf32``).
    """
    impl = resolve_impl(impl)
    threads = set_threads(impl["threads"])
    device = distributed.local_device(resolve_device(impl["device"]))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    compile = resolve_compile(impl["compile"], device)
    dtype = resolve_precision(impl["precision"], device)
    if device.type == "cuda":
        allow_tf32()
    # once per process: auto leaves LayerNorm/GELU to Inductor under compile; the GPU self-check runs here
    dispatch.configure(impl, compiled=compile, device=device, dtype=dtype)
    rank, world = distributed.rank(), distributed.world_size()
    return Runtime(device, dtype, rank, world, threads, compile, impl["compile_mode"])


def seed_everything(seed: int) -> None:
    """The one place that seeds the global RNGs (Python, NumPy, torch on every device).

    Jobs that need a private stream (masking, batch order) build their own generator from the
    same seed instead, so extra draws elsewhere cannot shift them.
    """
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def allow_tf32() -> None:
    """fp32 matmuls (the fp32 parts outside autocast: optimizer-side math, fp32 runs, evaluation heads)
    on TF32 tensor cores, 10 mantissa bits instead of 23, as Inductor and most training code assume.
    CUDA only: on CPU the setting would pick bf16 matmul paths."""
    torch.set_float32_matmul_precision("high")


def check_accumulation(runtime: Runtime, max_microbatches: int) -> None:
    """``impl.compile_mode=reduce-overhead`` (CUDA graphs) cannot accumulate gradients over microbatches:
    the first backward's gradients live in the graph's memory pool and the next replay overwrites them.
    ``max_microbatches``: the most microbatches any optimizer step of the run will take (batch ramp
    included), so a ramp that reaches 2 only hours in is refused at the start."""
    if runtime.compile and runtime.compile_mode == "reduce-overhead" and max_microbatches > 1:
        raise ValueError(
            f"impl.compile_mode=reduce-overhead cannot accumulate gradients, but this run's optimizer steps "
            f"take up to {max_microbatches} microbatches (train.batch_size / train.microbatch_size, batch "
            "ramp included): CUDA graph replays overwrite the gradients of the earlier microbatches. Use "
            "impl.compile_mode=default or max-autotune-no-cudagraphs, or make train.microbatch_size equal "
            "to the largest batch size"
        )


class CompiledStep:
    """The module a training loop calls: ``torch.compile``d when ``runtime.compile``, else as given.

    torch.compile is lazy: the forward compiles at the first call and the backward at the first
    backward, hours of budget later than a config check could see. So the first step runs under a
    guard: if it raises, one warning, the eager module from then on, and the step is redone on the
    same batches (gradients of the failed try dropped). A run never dies of a compiler problem.
    The first compiled step's time (compilation included, counted against the budget) is logged once.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        runtime: Runtime,
        what: str = "training step",
        max_microbatches: int = 1,
    ):
        check_accumulation(runtime, max_microbatches)
        self.eager, self.what = module, what
        # dynamic=False: one specialised graph per shape; pretraining has one, fine-tuning a few buckets
        self.module = (
            torch.compile(module, mode=runtime.compile_mode, dynamic=False) if runtime.compile else module
        )
        self.pending = runtime.compile  # the first compiled step is still to come
        self.compile_seconds: float | None = None
        self.fell_back = False

    def run(self, step: Callable, next_batch: Callable):
        """``step(module, next_batch)``: one optimizer step (forward, backward, update) on ``module``."""
        if not self.pending:
            return step(self.module, next_batch)
        self.pending = False
        seen: list = []

        def recording():
            seen.append(next_batch())
            return seen[-1]

        start = time.monotonic()
        try:
            result = step(self.module, recording)
        except Exception as err:  # any compiler failure: Dynamo, Inductor, Triton, a missing C compiler
            return self._eager_retry(step, next_batch, seen, err)
        self.compile_seconds = time.monotonic() - start
        log.info("compiled the %s in %.1f s (first step included; counted against the budget)",
                 self.what, self.compile_seconds)  # fmt: skip
        return result

    def _eager_retry(self, step: Callable, next_batch: Callable, seen: list, err: Exception):
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        log.warning("torch.compile failed at the first %s (%s: %s); running eager instead",
                    self.what, type(err).__name__, first_line)  # fmt: skip
        self.module, self.fell_back = self.eager, True
        for p in self.eager.parameters():
            p.grad = None

        def replaying():  # the batches the failed try drew, then new ones
            return seen.pop(0) if seen else next_batch()

        return step(self.eager, replaying)
