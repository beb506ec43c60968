"""Triton LayerNorm (plain and residual-fused) against the PyTorch reference, in the interpreter.

Accuracy rule (_kernel_checks.compare): fp32 must match a float64 reference tightly; for
fp16/bf16 the kernel's max error against the float64 reference (computed from the same
low-precision inputs) may be at most twice PyTorch's own low-precision error against it, plus a
tiny epsilon (the rule the FlashAttention tests use).
"""

import os

import pytest
import torch
from _kernel_checks import DEVICE, compare

from cramming.kernels import (
    LayerNorm,
    dispatch,
    layer_norm,
    layer_norm_ref,
    layer_norm_residual,
    layer_norm_residual_ref,
)

pytestmark = pytest.mark.interpreter


@pytest.fixture(autouse=True)
def on_device():
    with torch.device(DEVICE):  # default device for every tensor the tests create
        yield


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 768), (7, 1000), (129, 768), (129, 1000)]


def make_params(n, bias=True):
    torch.manual_seed(0)
    weight = 1.0 + 0.2 * torch.randn(n)
    return weight, (0.2 * torch.randn(n) if bias else None)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_layer_norm_matches_reference(shape, dtype, with_bias):
    weight, bias = make_params(shape[-1], with_bias)
    x = 2.0 + 3.0 * torch.randn(shape)  # a non-zero mean exercises the centring
    if with_bias:
        fn, ref = (
            (lambda x, w, b: layer_norm(x, w, b, 1e-12)),
            (lambda x, w, b: layer_norm_ref(x, w, b, 1e-12)),
        )
        compare(fn, ref, [x, weight, bias], dtype, ["y", "dx", "dw", "db"])
    else:
        fn, ref = (
            (lambda x, w: layer_norm(x, w, None, 1e-12)),
            (lambda x, w: layer_norm_ref(x, w, None, 1e-12)),
        )
        compare(fn, ref, [x, weight], dtype, ["y", "dx", "dw"])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7, 1000), (129, 768)], ids=str)
def test_layer_norm_residual_gradients_into_both_outputs(shape, dtype):
    weight, bias = make_params(shape[-1])
    x, residual = torch.randn(shape), 2.0 * torch.randn(shape)
    compare(
        lambda x, r, w, b: layer_norm_residual(x, r, w, b, 1e-12),
        lambda x, r, w, b: layer_norm_residual_ref(x, r, w, b, 1e-12),
        [x, residual, weight, bias],
        dtype,
        ["y", "sum", "dx", "dresidual", "dw", "db"],
    )


def test_layer_norm_residual_only_normalised_output_used():
    weight, bias = make_params(1000)
    x, residual = torch.randn(7, 1000), torch.randn(7, 1000)

    def first(fn):
        return lambda x, r, w, b: fn(x, r, w, b, 1e-12)[0]

    compare(first(layer_norm_residual), first(layer_norm_residual_ref), [x, residual, weight, bias], torch.float32,
            ["y", "dx", "dresidual", "dw", "db"])  # fmt: skip


@pytest.mark.parametrize("width", [1536, 8192])
def test_wide_rows_and_leading_dims(width):
    weight, bias = make_params(width)
    x = torch.randn(2, 1, 3, width)  # leading dims flatten to 6 rows
    compare(lambda *t: layer_norm(*t), lambda *t: layer_norm_ref(*t), [x, weight, bias], torch.float32,
            ["y", "dx", "dw", "db"])  # fmt: skip


def test_constant_rows_and_large_eps():
    weight, bias = make_params(768)
    x = torch.full((3, 768), 5.0)  # zero variance: y = bias exactly
    y = layer_norm(x, weight, bias, eps=1e-12)
    torch.testing.assert_close(y, bias.expand(3, -1), atol=1e-6, rtol=0)
    x = torch.randn(5, 768)
    torch.testing.assert_close(layer_norm(x, weight, bias, eps=0.5), layer_norm_ref(x, weight, bias, 0.5))


def test_empty_rows():
    weight, bias = make_params(768)
    x = torch.randn(0, 768, requires_grad=True)
    w = weight.clone().requires_grad_()
    y = layer_norm(x, w, bias)
    y.sum().backward()
    assert y.shape == (0, 768) and torch.equal(w.grad, torch.zeros(768))


def test_non_contiguous_input_is_handled():
    weight, bias = make_params(768)
    base = torch.randn(768, 9)
    x = base.t()  # (9, 768) with strides (1, 9)
    assert not x.is_contiguous()
    compare(lambda *t: layer_norm(*t), lambda *t: layer_norm_ref(*t), [x, weight, bias], torch.float32,
            ["y", "dx", "dw", "db"])  # fmt: skip
    x = torch.randn(9, 768, requires_grad=True)
    layer_norm(x, weight, bias).sum().backward()  # the output gradient is expanded (stride 0)
    expected = torch.autograd.grad(layer_norm_ref(x, weight, bias).sum(), x)[0]
    torch.testing.assert_close(x.grad, expected, atol=1e-5, rtol=1e-5)


