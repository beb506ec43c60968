"""GELU, bias-GELU and GeGLU in Triton, forward and backward, fp32 math on any float input.

    gelu(x) = x * cdf(x),   gelu'(x) = cdf(x) + x * cdf'(x)
    exact: cdf = (1 + erf(x / sqrt 2)) / 2,           cdf' = exp(-x^2 / 2) / sqrt(2 pi)
    tanh:  cdf = (1 + tanh(u)) / 2 = sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3),
           cdf' = 2 sigmoid(2u) (1 - sigmoid(2u)) * sqrt(2/pi) (1 + 3 * 0.044715 x^2)

GELU is a flat element-wise kernel. Bias-GELU and GeGLU work on (rows, columns) tiles so
each row's columns stay contiguous (vector loads) and the bias is loaded once per tile;
the bias gradient is summed per program over a group of rows, then over programs.
"""

import torch
import triton
import triton.language as tl
from torch import nn

from ._utils import (
    INTERPRET,
    check_approximate,
    check_contiguous,
    check_device,
    check_float,
    check_vector,
    define_op,
    launch,
    row_groups,
    rows,
    store,
)

# Globals used inside @triton.jit code must be constexpr (the compiler refuses plain floats;
# the interpreter would not notice). Keep them right of tensors: in the interpreter,
# constexpr * tensor wraps the tensor in a constexpr and breaks the next op.
SQRT_1_2 = tl.constexpr(0.7071067811865476)  # 1/sqrt(2)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)  # 1/sqrt(2*pi)
SQRT_2_PI = tl.constexpr(0.7978845608028654)  # sqrt(2/pi)
TANH_C = tl.constexpr(0.044715)


@triton.jit
def _sigmoid_parts(z):
    """(sigmoid(z), sigmoid(z) * (1 - sigmoid(z))) without overflow or cancellation:
    with e = exp(-|z|) <= 1 both are ratios of positive terms."""
    e = tl.exp(-tl.abs(z))
    inv = 1.0 / (1.0 + e)
    return tl.where(z >= 0, inv, e * inv), e * inv * inv


@triton.jit
def _cdf(x, TANH: tl.constexpr):
    """gelu(x) = x * _cdf(x). For tanh, (1 + tanh(u)) / 2 = sigmoid(2u)."""
    if TANH:
        cdf, _ = _sigmoid_parts((x + x * x * x * TANH_C) * (2.0 * SQRT_2_PI))
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(x * SQRT_1_2))
    return cdf


@triton.jit
def _cdf_and_grad(x, TANH: tl.constexpr):
    """(cdf(x), gelu'(x))."""
    if TANH:
        cdf, s1s = _sigmoid_parts((x + x * x * x * TANH_C) * (2.0 * SQRT_2_PI))
        # s1s underflows to 0 for |x| > ~10; capping x^2 keeps 0 * inf (NaN) out of the tails
        dcdf = s1s * (1.0 + tl.minimum(x * x, 400.0) * (3.0 * TANH_C)) * (2.0 * SQRT_2_PI)
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(x * SQRT_1_2))
        dcdf = tl.exp(-0.5 * x * x) * INV_SQRT_2PI
    return cdf, cdf + x * dcdf


# ----------------------------------------------------------------------------- GELU (flat)


# Flat kernels: 1024 elements per program, 8 per thread (one or two 16-byte vectors per tensor),
# few enough registers (erf is a long polynomial) for high occupancy.
FLAT = {"BLOCK": 16384, "num_warps": 4} if INTERPRET else {"BLOCK": 1024, "num_warps": 4}


