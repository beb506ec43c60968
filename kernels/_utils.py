"""Helpers shared by the Triton kernels: interpreter detection, op registration, input checks.

Two ways to run a kernel:

- on a CUDA device: ops are ``torch.library.triton_op`` with ``wrap_triton`` launches, so
  ``torch.compile`` sees the Triton kernels themselves;
- in the Triton interpreter (``TRITON_INTERPRET=1``, CPU tests): ``wrap_triton`` cannot
  trace an interpreted kernel (it is not a ``JITFunction``) and Inductor would try to read
  fake tensors' data, so ops are opaque ``torch.library.custom_op`` with a fake (meta)
  implementation instead. The op bodies are identical; only the registration differs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
import triton
import triton.language as tl

# Read once, like triton itself (which reads it when @triton.jit decorates).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Autotuned kernels autotune (GPU only); False launches each kernel's first listed tile. Read once, not
# at each launch: the launchers run inside torch.compile's trace. CRAMMING_AUTOTUNE=0 keeps short GPU
# test runs from compiling every config for every shape; the dispatch's self-check turns it off for its
# tiny probes, which must not fill the autotune cache for the real shapes.
AUTOTUNE = os.environ.get("CRAMMING_AUTOTUNE", "1") != "0"

# The interpreter truncates fp32 -> bf16 on store (the GPU rounds to nearest even); `store`
# rounds first there so interpreter results are the GPU's. A constexpr: free on the GPU.
_ROUND_BF16_STORES = tl.constexpr(INTERPRET)

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LIBRARY = "cramming"


def define_op(name: str, fake: Callable) -> Callable:
    """Decorator: register ``fn`` as the op ``cramming::<name>`` (see the module docstring)."""

    def register(fn: Callable):
        qualname = f"{LIBRARY}::{name}"
        if INTERPRET:
            op = torch.library.custom_op(qualname, mutates_args=())(fn)
            op.register_fake(fake)
            return op
        return torch.library.triton_op(qualname, mutates_args=())(fn)

    return register


@triton.jit
def store(ptr, value, mask):
    """``tl.store(ptr, value.to(<ptr's dtype>), mask)`` with round-to-nearest-even everywhere."""
    if _ROUND_BF16_STORES and ptr.dtype.element_ty == tl.bfloat16:
        bits = value.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        value = bits.to(tl.float32, bitcast=True)
    tl.store(ptr, value.to(ptr.dtype.element_ty), mask=mask)


def launch(kernel):
    """The kernel as launched inside an op body: traceable on GPU, plain in the interpreter."""
    return kernel if INTERPRET else torch.library.wrap_triton(kernel)


@functools.lru_cache(maxsize=8)
def num_sms(device_index: int | None) -> int:
    if INTERPRET or not torch.cuda.is_available():
        return 4
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def row_groups(m: int, device: torch.device) -> tuple[int, int]:
    """Split m rows into contiguous groups for kernels that reduce over rows (dW, dB): about 8
    groups per SM (several waves, so a partly filled last wave costs little), each a multiple
    of 16 rows. Returns (rows_per_program, programs)."""
    per_program = triton.cdiv(triton.cdiv(m, 8 * num_sms(device.index)), 16) * 16
    per_program = max(per_program, 16)
    return per_program, max(1, triton.cdiv(m, per_program))


def check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} has dtype {t.dtype}; expected one of {[str(d) for d in FLOAT_DTYPES]}")


def check_device(name: str, t: torch.Tensor, like: torch.Tensor | None = None) -> None:
    """Triton runs on CUDA tensors, or on CPU tensors only through the interpreter."""
    if like is not None and t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but the input is on {like.device}")
    if t.device.type == "cpu" and not INTERPRET:
        raise ValueError(
            f"{name} is a CPU tensor: the Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 set "
            "before cramming.kernels is imported; use the *_ref functions (or cramming.kernels.dispatch) instead"
        )


def check_vector(name: str, t: torch.Tensor, n: int, x: torch.Tensor) -> None:
    """A per-feature parameter (weight, bias) of shape (n,) on the input's device."""
    if t.shape != (n,):
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected ({n},) to match the last dim of x")
    check_float(name, t)
    check_device(name, t, like=x)


def check_contiguous(name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(
            f"{name} with shape {tuple(t.shape)} and strides {t.stride()} is not contiguous; "
            "the public functions call .contiguous() first, the raw ops require it"
        )


def check_approximate(approximate: str) -> None:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate={approximate!r} is not supported; expected 'none' or 'tanh'")


def rows(x: torch.Tensor) -> torch.Tensor:
    """Flatten all leading dims: (..., N) -> (M, N), contiguous."""
    return x.contiguous().view(-1, x.shape[-1])  # (M, N)
