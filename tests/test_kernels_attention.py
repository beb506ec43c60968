"""Flash-attention Triton kernel against PyTorch attention (CPU, TRITON_INTERPRET=1 from conftest).

Oracle: ``attention_ref`` (SDPA, math backend on CPU) in float64. Low-precision dtypes follow the
flash-attention rule: the kernel's max error against the float64 oracle is at most 2x PyTorch's own
error (SDPA run in that dtype) against the same oracle, plus a tiny epsilon.

In the interpreter every block is 64 wide, so T <= 64 runs the one-key-block backward
(``_attn_bwd_short``) and T in 65..130 the general one (preprocess, dK/dV, dQ kernels), with tails.
"""

import inspect
import math

import pytest
import torch
import triton
import triton.language as tl
from _kernel_checks import DEVICE

from cramming.kernels import Attention, attention, attention_ref, attention_varlen, dispatch
from cramming.kernels import _utils as kernel_utils
from cramming.kernels import flash_attention as fa

pytestmark = pytest.mark.interpreter


@pytest.fixture(autouse=True)
def on_device(monkeypatch):
    # one fixed tile per kernel: autotuning every config for every test shape would take minutes on a GPU
    monkeypatch.setattr(kernel_utils, "AUTOTUNE", False)
    with torch.device(DEVICE):  # default device for every tensor the tests create
        yield


EPS = {torch.float32: 1e-6, torch.bfloat16: 1e-4, torch.float16: 1e-5}


def _inputs(B, H, T, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v, do = (torch.randn(B, H, T, D, generator=g, dtype=torch.float64, device="cpu") for _ in range(4))
    return tuple(x.to(DEVICE) for x in (q, k, v, do))


def _mask(B, T, seed=0, all_masked=()):
    """Random key-padding mask with at least one real key per row, except rows in all_masked."""
    g = torch.Generator().manual_seed(seed + 1)
    mask = torch.rand(B, T, generator=g, device="cpu") > 0.4
    mask[:, 0] = True
    for b in all_masked:
        mask[b] = False
    return mask.to(DEVICE)


def _run(fn, q, k, v, do, dtype, **kwargs):
    """Output and (dq, dk, dv) of fn on copies of q, k, v cast to dtype."""
    xs = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
    out = fn(*xs, **kwargs)
    grads = torch.autograd.grad(out, xs, do.to(dtype))
    return [out.detach(), *grads]


def _max_errors(results, oracle):
    return [(r.double() - o).abs().max().item() for r, o in zip(results, oracle)]


def _check_flash_rule(q, k, v, do, dtype, **kwargs):
    oracle = _run(attention_ref, q, k, v, do, torch.float64, **kwargs)
    ours = _run(attention, q, k, v, do, dtype, **kwargs)
    torch_err = _max_errors(_run(attention_ref, q, k, v, do, dtype, **kwargs), oracle)
    our_err = _max_errors(ours, oracle)
    for name, ours_t, ours_e, torch_e in zip(("out", "dq", "dk", "dv"), ours, our_err, torch_err):
        assert ours_t.dtype == dtype
        assert torch.isfinite(ours_t).all(), f"{name} has non-finite values"
        assert ours_e <= 2 * torch_e + EPS[dtype], f"{name}: kernel err {ours_e:.3g} vs torch {torch_e:.3g}"


@pytest.mark.parametrize(
    "T,D,masked",
    [(1, 32, False), (17, 64, True), (64, 128, False), (127, 64, True), (130, 32, False), (130, 128, True)],
)
def test_fp32_matches_reference(T, D, masked):
    q, k, v, do = _inputs(2, 1, T, D)
    mask = _mask(2, T) if masked else None
    _check_flash_rule(q, k, v, do, torch.float32, key_padding_mask=mask)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("T,D,masked", [(40, 64, True), (127, 64, True), (130, 32, False)])
def test_low_precision_flash_rule(dtype, T, D, masked):
    q, k, v, do = _inputs(1, 2, T, D, seed=T)
    mask = _mask(1, T, seed=T) if masked else None
    _check_flash_rule(q, k, v, do, dtype, key_padding_mask=mask)


@pytest.mark.parametrize("T", [45, 70])  # one-key-block backward, and the general one
def test_fully_masked_sequence_gives_zeros_and_finite_grads(T):
    q, k, v, do = _inputs(3, 1, T, 32)
    mask = _mask(3, T, all_masked=(1,))
    mask[2, 30:] = False  # right padding: padded query rows still attend to the 30 real keys
    out, dq, dk, dv = _run(attention, q, k, v, do, torch.float32, key_padding_mask=mask)
    for t in (out, dq, dk, dv):
        assert torch.isfinite(t).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(dq[1], torch.zeros_like(dq[1]))
    assert torch.equal(dk[1], torch.zeros_like(dk[1])) and torch.equal(dv[1], torch.zeros_like(dv[1]))
    # masked keys get no gradient; padded query rows match the reference
    assert (dk[2, :, 30:] == 0).all() and (dv[2, :, 30:] == 0).all()
    oracle = _run(attention_ref, q, k, v, do, torch.float64, key_padding_mask=mask)
    for ours, ref in zip((out, dq, dk, dv), oracle):
        torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T", [100, 130])  # the first key block (64 keys here) entirely padded
def test_left_padding_with_very_negative_scores(T):
    """Catches the running max being reset to 0 (not kept at -inf) after an all-masked key block: with
    every real score below about -87 the probabilities then underflow to 0 and the row comes out zero."""
    g = torch.Generator().manual_seed(5)
    B, H, D, pad = 2, 1, 32, 70  # 70 left-padded keys cover the whole first block of 64
    direction = torch.ones(D, dtype=torch.float64)
    q = (5.5 * direction + 0.5 * torch.randn(B, H, T, D, generator=g, dtype=torch.float64)).to(DEVICE)
    k = (-5.5 * direction + 0.5 * torch.randn(B, H, T, D, generator=g, dtype=torch.float64)).to(DEVICE)
    v, do = (torch.randn(B, H, T, D, generator=g, dtype=torch.float64).to(DEVICE) for _ in range(2))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, :pad] = False
    mask = mask.to(DEVICE)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(D))[..., pad:]  # the real keys' logits
    assert -250 < scores.min() and scores.max() < -90, "the test needs every real logit far below -87"
    out = attention(q.float(), k.float(), v.float(), key_padding_mask=mask)
    assert out.abs().max() > 0.1, "output is zero: the real keys were dropped"
    # logits near -150 carry fp32 rounding of ~1e-5 each, so compare as fp32 SDPA does (flash rule)
    _check_flash_rule(q, k, v, do, torch.float32, key_padding_mask=mask)