def test_raw_op_refuses_non_contiguous():
    weight, _ = make_params(768)
    x = torch.randn(768, 9).t()
    with pytest.raises(ValueError, match="not contiguous"):
        torch.ops.cramming.layer_norm_fwd(x, weight, None, 1e-12)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda w, b: (torch.randn(3, 768), torch.ones(700), b), r"weight has shape \(700,\)"),
        (lambda w, b: (torch.randn(3, 768), w, torch.zeros(3, 768)), r"bias has shape \(3, 768\)"),
        (lambda w, b: (torch.randn(3, 768).to(torch.int64), w, b), "dtype torch.int64"),
        (lambda w, b: (torch.randn(3, 768).double(), w, b), "dtype torch.float64"),
        (lambda w, b: (torch.randn(3, 20000), torch.ones(20000), None), "width 20000 exceeds"),
        (lambda w, b: (torch.randn(3, 0), torch.ones(0), None), r"got \(3, 0\)"),
        (lambda w, b: (torch.tensor(1.0), torch.ones(1), None), r"got \(\)"),
    ],
)
def test_bad_inputs_raise_value_error(make, match):
    weight, bias = make_params(768)
    with pytest.raises(ValueError, match=match):
        layer_norm(*make(weight, bias))


def test_residual_shape_mismatch_raises():
    weight, bias = make_params(768)
    with pytest.raises(ValueError, match=r"residual \(3, 767\)"):
        layer_norm_residual(torch.randn(3, 768), torch.randn(3, 767), weight, bias)
    with pytest.raises(ValueError, match="torch.float16"):
        layer_norm_residual(torch.randn(3, 768), torch.randn(3, 768).half(), weight, bias)


def test_module_matches_torch_layer_norm():
    torch.manual_seed(0)
    ours, theirs = LayerNorm(1000, eps=1e-12), torch.nn.LayerNorm(1000, eps=1e-12)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(1000))
        ours.bias.copy_(torch.randn(1000))
    theirs.load_state_dict(ours.state_dict())
    x, r = torch.randn(2, 4, 1000), torch.randn(2, 4, 1000)
    torch.testing.assert_close(ours(x), theirs(x))
    y, s = ours(x, r)
    torch.testing.assert_close(s, x + r)
    torch.testing.assert_close(y, theirs(x + r))
    assert LayerNorm(8, bias=False).bias is None


@pytest.mark.slow
def test_torch_compile_traces_the_ops():
    """fullgraph=True: the ops (and their backward ops) must be traceable, not graph breaks.

    On CPU with the interpreter the ops are opaque custom_ops with fake implementations
    (triton_op cannot trace interpreted kernels); on a GPU run they are triton_ops."""
    weight, bias = make_params(1000)

    def block(x, r, w, b):
        y, s = layer_norm_residual(x, r, w, b, 1e-12)
        return layer_norm(y + s, w, None, 1e-12)

    def ref_block(x, r, w, b):
        y, s = layer_norm_residual_ref(x, r, w, b, 1e-12)
        return layer_norm_ref(y + s, w, None, 1e-12)

    x, r = torch.randn(2, 3, 1000), torch.randn(2, 3, 1000)
    compiled = torch.compile(block, fullgraph=True, dynamic=False)
    compare(compiled, ref_block, [x, r, weight, bias], torch.float32, ["y", "dx", "dresidual", "dw", "db"])


def test_ops_dispatch_triton_matches_torch():
    weight, bias = make_params(768)
    x, r = torch.randn(7, 768), torch.randn(7, 768)
    try:
        assert dispatch.configure({"kernels": "triton"})["layer_norm"] == "triton"
        triton_out = (
            dispatch.layer_norm(x, weight, bias, 1e-12),
            *dispatch.layer_norm_residual(x, r, weight, bias, 1e-12),
        )
        dispatch.configure({"kernels": "torch"})
        torch_out = (
            dispatch.layer_norm(x, weight, bias, 1e-12),
            *dispatch.layer_norm_residual(x, r, weight, bias, 1e-12),
        )
    finally:
        dispatch.configure({"kernels": "auto"})
    for a, b in zip(triton_out, torch_out):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)


_COMPILE_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import cramming.kernels.activations as act
import cramming.kernels.norm as norm

def compile_(kernel, tensors, ints, constexprs, num_warps):
    sig = {**{name: "*bf16" for name in tensors}, **{name: "i32" for name in ints}}
    sig = {name: sig.get(name, "constexpr") for name in kernel.arg_names}
    sig.update({name: "*fp32" for name in ("Mean", "Rstd", "DW", "DB") if name in sig})
    sig.update({"eps": "fp32"} if "eps" in sig else {})
    src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
    triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})

ln = norm._tile(768)
blocks = {"BLOCK_N": ln["BLOCK_N"], "BLOCK_M": ln["BLOCK_M"]}
compile_(norm._fwd_kernel, "XRWBYS", ["M", "N"], {"HAS_RESIDUAL": True, "HAS_BIAS": True, **blocks}, ln["num_warps"])
compile_(norm._bwd_kernel, ["DY", "X", "W", "DS", "DX"], ["M", "N", "rows_per_program"],
         {"HAS_DSUM": True, "HAS_BIAS": True, **blocks}, ln["num_warps"])
tile = act._tile(1536)
for tanh in (False, True):
    compile_(act._gelu_bwd_kernel, ["DY", "X", "DX"], ["n"], {"TANH": tanh, "BLOCK": act.FLAT["BLOCK"]}, 4)
    compile_(act._geglu_bwd_kernel, ["DY", "X", "DX"], ["M", "N"],
             {"TANH": tanh, "BLOCK_M": tile["BLOCK_M"], "BLOCK_N": tile["BLOCK_N"]}, tile["num_warps"])
print("compiled")
"""


@pytest.mark.slow
def test_kernels_compile_for_a_gpu_target():
    """The interpreter accepts code the GPU compiler refuses (e.g. non-constexpr globals): compile
    the main kernels for sm_90 in a fresh process (no GPU needed; triton ships ptxas)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90], env=env, capture_output=True, text=True)
    if done.returncode != 0 and "ptxas" in done.stderr and "not found" in done.stderr.lower():
        pytest.skip("this triton install has no ptxas to compile for a CUDA target")
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