@triton.jit
def _gelu_fwd_kernel(X, Y, n, TANH: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    store(Y + offs, x * _cdf(x, TANH), mask)


@triton.jit
def _gelu_bwd_kernel(DY, X, DX, n, TANH: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    _, grad = _cdf_and_grad(x, TANH)
    store(DX + offs, dy * grad, mask)


# ----------------------------------------------------------------------------- 2-D tiles


def _tile(n: int) -> dict:
    """(rows, columns) tile for width n: BLOCK_N the largest power of two in [128, 1024] dividing n
    (no masked tail; 512 for BERT's 1536), BLOCK_M rows to make ~2048 elements, 8 per thread."""
    block_n = next((b for b in (1024, 512, 256, 128) if n % b == 0), min(1024, triton.next_power_of_2(n)))
    if INTERPRET:  # cost there is per op per program: few, large programs
        return {"BLOCK_M": 32, "BLOCK_N": block_n, "num_warps": 4}
    block_m = min(16, max(1, 2048 // block_n))
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": max(1, min(8, block_m * block_n // 256))}


@triton.jit
def _bias_gelu_fwd_kernel(X, B, Y, M, N, TANH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    col = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (row < M)[:, None] & (col < N)[None, :]
    offs = row[:, None].to(tl.int64) * N + col[None, :]  # (BLOCK_M, BLOCK_N)
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    x += tl.load(B + col, mask=col < N, other=0.0).to(tl.float32)[None, :]
    store(Y + offs, x * _cdf(x, TANH), mask)


@triton.jit
def _bias_gelu_bwd_kernel(
    DY, X, B, DX, DB, M, N, rows_per_program,
    TANH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    col = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = col < N
    bias = tl.load(B + col, mask=col_ok, other=0.0).to(tl.float32)
    db_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    first = pid * rows_per_program
    last = tl.minimum(first + rows_per_program, M)
    for start in range(first, last, BLOCK_M):
        row = start + tl.arange(0, BLOCK_M)
        mask = (row < last)[:, None] & col_ok[None, :]
        offs = row[:, None].to(tl.int64) * N + col[None, :]  # (BLOCK_M, BLOCK_N)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32) + bias[None, :]
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        _, grad = _cdf_and_grad(x, TANH)
        dx = dy * grad
        store(DX + offs, dx, mask)
        db_acc += dx
    tl.store(DB + pid * N + col, tl.sum(db_acc, axis=0), mask=col_ok)


@triton.jit
def _load_halves(X, row, col, M, N):
    """The (row, col) tile of both halves of X (M, 2N) = [a | b] in fp32, its mask, and a's offsets
    (X + a_offs + N addresses b): all (BLOCK_M, BLOCK_N)."""
    mask = (row < M)[:, None] & (col < N)[None, :]
    a_offs = row[:, None].to(tl.int64) * (2 * N) + col[None, :]
    a = tl.load(X + a_offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(X + a_offs + N, mask=mask, other=0.0).to(tl.float32)
    return a, b, mask, a_offs


@triton.jit
def _geglu_fwd_kernel(X, Y, M, N, TANH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """X: (M, 2N) holding [a | b]; Y: (M, N) = gelu(a) * b."""
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    col = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    a, b, mask, _ = _load_halves(X, row, col, M, N)
    y = a * _cdf(a, TANH) * b
    store(Y + row[:, None].to(tl.int64) * N + col[None, :], y, mask)


@triton.jit
def _geglu_bwd_kernel(DY, X, DX, M, N, TANH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """da = dy * b * gelu'(a), db = dy * gelu(a), written as DX = [da | db]."""
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    col = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    a, b, mask, a_offs = _load_halves(X, row, col, M, N)
    dy = tl.load(DY + row[:, None].to(tl.int64) * N + col[None, :], mask=mask, other=0.0).to(tl.float32)
    cdf, grad = _cdf_and_grad(a, TANH)
    store(DX + a_offs, dy * b * grad, mask)
    store(DX + a_offs + N, dy * a * cdf, mask)


# ----------------------------------------------------------------------------- launchers


def _launch_tiles(kernel, M: int, N: int, *args, **constexprs) -> None:
    """One program per (BLOCK_M rows, BLOCK_N columns) tile of an (M, N) problem."""
    if M > 0 and N > 0:
        tile = _tile(N)
        grid = (triton.cdiv(M, tile["BLOCK_M"]), triton.cdiv(N, tile["BLOCK_N"]))
        launch(kernel)[grid](*args, M, N, **constexprs, **tile)


def _gelu_launch(kernel, out: torch.Tensor, *tensors: torch.Tensor, tanh: bool) -> torch.Tensor:
    for t in tensors:
        check_contiguous("input", t)
    n = out.numel()
    if n > 0:
        launch(kernel)[(triton.cdiv(n, FLAT["BLOCK"]),)](*tensors, out, n, TANH=tanh, **FLAT)
    return out


def _bias_gelu_backward(dy, x, bias, tanh):
    """dy, x: (M, N). Returns dx and the fp32 bias gradient (N,)."""
    check_contiguous("grad_output", dy)
    M, N = x.shape
    dx = torch.empty_like(x)
    rows_per_program, programs = row_groups(M, x.device)
    db = torch.zeros(programs, N, device=x.device, dtype=torch.float32)
    if M > 0 and N > 0:
        tile = _tile(N)  # each program walks its group of rows for one column block
        launch(_bias_gelu_bwd_kernel)[(programs, triton.cdiv(N, tile["BLOCK_N"]))](
            dy, x, bias, dx, db, M, N, rows_per_program, TANH=tanh, **tile
        )
    return dx, db.sum(0)


def _geglu_launch(kernel, out, *tensors, tanh):
    """out is (M, H) for the forward and (M, 2H) for the backward; tensors end with x (M, 2H)."""
    for t in tensors:
        check_contiguous("input", t)
    x = tensors[-1]
    _launch_tiles(kernel, x.shape[0], x.shape[1] // 2, *tensors, out, TANH=tanh)
    return out


# ----------------------------------------------------------------------------- ops and autograd


@define_op("gelu_fwd", fake=lambda x, approximate: torch.empty_like(x))
def _gelu_fwd(x: torch.Tensor, approximate: str) -> torch.Tensor:
    return _gelu_launch(_gelu_fwd_kernel, torch.empty_like(x), x, tanh=approximate == "tanh")


@define_op("gelu_bwd", fake=lambda dy, x, approximate: torch.empty_like(x))
def _gelu_bwd(dy: torch.Tensor, x: torch.Tensor, approximate: str) -> torch.Tensor:
    return _gelu_launch(_gelu_bwd_kernel, torch.empty_like(x), dy, x, tanh=approximate == "tanh")


@define_op("bias_gelu_fwd", fake=lambda x, bias, approximate: torch.empty_like(x))
def _bias_gelu_fwd(x: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
    check_contiguous("x", x)
    y = torch.empty_like(x)
    _launch_tiles(_bias_gelu_fwd_kernel, x.shape[0], x.shape[1], x, bias, y, TANH=approximate == "tanh")
    return y


def _fake_bias_gelu_bwd(dy, x, bias, approximate):
    return torch.empty_like(x), x.new_empty(x.shape[1], dtype=torch.float32)


@define_op("bias_gelu_bwd", fake=_fake_bias_gelu_bwd)
def _bias_gelu_bwd(
    dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, approximate: str
) -> tuple[torch.Tensor, torch.Tensor]:
    return _bias_gelu_backward(dy, x, bias, approximate == "tanh")


def _fake_geglu_fwd(x, approximate):
    return x.new_empty(x.shape[0], x.shape[1] // 2)


@define_op("geglu_fwd", fake=_fake_geglu_fwd)
def _geglu_fwd(x: torch.Tensor, approximate: str) -> torch.Tensor:
    out = x.new_empty(x.shape[0], x.shape[1] // 2)  # (M, N)
    return _geglu_launch(_geglu_fwd_kernel, out, x, tanh=approximate == "tanh")


@define_op("geglu_bwd", fake=lambda dy, x, approximate: torch.empty_like(x))
def _geglu_bwd(dy: torch.Tensor, x: torch.Tensor, approximate: str) -> torch.Tensor:
    return _geglu_launch(_geglu_bwd_kernel, torch.empty_like(x), dy, x, tanh=approximate == "tanh")


def _setup_gelu(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.approximate = inputs[-1]


def _backward_gelu(ctx, dy):
    (x,) = ctx.saved_tensors
    return _gelu_bwd(dy.contiguous(), x, ctx.approximate), None


def _setup_bias_gelu(ctx, inputs, output):
    x, bias, approximate = inputs
    ctx.save_for_backward(x, bias)
    ctx.approximate = approximate


def _backward_bias_gelu(ctx, dy):
    x, bias = ctx.saved_tensors
    dx, dbias = _bias_gelu_bwd(dy.contiguous(), x, bias, ctx.approximate)
    return dx, dbias.to(bias.dtype), None


def _backward_geglu(ctx, dy):
    (x,) = ctx.saved_tensors
    return _geglu_bwd(dy.contiguous(), x, ctx.approximate), None


_gelu_fwd.register_autograd(_backward_gelu, setup_context=_setup_gelu)
_bias_gelu_fwd.register_autograd(_backward_bias_gelu, setup_context=_setup_bias_gelu)
_geglu_fwd.register_autograd(_backward_geglu, setup_context=_setup_gelu)


# ----------------------------------------------------------------------------- public API


def _check(x: torch.Tensor, approximate: str) -> None:
    check_approximate(approximate)
    check_float("x", x)
    check_device("x", x)


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """Like ``F.gelu(x, approximate=...)``; any shape."""
    _check(x, approximate)
    return _gelu_fwd(x.contiguous(), approximate)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """``gelu(x + bias)`` with ``bias`` of shape (N,) broadcast over x's leading dims."""
    _check(x, approximate)
    if x.dim() < 1:
        raise ValueError(f"bias_gelu needs x of shape (..., N); got a scalar {tuple(x.shape)}")
    check_vector("bias", bias, x.shape[-1], x)
    return _bias_gelu_fwd(rows(x), bias.contiguous(), approximate).view(x.shape)


def geglu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """``gelu(a) * b`` where ``a, b = x.chunk(2, dim=-1)``: (..., 2H) -> (..., H)."""
    _check(x, approximate)
    if x.dim() < 1 or x.shape[-1] % 2 != 0:
        raise ValueError(f"geglu needs x of shape (..., 2H) with an even last dim; got {tuple(x.shape)}")
    y = _geglu_fwd(rows(x), approximate)  # (M, H)
    return y.view(*x.shape[:-1], x.shape[-1] // 2)


class GELU(nn.Module):
    """``gelu(x)`` as a module.

    Public API (``cramming.kernels.GELU``) for using the kernel in other models; cramming's own
    model calls the functions through ``cramming.kernels.dispatch`` instead.
    """

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        check_approximate(approximate)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class BiasGELU(nn.Module):
    """``gelu(x + bias)`` with its own bias parameter (pair it with a bias-free ``nn.Linear``).

    Public API (``cramming.kernels.BiasGELU``); cramming's own model does not use it.
    """

    def __init__(self, num_features: int, approximate: str = "none", device=None, dtype=None) -> None:
        super().__init__()
        check_approximate(approximate)
        self.approximate = approximate
        self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bias_gelu(x, self.bias, self.approximate)

    def extra_repr(self) -> str:
        return f"{self.bias.shape[0]}, approximate={self.approximate!r}"


class GeGLU(GELU):
    """(..., 2H) -> (..., H): ``gelu(a) * b``. Public API (``cramming.kernels.GeGLU``); cramming's model
    calls ``cramming.kernels.dispatch`` instead."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return geglu(x, self.approximate)


__all__ = ["GELU", "BiasGELU", "GeGLU", "bias_gelu", "geglu", "gelu"]