def test_custom_scale():
    q, k, v, do = _inputs(1, 2, 40, 64)
    oracle = _run(attention_ref, q, k, v, do, torch.float64, scale=0.37)
    ours = _run(attention, q, k, v, do, torch.float32, scale=0.37)
    for o, r in zip(ours, oracle):
        torch.testing.assert_close(o.double(), r, atol=1e-5, rtol=1e-5)
    default = attention(q.float(), k.float(), v.float())
    assert not torch.allclose(ours[0], default, atol=1e-3), "scale was ignored"


def test_odd_head_dim_is_padded_and_bthd_layout_reads_strided_views():
    B, T, H, D = 2, 19, 2, 48  # D=48 pads to 64
    qkv = torch.randn(B, T, 3, H, D, dtype=torch.float64)  # packed projection output
    q, k, v = qkv.unbind(dim=2)  # each (B, T, H, D), non-contiguous
    mask = _mask(B, T)
    ours = attention(q.float(), k.float(), v.float(), key_padding_mask=mask, layout="bthd")
    assert ours.shape == (B, T, H, D)
    ref = attention_ref(*(x.transpose(1, 2) for x in (q, k, v)), key_padding_mask=mask)  # (B, H, T, D)
    torch.testing.assert_close(ours.double(), ref.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_backward_is_deterministic_and_module_wraps_function():
    q, k, v, do = _inputs(1, 2, 100, 32)
    mask = _mask(1, 100)
    first = _run(attention, q, k, v, do, torch.float32, key_padding_mask=mask)
    module = Attention(scale=1 / math.sqrt(32))
    second = _run(module, q, k, v, do, torch.float32, key_padding_mask=mask)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def _bad_inputs():
    good = torch.zeros(1, 2, 8, 32)
    mask = torch.ones(1, 8, dtype=torch.bool)
    return {
        "3d": ((good[0], good[0], good[0]), {}, "4-d"),
        "shape mismatch": ((good, torch.zeros(1, 2, 9, 32), good), {}, "(1, 2, 9, 32)"),
        "head dim 256": ((torch.zeros(1, 1, 4, 256),) * 3, {}, "D=256"),
        "int dtype": ((good.long(), good.long(), good.long()), {}, "torch.int64"),
        "mixed dtypes": ((good, good.half(), good), {}, "torch.float16"),
        "mask shape": (
            (good, good, good),
            {"key_padding_mask": torch.ones(1, 9, dtype=torch.bool)},
            "(1, 9)",
        ),
        "mask dtype": ((good, good, good), {"key_padding_mask": mask.float()}, "torch.float32"),
        "scale": ((good, good, good), {"scale": -1.0}, "scale"),
        "layout": ((good, good, good), {"layout": "tbhd"}, "tbhd"),
        "empty": ((torch.zeros(1, 2, 0, 32),) * 3, {}, "(1, 2, 0, 32)"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_inputs_raise_value_error(case):
    args, kwargs, needle = _bad_inputs()[case]
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        attention(*args, **kwargs)


def test_dispatch_uses_kernel_and_matches_torch():
    q, k, v, _ = (x.float() for x in _inputs(2, 2, 33, 32))
    mask = _mask(2, 33)
    try:
        dispatch.configure({"kernels": "torch"})
        expected = dispatch.attention(q, k, v, key_padding_mask=mask)
        dispatch.configure({"kernels": "triton"})
        got = dispatch.attention(q, k, v, key_padding_mask=mask)
    finally:
        dispatch.configure({"kernels": "auto"})
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, attention(q, k, v, key_padding_mask=mask), atol=0, rtol=0)


@pytest.mark.parametrize("lengths", [(5, 64, 1, 30), (70, 0, 3, 130)])  # one-key-block / general backward
def test_varlen_matches_each_sequence_alone(lengths):
    H, D, total = 2, 32, sum(lengths)
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    g = torch.Generator().manual_seed(3)
    q, k, v, do = (torch.randn(total, H, D, generator=g, dtype=torch.float64, device="cpu") for _ in range(4))
    ours = _run(
        attention_varlen, *(x.to(DEVICE) for x in (q, k, v, do)), torch.float32, cu_seqlens=cu_seqlens
    )
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        if end == start:
            continue
        one = [x[start:end].transpose(0, 1)[None].to(DEVICE) for x in (q, k, v, do)]  # (1, H, L, D)
        oracle = _run(attention_ref, *one, torch.float64)
        for got, ref in zip(ours, oracle):
            torch.testing.assert_close(got[start:end].double(), ref[0].transpose(0, 1), atol=1e-5, rtol=1e-5)


def test_varlen_bad_inputs_raise_value_error():
    x = torch.zeros(10, 2, 32)
    with pytest.raises(ValueError, match="int32"):
        attention_varlen(x, x, x, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="total=10"):
        attention_varlen(x, x, x, torch.tensor([0, 4, 9], dtype=torch.int32))
    with pytest.raises(ValueError, match="3-d"):
        attention_varlen(x[None], x[None], x[None], torch.tensor([0, 10], dtype=torch.int32))


@pytest.mark.slow
def test_torch_compile_forward_and_backward():
    q, k, v, do = _inputs(1, 2, 33, 32)
    mask = _mask(1, 33)

    def f(q, k, v, key_padding_mask):
        return attention(q * 2, k, v, key_padding_mask=key_padding_mask).sin()

    eager = _run(f, q, k, v, do, torch.float32, key_padding_mask=mask)
    compiled = _run(torch.compile(f, fullgraph=True), q, k, v, do, torch.float32, key_padding_mask=mask)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.slow
def test_autotuned_kernels_on_gpu(monkeypatch):
    monkeypatch.setattr(kernel_utils, "AUTOTUNE", True)
    q, k, v, do = _inputs(2, 4, 256, 64)
    _check_flash_rule(q, k, v, do, torch.bfloat16, key_padding_mask=_mask(2, 256))


@triton.jit
def _offset_probe(OUT, SEQ, stride_b, h, stride_h):
    bx, _ = fa._sequence(SEQ, tl.program_id(0) + 40_000, 128, False)  # an int32 batch index
    tl.store(OUT, fa._base(bx, stride_b, h, stride_h))


def test_base_offsets_are_64_bit():
    """Catches 32-bit base offsets in the attention kernels: program id x stride computed in int32 wraps
    around past 2**31 elements (q, k, v are views of one (B, T, 3, H, D) buffer: at T=512 that is
    B of about 1,800), so the kernel would read and write at negative offsets."""
    out = torch.zeros(1, dtype=torch.int64)
    _offset_probe[(1,)](out, out, 60_000, 11, 100_000)  # 40,000 x 60,000 = 2.4e9 > 2**31
    assert out.item() == 40_000 * 60_000 + 11 * 100_000
    # every kernel addresses its (batch, head) through _base, none multiplies the raw program id
    source = inspect.getsource(fa)
    assert "bx * stride" not in source and "b * stride" not in source


def test_fixed_forward_tile_fits_shared_memory():
    """Catches the fixed (not autotuned) forward tile staging more shared memory than a GPU block has:
    fp32 at D=128 in the first listed tile plans ~256 KB (an H100 block gets ~227 KB), so the self-check
    and CRAMMING_AUTOTUNE=0 runs would fail to launch there; BERT's bf16 D=64 keeps the first tile."""
    for head_dim in fa.HEAD_DIMS:
        for elem_bytes in (2, 4):
            tile = fa._fwd_tiles(head_dim, elem_bytes)[0]
            assert fa._fwd_smem(tile, head_dim, elem_bytes) <= fa._FWD_SMEM_BUDGET, (head_dim, elem_bytes)
    assert fa._fwd_tiles(64, 2)[0] == fa._FWD_TILES[0]
    assert sorted(fa._fwd_tiles(128, 4)) == sorted(fa._FWD_TILES)  # the autotuner still sees every tile
