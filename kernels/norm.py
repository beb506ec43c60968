"""Fused LayerNorm in Triton, optionally with the residual add of a pre-LN block fused in.

Forward: each program normalises BLOCK_M whole rows held in registers (BLOCK_N = next
power of two of the width), statistics in fp32, and stores mean and 1/std for the
backward. Backward: each program walks a contiguous group of rows, writes dx and keeps
running fp32 sums of dy * xhat (dW) and dy (dB); the (programs, N) partial sums are then
reduced over programs, so dW/dB never need atomics.

    y = (x - mean) * rstd * w + b,   xhat = (x - mean) * rstd
    dx = rstd * (w*dy - mean_j(w*dy * xhat) * xhat - mean_j(w*dy))
"""

import torch
import triton
import triton.language as tl
from torch import nn

from ._utils import (
    INTERPRET,
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

MAX_WIDTH = 16384  # one row must fit in registers


def _tile(n: int) -> dict:
    """Launch parameters for width n: BLOCK_N covers the row; BLOCK_M rows per tile so a tile holds
    >= 2048 elements (enough work per program at small widths); ~8 elements per thread."""
    block_n = triton.next_power_of_2(n)
    if INTERPRET:  # cost there is per op per program: few programs, many rows each
        return {"BLOCK_N": block_n, "BLOCK_M": 32, "num_warps": 4}
    block_m = min(16, max(1, 2048 // block_n))
    return {"BLOCK_N": block_n, "BLOCK_M": block_m, "num_warps": min(32, max(1, block_m * block_n // 256))}


@triton.jit
def _fwd_kernel(
    X, R, W, B, Y, S, Mean, Rstd, M, N, eps,
    HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    col = tl.arange(0, BLOCK_N)
    row_ok, col_ok = row < M, col < N
    mask = row_ok[:, None] & col_ok[None, :]
    offs = row[:, None].to(tl.int64) * N + col[None, :]  # (BLOCK_M, BLOCK_N)

    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
        store(S + offs, x, mask)
    mean = tl.sum(x, axis=1) / N
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / N + eps)

    w = tl.load(W + col, mask=col_ok, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        y += tl.load(B + col, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    store(Y + offs, y, mask)
    tl.store(Mean + row, mean, mask=row_ok)
    tl.store(Rstd + row, rstd, mask=row_ok)


@triton.jit
def _bwd_kernel(
    DY, X, W, Mean, Rstd, DS, DX, DW, DB, M, N, rows_per_program,
    HAS_DSUM: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    col = tl.arange(0, BLOCK_N)
    col_ok = col < N
    w = tl.load(W + col, mask=col_ok, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    first = pid * rows_per_program
    last = tl.minimum(first + rows_per_program, M)
    for start in range(first, last, BLOCK_M):
        row = start + tl.arange(0, BLOCK_M)
        row_ok = row < last
        mask = row_ok[:, None] & col_ok[None, :]
        offs = row[:, None].to(tl.int64) * N + col[None, :]  # (BLOCK_M, BLOCK_N)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(Mean + row, mask=row_ok, other=0.0)
        rstd = tl.load(Rstd + row, mask=row_ok, other=0.0)

        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        wdy = w[None, :] * dy
        c1 = tl.sum(xhat * wdy, axis=1) / N
        c2 = tl.sum(wdy, axis=1) / N
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if HAS_DSUM:  # gradient that reached the residual sum directly
            dx += tl.load(DS + offs, mask=mask, other=0.0).to(tl.float32)
        store(DX + offs, dx, mask)
        dw_acc += dy * xhat
        if HAS_BIAS:
            db_acc += dy

    tl.store(DW + pid * N + col, tl.sum(dw_acc, axis=0), mask=col_ok)
    if HAS_BIAS:
        tl.store(DB + pid * N + col, tl.sum(db_acc, axis=0), mask=col_ok)


# ----------------------------------------------------------------------------- launchers


def _forward(x, residual, weight, bias, eps):
    """x, residual: (M, N) contiguous. Returns y, the sum (or None), mean and rstd (fp32, (M,))."""
    for name, t in (("x", x), ("residual", residual), ("weight", weight), ("bias", bias)):
        if t is not None:
            check_contiguous(name, t)
    M, N = x.shape
    y = torch.empty_like(x)
    summed = torch.empty_like(x) if residual is not None else None
    mean = torch.empty(M, device=x.device, dtype=torch.float32)
    rstd = torch.empty(M, device=x.device, dtype=torch.float32)
    if M > 0:
        tile = _tile(N)
        launch(_fwd_kernel)[(triton.cdiv(M, tile["BLOCK_M"]),)](
            x, x if residual is None else residual, weight, weight if bias is None else bias,
            y, y if summed is None else summed, mean, rstd, M, N, eps,
            HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None, **tile,
        )  # fmt: skip
    return y, summed, mean, rstd


def _backward(dy, x, weight, mean, rstd, dsum, has_bias):
    """dy, x, dsum: (M, N). Returns dx (x's dtype) and dW, dB as fp32 (N,) (dB empty without bias)."""
    check_contiguous("grad_output", dy)
    M, N = x.shape
    dx = torch.empty_like(x)
    rows_per_program, programs = row_groups(M, x.device)
    dw = torch.empty(programs, N, device=x.device, dtype=torch.float32)
    db = torch.empty(programs if has_bias else 0, N, device=x.device, dtype=torch.float32)
    if M > 0:
        launch(_bwd_kernel)[(programs,)](
            dy, x, weight, mean, rstd, dy if dsum is None else dsum, dx, dw, db if has_bias else dw,
            M, N, rows_per_program,
            HAS_DSUM=dsum is not None, HAS_BIAS=has_bias, **_tile(N),
        )  # fmt: skip
    else:
        dw.zero_()
        db.zero_()
    return dx, dw.sum(0), db.sum(0) if has_bias else db.new_empty(0)


# ----------------------------------------------------------------------------- ops and autograd


def _stats_like(x):
    return x.new_empty(x.shape[0], dtype=torch.float32)


@define_op("layer_norm_fwd", fake=lambda x, w, b, eps: (torch.empty_like(x), _stats_like(x), _stats_like(x)))
def _layer_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y, _, mean, rstd = _forward(x, None, weight, bias, eps)
    return y, mean, rstd


def _fake_residual_fwd(x, r, w, b, eps):
    return torch.empty_like(x), torch.empty_like(x), _stats_like(x), _stats_like(x)


@define_op("layer_norm_residual_fwd", fake=_fake_residual_fwd)
def _layer_norm_residual_fwd(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    y, summed, mean, rstd = _forward(x, residual, weight, bias, eps)
    return y, summed, mean, rstd


def _fake_bwd(dy, x, w, mean, rstd, dsum, has_bias):
    n = x.shape[1]
    vec = x.new_empty(n, dtype=torch.float32)
    return torch.empty_like(x), vec, vec.new_empty(n if has_bias else 0)


@define_op("layer_norm_bwd", fake=_fake_bwd)
def _layer_norm_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dsum: torch.Tensor | None,
    has_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(dy, x, weight, mean, rstd, dsum, has_bias)


def _save(ctx, normalized_input, weight, bias, mean, rstd):
    ctx.save_for_backward(normalized_input, weight, mean, rstd)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _param_grads(ctx, weight, dw, db):
    return dw.to(weight.dtype), None if ctx.bias_dtype is None else db.to(ctx.bias_dtype)


def _setup_fwd(ctx, inputs, output):
    x, weight, bias, _ = inputs
    _save(ctx, x, weight, bias, output[1], output[2])


def _backward_fwd(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = _layer_norm_bwd(dy.contiguous(), x, weight, mean, rstd, None, ctx.bias_dtype is not None)
    return dx, *_param_grads(ctx, weight, dw, db), None


def _setup_residual_fwd(ctx, inputs, output):
    _, _, weight, bias, _ = inputs
    _save(ctx, output[1], weight, bias, output[2], output[3])  # normalise the saved sum


def _backward_residual_fwd(ctx, dy, dsum, _dmean, _drstd):
    summed, weight, mean, rstd = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(summed)
    dsum = None if dsum is None else dsum.contiguous()
    dx, dw, db = _layer_norm_bwd(
        dy.contiguous(), summed, weight, mean, rstd, dsum, ctx.bias_dtype is not None
    )
    # x + residual: both summands receive the same gradient.
    return dx, dx, *_param_grads(ctx, weight, dw, db), None


_layer_norm_fwd.register_autograd(_backward_fwd, setup_context=_setup_fwd)
_layer_norm_residual_fwd.register_autograd(_backward_residual_fwd, setup_context=_setup_residual_fwd)


# ----------------------------------------------------------------------------- public API


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> None:
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"layer_norm needs x of shape (..., N) with N > 0; got {tuple(x.shape)}")
    if x.shape[-1] > MAX_WIDTH:
        raise ValueError(f"layer_norm width {x.shape[-1]} exceeds the kernel's maximum of {MAX_WIDTH}")
    check_float("x", x)
    check_device("x", x)
    check_vector("weight", weight, x.shape[-1], x)
    if bias is not None:
        check_vector("bias", bias, x.shape[-1], x)
    if not eps >= 0.0:
        raise ValueError(f"layer_norm eps must be >= 0; got {eps}")


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, eps: float = 1e-12
) -> torch.Tensor:
    """LayerNorm over the last dim, like ``F.layer_norm(x, (N,), weight, bias, eps)``."""
    _check(x, weight, bias, eps)
    bias = None if bias is None else bias.contiguous()
    y, _, _ = _layer_norm_fwd(rows(x), weight.contiguous(), bias, float(eps))  # (M, N)
    return y.view(x.shape)


def layer_norm_residual(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    eps: float = 1e-12,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(LN(x + residual), x + residual)`` from one pass over memory."""
    _check(x, weight, bias, eps)
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(
            f"residual must match x: got residual {tuple(residual.shape)} {residual.dtype}, "
            f"x {tuple(x.shape)} {x.dtype}"
        )
    check_device("residual", residual, like=x)
    bias = None if bias is None else bias.contiguous()
    y, summed, _, _ = _layer_norm_residual_fwd(rows(x), rows(residual), weight.contiguous(), bias, float(eps))
    return y.view(x.shape), summed.view(x.shape)


class LayerNorm(nn.Module):
    """``nn.LayerNorm`` over the last dim backed by the Triton kernel; ``forward(x, residual)``
    returns ``(LN(x + residual), x + residual)``.

    Public API (``cramming.kernels.LayerNorm``) for using the kernel in other models; cramming's own
    model calls the functions through ``cramming.kernels.dispatch`` instead.
    """

    def __init__(
        self, normalized_shape: int, eps: float = 1e-12, bias: bool = True, device=None, dtype=None
    ) -> None:
        super().__init__()
        self.normalized_shape, self.eps = int(normalized_shape), float(eps)
        self.weight = nn.Parameter(torch.ones(self.normalized_shape, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros_like(self.weight)) if bias else None

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is None:
            return layer_norm(x, self.weight, self.bias, self.eps)
        return layer_norm_residual(x, residual, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, bias={self.bias is not None}"


__all__ = ["LayerNorm", "layer_norm", "layer_norm_residual"]
