"""FlashAttention-2 style bidirectional attention in Triton, with a key-padding mask.

Four layers, top to bottom:

1. ``@triton.jit`` kernels: forward (online softmax over key blocks, fp32 accumulation, saves the
   log-sum-exp), and the FA2 backward: a preprocess kernel for ``delta = rowsum(dO * O)``, one kernel
   over key blocks for dK/dV and one over query blocks for dQ (no atomics, so gradients are
   deterministic). Sequences that fit one key block (T <= 128 on GPU, 64 in the interpreter; BERT's
   128) take a single backward kernel instead: each program holds all keys of a (batch, head), so it
   writes dQ directly, with 5 matmuls instead of 7 and no preprocess launch.
2. Launchers: allocate outputs, pick the grid and tile, launch. On a GPU the tile is autotuned per
   (power-of-two bucket of T, D, mask, dtypes); ``CRAMMING_AUTOTUNE=0`` (read at import, see
   ``_utils.AUTOTUNE``) uses the first listed tile instead, which keeps GPU test runs from compiling every config for every shape.
3. Autograd: ``torch.library.triton_op`` + ``wrap_triton`` + ``register_autograd`` on GPU, so
   ``torch.compile`` sees through the op. Under ``TRITON_INTERPRET=1`` ``wrap_triton`` hands back the
   raw interpreted kernel, which cannot run on the fake tensors ``torch.compile`` traces with; there the
   same functions are registered with ``torch.library.custom_op`` plus a fake (shape-only) impl, an
   opaque op that compiles too (both via ``_utils.define_op``).
4. Public API: ``attention(q, k, v, key_padding_mask=None, scale=None, layout="bhtd")``, the thin
   ``Attention`` module, and ``attention_varlen(q, k, v, cu_seqlens, max_seqlen=None, scale=None)`` for
   packed sequences ((total, H, D), FlashAttention's cu_seqlens convention; the same kernels, see
   ``_sequence``).

Masking conventions: ``key_padding_mask`` is (B, T) bool, True where the key is real. Every query row
attends to the real keys of its sequence (padded query rows too, like the reference); a sequence whose
keys are all masked gives zeros and zero gradients, never NaN. Out-of-range keys of the last block count
as masked, so any sequence length works.

The kernels work in base 2: scores are scaled by ``scale * log2(e)`` and ``exp2`` replaces ``exp``.
LSE holds the base-2 log-sum-exp of those scaled scores, +inf for rows without a real key, so that
``exp2(s - lse)`` is exactly 0 there in the backward.
"""

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import nn

from . import _utils
from ._utils import INTERPRET, define_op, launch, store

LOG2E = 1.4426950408889634
HEAD_DIMS = (32, 64, 128)
LAYOUTS = ("bhtd", "bthd")
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_PRE_BLOCK = 64  # rows per program of the delta preprocess kernel
_UPCAST = INTERPRET  # the interpreter holds bf16 as raw uint16: compute in fp32 there


# ----------------------------------------------------------------------------------------------
# tile configurations: (BLOCK_M, BLOCK_N, num_warps, num_stages); BLOCK_M is the query block, BLOCK_N
# the key block. On a GPU each kernel is autotuned over its list (keyed on T, D, mask and dtypes); with
# CRAMMING_AUTOTUNE=0 (short GPU test runs) or in the interpreter (no driver to time with) the first
# entry (in the interpreter, blocks of _INTERPRET_BLOCK) is launched directly.

_INTERPRET_BLOCK = 64  # every block size in the interpreter
_FWD_TILES = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2),
              (64, 64, 4, 3), (64, 128, 4, 3), (64, 64, 4, 4), (64, 32, 4, 2)]  # fmt: skip
_DKDV_TILES = [(32, 128, 8, 3), (64, 128, 8, 3), (64, 128, 8, 2), (32, 128, 4, 3), (64, 64, 4, 3),
               (32, 64, 4, 4), (64, 64, 8, 3), (32, 64, 8, 3)]  # fmt: skip
_DQ_TILES = [(128, 32, 8, 3), (128, 64, 8, 3), (128, 64, 8, 2), (128, 32, 4, 3), (64, 64, 4, 3),
             (64, 32, 4, 4), (64, 64, 8, 3)]  # fmt: skip
# (the first entries are ones that do not spill registers at D=64 on sm_90, checked with ptxas)
# sequences up to _SHORT_MAX keys take the one-key-block backward (_attn_bwd_short): BLOCK_N covers T;
# tiles are (BLOCK_M, num_warps, num_stages)
_SHORT_MAX = 64 if INTERPRET else 128
_SHORT_TILES = [(64, 8, 2), (32, 8, 2), (32, 8, 3), (32, 4, 2)]  # 4 warps spill with 128 keys (sm_90)
# T is bucketed to a power of two (see _t_bucket) so a new sequence length does not trigger a new run
_KEY = ["T_BUCKET", "HEAD_DIM", "HAS_MASK"]


_BLOCKS = ("BLOCK_M", "BLOCK_N")


def _autotuned(kernel, tiles: list[tuple], names: tuple[str, ...] = _BLOCKS):
    """triton.autotune over tiles (block sizes named by names, then num_warps, num_stages); None when
    interpreting."""
    if INTERPRET:
        return None
    configs = [triton.Config(dict(zip(names, t[:-2])), num_warps=t[-2], num_stages=t[-1]) for t in tiles]
    return triton.autotune(configs=configs, key=_KEY)(kernel)


def _kernel_and_tile(kernel, tuned, tiles: list[tuple], names: tuple[str, ...] = _BLOCKS) -> tuple:
    """The launchable kernel and the launch kwargs that fix its tile (none when autotuning)."""
    if tuned is not None and _utils.AUTOTUNE:  # read through the module: ops' self-check switches it
        return launch(tuned), {}
    tile = (_INTERPRET_BLOCK,) * len(names) + (4, 1) if INTERPRET else tiles[0]
    return launch(kernel), {**dict(zip(names, tile[:-2])), "num_warps": tile[-2], "num_stages": tile[-1]}


# Shared memory a fixed forward tile may plan for: under the ~227 KB an H100 (and ~163 KB an A100) block
# may use, with room for the compiler's own buffers. The autotuner drops configs that do not fit by
# itself; a fixed tile (CRAMMING_AUTOTUNE=0, the self-check) has to fit on its own.
_FWD_SMEM_BUDGET = 160 * 1024


def _fwd_smem(tile: tuple, head_dim: int, elem_bytes: int) -> int:
    """Bytes of shared memory a forward tile stages: the query block once, keys and values per stage."""
    block_m, block_n, _, stages = tile
    return (block_m + 2 * block_n * stages) * head_dim * elem_bytes


def _fwd_tiles(head_dim: int, elem_bytes: int) -> list[tuple]:
    """The forward tiles, those that fit the budget first: fp32 at D=128 would stage ~256 KB in the first."""
    fits = [t for t in _FWD_TILES if _fwd_smem(t, head_dim, elem_bytes) <= _FWD_SMEM_BUDGET]
    return fits + [t for t in _FWD_TILES if t not in fits]


# ----------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _load_rows(base, rows, offs_d, stride_t, T, CHECK: tl.constexpr, UPCAST: tl.constexpr):
    """Load a (len(rows), HEAD_DIM) tile; rows past T read as 0 when CHECK."""
    ptrs = base + rows[:, None] * stride_t + offs_d[None, :]
    if CHECK:
        x = tl.load(ptrs, mask=(rows < T)[:, None], other=0.0)
    else:
        x = tl.load(ptrs)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _key_valid(mask_base, cols, stride_mt, T, HAS_MASK: tl.constexpr):
    """True for keys inside the sequence and (with a padding mask) not padded."""
    valid = cols < T
    if HAS_MASK:
        valid = valid & (tl.load(mask_base + cols * stride_mt, mask=cols < T, other=0) != 0)
    return valid


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, mask_base, stride_kt, stride_vt, stride_mt, offs_n, offs_d,
               lo, hi, T, qk_scale, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, HAS_MASK: tl.constexpr,
               UPCAST: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """Online softmax over key blocks [lo, hi). MASKED blocks may hold padded or out-of-range keys."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = _load_rows(k_base, cols, offs_d, stride_kt, T, MASKED, UPCAST)  # (BLOCK_N, D)
        v = _load_rows(v_base, cols, offs_d, stride_vt, T, MASKED, UPCAST)  # (BLOCK_N, D)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N), unscaled
        if MASKED:
            valid = _key_valid(mask_base, cols, stride_mt, T, HAS_MASK)
            s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        m_shift = m_new
        if MASKED:
            # A row with no real key so far keeps m = -inf (a later block's real scores may all be far
            # below 0); only the shift used here becomes 0, so exp2(-inf - shift) gives 0, not NaN.
            m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s * qk_scale - m_shift[:, None])
        alpha = tl.math.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _base(bx, stride_b, h, stride_h):
    """The offset of (sequence bx, head h), in int64: program ids and strides are int32, and their product
    passes 2**31 once the buffer does (q, k, v as views of one (B, T, 3, H, D) buffer at T=512 and
    B of about 1,800), which would wrap around to a negative offset."""
    return bx.to(tl.int64) * stride_b + tl.cast(h, tl.int64) * stride_h


@triton.jit
def _sequence(SEQ, b, T, VARLEN: tl.constexpr):
    """(bx, length) of sequence b. Padded batches: bx = b, length T. Packed sequences (varlen): bx is the
    sequence's first row, cu_seqlens[b], and the launcher passes row strides as batch strides, so
    ``X + _base(bx, stride_xb, h, stride_xh)`` addresses the sequence either way."""
    if VARLEN:
        bx = tl.load(SEQ + b)
        length = tl.load(SEQ + b + 1) - bx
    else:
        bx = b
        length = T
    return bx, length


@triton.jit
def _attn_fwd(Q, K, V, Out, LSE, MASK, SEQ,
              stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
              stride_vb, stride_vh, stride_vt,
              stride_ob, stride_oh, stride_ot, stride_mb, stride_mt, stride_lb, stride_lh,
              H, T, T_BUCKET, qk_scale,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_MASK: tl.constexpr,
              UPCAST: tl.constexpr, PRECISION: tl.constexpr, VARLEN: tl.constexpr):  # fmt: skip
    pid_m, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bx, T = _sequence(SEQ, b, T, VARLEN)
    if VARLEN:  # the grid covers the longest sequence; blocks past this one's end have nothing to do
        if pid_m * BLOCK_M >= T:
            return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k_base = K + _base(bx, stride_kb, h, stride_kh)
    v_base = V + _base(bx, stride_vb, h, stride_vh)
    mask_base = MASK + _base(bx, stride_mb, 0, 0)
    q = _load_rows(Q + _base(bx, stride_qb, h, stride_qh), offs_m, offs_d, stride_qt, T, True, UPCAST)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    # full blocks skip all masking; only the tail block (or every block, with a padding mask) pays for it
    n_full = 0 if HAS_MASK else (T // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, mask_base, stride_kt, stride_vt, stride_mt,
                               offs_n, offs_d, 0, n_full, T, qk_scale, BLOCK_N, False, HAS_MASK, UPCAST,
                               PRECISION)  # fmt: skip
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, mask_base, stride_kt, stride_vt, stride_mt,
                               offs_n, offs_d, n_full, T, T, qk_scale, BLOCK_N, True, HAS_MASK, UPCAST,
                               PRECISION)  # fmt: skip

    no_keys = l_i == 0.0  # every key of this sequence is padded
    l_safe = tl.where(no_keys, 1.0, l_i)
    o = acc / l_safe[:, None]
    lse = tl.where(no_keys, float("inf"), m_i + tl.math.log2(l_safe))
    o_ptrs = Out + _base(bx, stride_ob, h, stride_oh) + offs_m[:, None] * stride_ot + offs_d[None, :]
    store(o_ptrs, o, (offs_m < T)[:, None])
    tl.store(LSE + _base(bx, stride_lb, h, stride_lh) + offs_m, lse, mask=offs_m < T)


@triton.jit
def _attn_bwd_preprocess(Out, DO, DELTA, SEQ, stride_ob, stride_oh, stride_ot, stride_dob, stride_doh,
                         stride_dot, stride_lb, stride_lh, H, T,
                         HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, VARLEN: tl.constexpr):  # fmt: skip
    """delta = rowsum(dO * Out), the softmax-backward correction term, in fp32."""
    pid_m, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bx, T = _sequence(SEQ, b, T, VARLEN)
    if VARLEN:  # the grid covers the longest sequence; blocks past this one's end have nothing to do
        if pid_m * BLOCK_M >= T:
            return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    o = _load_rows(Out + _base(bx, stride_ob, h, stride_oh), offs_m, offs_d, stride_ot, T, True, True)
    do = _load_rows(DO + _base(bx, stride_dob, h, stride_doh), offs_m, offs_d, stride_dot, T, True, True)
    tl.store(DELTA + _base(bx, stride_lb, h, stride_lh) + offs_m, tl.sum(o * do, 1), mask=offs_m < T)


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, MASK, SEQ,
                   stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                   stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
                   stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt,
                   stride_mb, stride_mt, stride_lb, stride_lh, H, T, T_BUCKET, qk_scale, scale,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                   VARLEN: tl.constexpr):  # fmt: skip
    """One block of BLOCK_N keys per program, looping over all query blocks (computed transposed:
    keys x queries)."""
    pid_n, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bx, T = _sequence(SEQ, b, T, VARLEN)
    if VARLEN:
        if pid_n * BLOCK_N >= T:
            return
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_base = Q + _base(bx, stride_qb, h, stride_qh)
    do_base = DO + _base(bx, stride_dob, h, stride_doh)
    row_base = _base(bx, stride_lb, h, stride_lh)
    k = _load_rows(K + _base(bx, stride_kb, h, stride_kh), offs_n, offs_d, stride_kt, T, True, UPCAST)
    v = _load_rows(V + _base(bx, stride_vb, h, stride_vh), offs_n, offs_d, stride_vt, T, True, UPCAST)

    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for start_m in range(0, T, BLOCK_M):
        rows = start_m + offs_m
        q = _load_rows(q_base, rows, offs_d, stride_qt, T, True, UPCAST)  # (BLOCK_M, D)
        do = _load_rows(do_base, rows, offs_d, stride_dot, T, True, UPCAST)  # (BLOCK_M, D)
        # out-of-range query rows get lse = +inf, hence p = 0: they add nothing
        lse = tl.load(LSE + row_base + rows, mask=rows < T, other=float("inf"))
        delta = tl.load(DELTA + row_base + rows, mask=rows < T, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M)
        p_t = tl.math.exp2(s_t * qk_scale - lse[None, :])
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION)
    dk = dk * scale
    # p_t was not masked for padded keys: each such key only pollutes its own row of dk/dv (a matmul
    # keeps rows apart), and those rows are replaced by the true gradient, zero, here
    valid = _key_valid(MASK + _base(bx, stride_mb, 0, 0), offs_n, stride_mt, T, HAS_MASK)
    dk = tl.where(valid[:, None], dk, 0.0)
    dv = tl.where(valid[:, None], dv, 0.0)
    store_mask = (offs_n < T)[:, None]
    dk_ptrs = DK + _base(bx, stride_dkb, h, stride_dkh) + offs_n[:, None] * stride_dkt + offs_d[None, :]
    dv_ptrs = DV + _base(bx, stride_dvb, h, stride_dvh) + offs_n[:, None] * stride_dvt + offs_d[None, :]
    store(dk_ptrs, dk, store_mask)
    store(dv_ptrs, dv, store_mask)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_base, v_base, mask_base, stride_kt, stride_vt, stride_mt, offs_n,
              offs_d, lo, hi, T, qk_scale, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
              HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = _load_rows(k_base, cols, offs_d, stride_kt, T, MASKED, UPCAST)  # (BLOCK_N, D)
        v = _load_rows(v_base, cols, offs_d, stride_vt, T, MASKED, UPCAST)  # (BLOCK_N, D)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
        p = tl.math.exp2(s * qk_scale - lse[:, None])
        if MASKED:
            valid = _key_valid(mask_base, cols, stride_mt, T, HAS_MASK)
            p = tl.where(valid[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, MASK, SEQ,
                 stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                 stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
                 stride_dqb, stride_dqh, stride_dqt, stride_mb, stride_mt, stride_lb, stride_lh,
                 H, T, T_BUCKET, qk_scale, scale,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                 VARLEN: tl.constexpr):  # fmt: skip
    """One block of BLOCK_M queries per program, looping over all key blocks."""
    pid_m, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bx, T = _sequence(SEQ, b, T, VARLEN)
    if VARLEN:  # the grid covers the longest sequence; blocks past this one's end have nothing to do
        if pid_m * BLOCK_M >= T:
            return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_base = _base(bx, stride_lb, h, stride_lh)
    q = _load_rows(Q + _base(bx, stride_qb, h, stride_qh), offs_m, offs_d, stride_qt, T, True, UPCAST)
    do = _load_rows(DO + _base(bx, stride_dob, h, stride_doh), offs_m, offs_d, stride_dot, T, True, UPCAST)
    lse = tl.load(LSE + row_base + offs_m, mask=offs_m < T, other=float("inf"))
    delta = tl.load(DELTA + row_base + offs_m, mask=offs_m < T, other=0.0)
    k_base = K + _base(bx, stride_kb, h, stride_kh)
    v_base = V + _base(bx, stride_vb, h, stride_vh)
    mask_base = MASK + _base(bx, stride_mb, 0, 0)

    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    n_full = 0 if HAS_MASK else (T // BLOCK_N) * BLOCK_N
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, mask_base, stride_kt, stride_vt, stride_mt, offs_n,
                   offs_d, 0, n_full, T, qk_scale, BLOCK_N, False, HAS_MASK, UPCAST, PRECISION)  # fmt: skip
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, mask_base, stride_kt, stride_vt, stride_mt, offs_n,
                   offs_d, n_full, T, T, qk_scale, BLOCK_N, True, HAS_MASK, UPCAST, PRECISION)  # fmt: skip
    dq = dq * scale
    dq_ptrs = DQ + _base(bx, stride_dqb, h, stride_dqh) + offs_m[:, None] * stride_dqt + offs_d[None, :]
    store(dq_ptrs, dq, (offs_m < T)[:, None])


@triton.jit
def _attn_bwd_short(Q, K, V, Out, DO, DQ, DK, DV, LSE, MASK, SEQ,
                    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                    stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot,
                    stride_dob, stride_doh, stride_dot, stride_dqb, stride_dqh, stride_dqt,
                    stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt,
                    stride_mb, stride_mt, stride_lb, stride_lh, H, T, T_BUCKET, qk_scale, scale,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                    VARLEN: tl.constexpr):  # fmt: skip
    """The whole backward of one (batch, head) when T <= BLOCK_N: the program holds every key, so each
    query block's dq is complete where it is computed (5 matmuls instead of 7, no atomics), and delta
    is computed in the loop (no preprocess launch)."""
    pid = tl.program_id(0)
    b, h = pid // H, pid % H
    bx, T = _sequence(SEQ, b, T, VARLEN)
    offs_n = tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_base = Q + _base(bx, stride_qb, h, stride_qh)
    do_base = DO + _base(bx, stride_dob, h, stride_doh)
    o_base = Out + _base(bx, stride_ob, h, stride_oh)
    dq_base = DQ + _base(bx, stride_dqb, h, stride_dqh)
    k = _load_rows(K + _base(bx, stride_kb, h, stride_kh), offs_n, offs_d, stride_kt, T, True, UPCAST)
    v = _load_rows(V + _base(bx, stride_vb, h, stride_vh), offs_n, offs_d, stride_vt, T, True, UPCAST)
    valid = _key_valid(MASK + _base(bx, stride_mb, 0, 0), offs_n, stride_mt, T, HAS_MASK)

    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for start_m in range(0, T, BLOCK_M):
        rows = start_m + offs_m
        q = _load_rows(q_base, rows, offs_d, stride_qt, T, True, UPCAST)  # (BLOCK_M, D)
        do = _load_rows(do_base, rows, offs_d, stride_dot, T, True, UPCAST)  # (BLOCK_M, D)
        o = _load_rows(o_base, rows, offs_d, stride_ot, T, True, True)  # fp32
        delta = tl.sum(o * do.to(tl.float32), 1)
        lse = tl.load(LSE + _base(bx, stride_lb, h, stride_lh) + rows, mask=rows < T, other=float("inf"))
        s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M)
        p_t = tl.math.exp2(s_t * qk_scale - lse[None, :])
        p_t = tl.where(valid[:, None], p_t, 0.0)  # dq sums over keys: padded keys must give exactly 0
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M)
        ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)
        dk = tl.dot(ds_t, q, dk, input_precision=PRECISION)
        dq = tl.dot(tl.trans(ds_t), k, input_precision=PRECISION) * scale  # (BLOCK_M, D)
        store(dq_base + rows[:, None] * stride_dqt + offs_d[None, :], dq, (rows < T)[:, None])
    in_range = (offs_n < T)[:, None]
    dk_ptrs = DK + _base(bx, stride_dkb, h, stride_dkh) + offs_n[:, None] * stride_dkt + offs_d[None, :]
    dv_ptrs = DV + _base(bx, stride_dvb, h, stride_dvh) + offs_n[:, None] * stride_dvt + offs_d[None, :]
    store(dk_ptrs, dk * scale, in_range)
    store(dv_ptrs, dv, in_range)


# ----------------------------------------------------------------------------------------------
# launchers
#
# Two geometries share the kernels. Padded batches: q, k, v (B, H, T, D), sequence b is batch row b.
# Packed sequences (varlen): q, k, v are (1, H, total, D) views of (total, H, D) tensors, sequence b spans
# rows cu_seqlens[b]:cu_seqlens[b + 1], and row strides are passed as batch strides (see _sequence).


def _mask_args(q: torch.Tensor, key_padding_mask: torch.Tensor | None) -> tuple:
    """(pointer, stride_b, stride_t, HAS_MASK); a bool tensor is read through a same-size uint8 view."""
    if key_padding_mask is None:
        return q, 0, 0, False  # never read: HAS_MASK is False
    mask = key_padding_mask.view(torch.uint8)
    return mask, mask.stride(0), mask.stride(1), True


def _strides(x: torch.Tensor, varlen: bool) -> tuple[int, int, int]:
    """(batch, head, row) strides of a (B, H, T, D) tensor; packed sequences start at a row."""
    return (x.stride(2) if varlen else x.stride(0)), x.stride(1), x.stride(2)


def _lse_strides(lse: torch.Tensor, varlen: bool) -> tuple[int, int]:
    """(batch, head) strides of the (B, H, T) or (1, H, total) fp32 lse/delta; rows are contiguous."""
    return (1 if varlen else lse.stride(0)), lse.stride(1)


def _geometry(q: torch.Tensor, cu_seqlens: torch.Tensor | None, max_seqlen: int) -> tuple[int, int, int]:
    """(number of sequences, heads, longest sequence)."""
    if cu_seqlens is None:
        return q.shape[0], q.shape[1], q.shape[2]
    return cu_seqlens.shape[0] - 1, q.shape[1], max_seqlen


def _precision(q: torch.Tensor) -> str:
    # fp32 inputs get true fp32 dots (SDPA's fp32 is not TF32 either); 16-bit dots ignore the setting
    return "ieee" if q.dtype == torch.float32 else "tf32"


def _t_bucket(T: int) -> int:
    """Autotune key for T (the kernels ignore it). Symbolic T under torch.compile passes through unchanged."""
    return triton.next_power_of_2(T) if isinstance(T, int) else T


def _grid(T: int, H: int, B: int, block: str):
    def grid(meta: dict) -> tuple[int, int, int]:
        return (triton.cdiv(T, meta[block]), H, B)

    return grid


_attn_fwd_tuned = _autotuned(_attn_fwd, _FWD_TILES)
_attn_bwd_dkdv_tuned = _autotuned(_attn_bwd_dkdv, _DKDV_TILES)
_attn_bwd_dq_tuned = _autotuned(_attn_bwd_dq, _DQ_TILES)
_attn_bwd_short_tuned = _autotuned(_attn_bwd_short, _SHORT_TILES, names=("BLOCK_M",))


def _launch_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None, scale: float,
    cu_seqlens: torch.Tensor | None, max_seqlen: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    varlen = cu_seqlens is not None
    B, H, T = _geometry(q, cu_seqlens, max_seqlen)
    o = torch.empty_like(q)
    lse = torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)  # (B, H, T) or (1, H, total)
    mask, smb, smt, has_mask = _mask_args(q, key_padding_mask)
    kernel, tile = _kernel_and_tile(_attn_fwd, _attn_fwd_tuned, _fwd_tiles(q.shape[-1], q.element_size()))
    kernel[_grid(T, H, B, "BLOCK_M")](
        q, k, v, o, lse, mask, cu_seqlens if varlen else q,
        *_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(o, varlen), smb, smt,
        *_lse_strides(lse, varlen), H, T, _t_bucket(T), scale * LOG2E,
        HEAD_DIM=q.shape[-1], HAS_MASK=has_mask, UPCAST=_UPCAST, PRECISION=_precision(q), VARLEN=varlen,
        **tile,
    )  # fmt: skip
    return o, lse


def _launch_bwd(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
    key_padding_mask: torch.Tensor | None, scale: float, cu_seqlens: torch.Tensor | None, max_seqlen: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    varlen = cu_seqlens is not None
    B, H, T = _geometry(q, cu_seqlens, max_seqlen)
    if do.stride(-1) != 1:
        do = do.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    mask, smb, smt, has_mask = _mask_args(q, key_padding_mask)
    seq = cu_seqlens if varlen else q
    lse_strides = _lse_strides(lse, varlen)  # delta shares lse's layout
    consts = dict(
        HEAD_DIM=q.shape[-1], HAS_MASK=has_mask, UPCAST=_UPCAST, PRECISION=_precision(q), VARLEN=varlen
    )
    qkv_strides = (*_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(do, varlen))
    if T <= _SHORT_MAX:
        kernel, tile = _kernel_and_tile(_attn_bwd_short, _attn_bwd_short_tuned, _SHORT_TILES, ("BLOCK_M",))
        kernel[(B * H,)](
            q, k, v, o, do, dq, dk, dv, lse, mask, seq, *qkv_strides[:9], *_strides(o, varlen),
            *qkv_strides[9:],
            *_strides(dq, varlen), *_strides(dk, varlen), *_strides(dv, varlen), smb, smt, *lse_strides,
            H, T, _t_bucket(T), scale * LOG2E, scale, BLOCK_N=_short_block(T), **consts, **tile,
        )  # fmt: skip
        return dq, dk, dv
    delta = torch.empty_like(lse)
    launch(_attn_bwd_preprocess)[(triton.cdiv(T, _PRE_BLOCK), H, B)](
        o, do, delta, seq, *_strides(o, varlen), *_strides(do, varlen), *lse_strides, H, T,
        HEAD_DIM=q.shape[-1], BLOCK_M=_PRE_BLOCK, VARLEN=varlen,
    )  # fmt: skip
    kernel, tile = _kernel_and_tile(_attn_bwd_dkdv, _attn_bwd_dkdv_tuned, _DKDV_TILES)
    kernel[_grid(T, H, B, "BLOCK_N")](
        q, k, v, do, dk, dv, lse, delta, mask, seq, *qkv_strides, *_strides(dk, varlen),
        *_strides(dv, varlen),
        smb, smt, *lse_strides, H, T, _t_bucket(T), scale * LOG2E, scale, **consts, **tile,
    )  # fmt: skip
    kernel, tile = _kernel_and_tile(_attn_bwd_dq, _attn_bwd_dq_tuned, _DQ_TILES)
    kernel[_grid(T, H, B, "BLOCK_M")](
        q, k, v, do, dq, lse, delta, mask, seq, *qkv_strides, *_strides(dq, varlen),
        smb, smt, *lse_strides, H, T, _t_bucket(T), scale * LOG2E, scale, **consts, **tile,
    )  # fmt: skip
    return dq, dk, dv


def _short_block(T: int) -> int:
    # comparisons, not next_power_of_2: a symbolic T under torch.compile only gets guards, no bit tricks
    return next(block for block in (16, 32, 64, 128) if T <= block)


# ----------------------------------------------------------------------------------------------
# autograd: triton_op on GPU (torch.compile traces into the kernels), an opaque custom_op with a fake
# impl under the interpreter (_utils.define_op; see the module docstring)


def _fwd_fake(q, k, v, key_padding_mask, scale, cu_seqlens, max_seqlen):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


def _bwd_fake(do, q, k, v, o, lse, key_padding_mask, scale, cu_seqlens, max_seqlen):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@define_op("flash_attention_fwd", fake=_fwd_fake)
def _fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None, scale: float,
    cu_seqlens: torch.Tensor | None, max_seqlen: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    return _launch_fwd(q, k, v, key_padding_mask, scale, cu_seqlens, max_seqlen)


@define_op("flash_attention_bwd", fake=_bwd_fake)
def _bwd_op(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
    key_padding_mask: torch.Tensor | None, scale: float, cu_seqlens: torch.Tensor | None, max_seqlen: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    return _launch_bwd(do, q, k, v, o, lse, key_padding_mask, scale, cu_seqlens, max_seqlen)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, key_padding_mask, scale, cu_seqlens, max_seqlen = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, key_padding_mask, cu_seqlens)
    ctx.scale, ctx.max_seqlen = scale, max_seqlen


def _backward(ctx, do: torch.Tensor, _dlse: torch.Tensor | None):
    q, k, v, o, lse, key_padding_mask, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = _bwd_op(do, q, k, v, o, lse, key_padding_mask, ctx.scale, cu_seqlens, ctx.max_seqlen)
    return dq, dk, dv, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# public API


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: str, scale: float | None) -> None:
    ndim = dims.count(",") + 1
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != ndim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"attention {name} must be a {ndim}-d {dims} tensor, got shape {shape}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"attention q, k, v shapes must be equal {dims}, got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    if q.numel() == 0:
        raise ValueError(f"attention got an empty input of shape {tuple(q.shape)}")
    if q.shape[-1] > HEAD_DIMS[-1]:
        raise ValueError(
            f"attention head dim D={q.shape[-1]} (shape {tuple(q.shape)}) is over {HEAD_DIMS[-1]}"
        )
    if q.dtype not in DTYPES or not (q.dtype == k.dtype == v.dtype):
        raise ValueError(
            f"attention dtypes must be equal and one of {[str(d) for d in DTYPES]}, "
            f"got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention q, k, v are on different devices: {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda" and not INTERPRET:
        raise ValueError(f"attention kernels need CUDA tensors (or TRITON_INTERPRET=1), got {q.device}")
    if scale is not None and not scale > 0:
        raise ValueError(f"attention scale must be a positive number, got {scale}")


def _check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None,
    scale: float | None, layout: str,
) -> None:  # fmt: skip
    if layout not in LAYOUTS:
        raise ValueError(f"attention layout {layout!r} is not one of {list(LAYOUTS)}")
    _check_qkv(q, k, v, "(B, H, T, D)" if layout == "bhtd" else "(B, T, H, D)", scale)
    if key_padding_mask is not None:
        B, T = (q.shape[0], q.shape[2]) if layout == "bhtd" else q.shape[:2]
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (B, T):
            raise ValueError(
                f"attention key_padding_mask must be a bool (B, T) = ({B}, {T}) tensor, got "
                f"{key_padding_mask.dtype} of shape {tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.device != q.device:
            raise ValueError(f"attention key_padding_mask is on {key_padding_mask.device}, q on {q.device}")


def _check_varlen(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int | None,
    scale: float | None,
) -> int:  # fmt: skip
    """Validate packed-sequence inputs; returns max_seqlen (read from cu_seqlens, a sync, when None)."""
    _check_qkv(q, k, v, "(total, H, D)", scale)
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1:
        got = (
            f"{cu_seqlens.dtype} of shape {tuple(cu_seqlens.shape)}"
            if isinstance(cu_seqlens, torch.Tensor)
            else cu_seqlens
        )
        raise ValueError(f"attention_varlen cu_seqlens must be a 1-d int32 tensor, got {got}")
    if cu_seqlens.numel() < 2 or cu_seqlens.device != q.device:
        raise ValueError(
            f"attention_varlen cu_seqlens needs >= 2 entries on {q.device}, got shape "
            f"{tuple(cu_seqlens.shape)} on {cu_seqlens.device}"
        )
    if max_seqlen is None:
        lengths = cu_seqlens.diff()
        if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != q.shape[0] or bool((lengths < 0).any()):
            raise ValueError(
                f"attention_varlen cu_seqlens must rise from 0 to total={q.shape[0]}, "
                f"got {cu_seqlens.tolist()}"
            )
        max_seqlen = int(lengths.max())
    if not isinstance(max_seqlen, int) or max_seqlen < 1:
        raise ValueError(f"attention_varlen max_seqlen must be a positive int, got {max_seqlen!r}")
    return max_seqlen


def _pad_head_dim(D: int, *xs: torch.Tensor) -> list[torch.Tensor]:
    """Zero-pad the last dim up to the next of HEAD_DIMS (zero columns change neither q.k nor the first D
    columns of the output); make it contiguous if it is not."""
    d_pad = next(d for d in HEAD_DIMS if d >= D)
    if d_pad != D:
        xs = [F.pad(x, (0, d_pad - D)) for x in xs]
    return [x if x.stride(-1) == 1 else x.contiguous() for x in xs]


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    layout: str = "bhtd",
) -> torch.Tensor:
    """Bidirectional flash attention, a drop-in for ``F.scaled_dot_product_attention`` without dropout.

    q, k, v: (B, H, T, D) (or (B, T, H, D) with ``layout="bthd"``, read in place through strides),
    fp16, bf16 or fp32, D <= 128 (other head dims than 32/64/128 are zero-padded up).
    key_padding_mask: (B, T) bool, True where the key is real. scale defaults to 1/sqrt(D).
    Differentiable in q, k and v.
    """
    _check_inputs(q, k, v, key_padding_mask, scale, layout)
    if layout == "bthd":
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, T, D) views
    D = q.shape[-1]
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(D)
    q, k, v = _pad_head_dim(D, q, k, v)
    if key_padding_mask is not None and key_padding_mask.stride(-1) == 0:
        key_padding_mask = key_padding_mask.contiguous()
    o, _ = _fwd_op(q, k, v, key_padding_mask, scale, None, 0)
    o = o[..., :D]
    return o.transpose(1, 2) if layout == "bthd" else o


def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Bidirectional attention over packed sequences, no padding computed.

    q, k, v: (total, H, D), the sequences one after another; sequence b is rows
    ``cu_seqlens[b]:cu_seqlens[b + 1]`` (int32, length B + 1, starting at 0) and attends only to itself.
    max_seqlen: at least the longest sequence (it sizes the grid; rows past it are not computed); pass
    it to avoid a device sync, leave it None to have it (and cu_seqlens) read and checked. Returns
    (total, H, D); differentiable in q, k and v.
    """
    max_seqlen = _check_varlen(q, k, v, cu_seqlens, max_seqlen, scale)
    D = q.shape[-1]
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(D)
    q, k, v = (x.unsqueeze(0).transpose(1, 2) for x in _pad_head_dim(D, q, k, v))  # (1, H, total, D) views
    o, _ = _fwd_op(q, k, v, None, scale, cu_seqlens, max_seqlen)
    return o.transpose(1, 2)[0, ..., :D]  # (total, H, D)


class Attention(nn.Module):
    """Thin module around :func:`attention` (no parameters).

    Public API (``cramming.kernels.Attention``) for using the kernel in other models; cramming's own
    model calls the function through ``cramming.kernels.dispatch`` instead.
    """

    def __init__(self, scale: float | None = None, layout: str = "bhtd") -> None:
        super().__init__()
        self.scale = scale
        self.layout = layout

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return attention(q, k, v, key_padding_mask=key_padding_mask, scale=self.scale, layout=self.layout)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, layout={self.layout!r}"
