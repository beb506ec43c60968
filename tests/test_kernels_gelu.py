"""Triton GELU, bias-GELU and GeGLU against the PyTorch reference, in the interpreter.

Accuracy rule (_kernel_checks.compare): fp32 tight against float64; fp16/bf16 at most twice
PyTorch's own low-precision error against the float64 reference, plus a tiny epsilon.
"""

import pytest
import torch
from _kernel_checks import DEVICE, compare

from cramming.kernels import (
    GELU,
    BiasGELU,
    GeGLU,
    bias_gelu,
    bias_gelu_ref,
    dispatch,
    geglu,
    geglu_ref,
    gelu,
    gelu_ref,
)

pytestmark = pytest.mark.interpreter


@pytest.fixture(autouse=True)
def on_device():
    with torch.device(DEVICE):  # default device for every tensor the tests create
        yield


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 768), (7, 1000), (129, 768)]
APPROX = ["none", "tanh"]


def inputs(shape):
    torch.manual_seed(0)
    return 3.0 * torch.randn(shape)  # wide enough to reach both tails of the GELU


@pytest.mark.parametrize("approximate", APPROX)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gelu_matches_reference(shape, dtype, approximate):
    compare(
        lambda x: gelu(x, approximate),
        lambda x: gelu_ref(x, approximate),
        [inputs(shape)],
        dtype,
        ["y", "dx"],
    )


@pytest.mark.parametrize("approximate", APPROX)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bias_gelu_matches_reference(shape, dtype, approximate):
    bias = torch.randn(shape[-1])
    compare(
        lambda x, b: bias_gelu(x, b, approximate),
        lambda x, b: bias_gelu_ref(x, b, approximate),
        [inputs(shape), bias],
        dtype,
        ["y", "dx", "dbias"],
    )


@pytest.mark.parametrize("approximate", APPROX)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1536), (7, 2000), (129, 768)], ids=str)
def test_geglu_matches_reference(shape, dtype, approximate):
    compare(
        lambda x: geglu(x, approximate),
        lambda x: geglu_ref(x, approximate),
        [inputs(shape)],
        dtype,
        ["y", "dx"],
    )


def test_leading_dims_and_mixed_bias_dtype():
    x = inputs((2, 3, 5, 96))
    compare(lambda x: geglu(x), lambda x: geglu_ref(x), [x], torch.float32, ["y", "dx"])
    compare(lambda x: gelu(x, "tanh"), lambda x: gelu_ref(x, "tanh"), [x], torch.float32, ["y", "dx"])
    # autocast-style call: bf16 activations, fp32 bias; the bias gradient comes back in fp32
    xb = x.to(torch.bfloat16).requires_grad_()
    bias = torch.randn(96, requires_grad=True)
    y = bias_gelu(xb, bias)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and bias.grad.dtype == torch.float32
    expected = torch.autograd.grad(bias_gelu_ref(xb.detach().float(), bias).sum(), bias)[0]
    torch.testing.assert_close(bias.grad, expected, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("approximate", APPROX)
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_extreme_values_stay_finite(approximate):
    # (infinities are left out: torch itself returns NaN for gelu(+-inf))
    x = torch.tensor([-3e38, -1e4, -60.0, -10.0, -1e-3, 0.0, 1e-3, 10.0, 60.0, 1e4, 3e38])
    x = x.requires_grad_()
    y = gelu(x, approximate)
    (dx,) = torch.autograd.grad(y.sum(), x)
    expected_y = gelu_ref(x.detach().double(), approximate).float()
    torch.testing.assert_close(y.detach(), expected_y, atol=1e-6, rtol=1e-6)
    assert y[0] == 0 and y[-1] == 3e38  # no NaN or inf from exp overflow in the tails
    x64 = x.detach().double().requires_grad_()
    (expected_dx,) = torch.autograd.grad(gelu_ref(x64, approximate).sum(), x64)
    torch.testing.assert_close(dx, expected_dx.float(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(dx[[0, 1, 2, 8, 9, 10]], torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]))


def test_non_contiguous_inputs_are_handled():
    x = inputs((1000, 7)).t()  # (7, 1000) with strides (1, 7)
    assert not x.is_contiguous()
    compare(lambda x: gelu(x), lambda x: gelu_ref(x), [x], torch.float32, ["y", "dx"])
    compare(lambda x: geglu(x), lambda x: geglu_ref(x), [x], torch.float32, ["y", "dx"])
    wide = inputs((7, 1200))[:, :1000]  # a slice of a wider buffer (row stride 1200)
    compare(lambda x, b: bias_gelu(x, b), lambda x, b: bias_gelu_ref(x, b), [wide, torch.randn(1000)],
            torch.float32, ["y", "dx", "dbias"])  # fmt: skip


def test_raw_ops_refuse_non_contiguous():
    x = inputs((100, 8)).t()
    with pytest.raises(ValueError, match="not contiguous"):
        torch.ops.cramming.geglu_fwd(x, "none")
    with pytest.raises(ValueError, match="not contiguous"):
        torch.ops.cramming.bias_gelu_fwd(x, torch.zeros(100), "none")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: gelu(torch.randn(4), approximate="fast"), "approximate='fast'"),
        (lambda: geglu(torch.randn(4), approximate="erf"), "approximate='erf'"),
        (lambda: GELU(approximate="sigmoid"), "approximate='sigmoid'"),
        (lambda: geglu(torch.randn(3, 7)), r"even last dim; got \(3, 7\)"),
        (lambda: bias_gelu(torch.randn(3, 8), torch.randn(7)), r"bias has shape \(7,\)"),
        (lambda: bias_gelu(torch.randn(3, 8), torch.randn(3, 8)), r"bias has shape \(3, 8\)"),
        (lambda: gelu(torch.arange(4)), "dtype torch.int64"),
        (lambda: gelu(torch.randn(4).double()), "dtype torch.float64"),
    ],
)
def test_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_modules():
    x = inputs((2, 3, 64))
    torch.testing.assert_close(GELU("tanh")(x), torch.nn.GELU("tanh")(x))
    module = BiasGELU(64)
    with torch.no_grad():
        module.bias.copy_(torch.randn(64))
    torch.testing.assert_close(module(x), gelu_ref(x + module.bias))
    torch.testing.assert_close(GeGLU()(x), geglu_ref(x))
    assert "approximate='tanh'" in repr(GELU("tanh"))


@pytest.mark.slow
def test_torch_compile_traces_the_ops():
    """fullgraph=True: the forward and backward ops must trace without graph breaks.

    On CPU with the interpreter the ops are opaque custom_ops with fake implementations
    (triton_op cannot trace interpreted kernels); on a GPU run they are triton_ops."""

    def mlp(x, b):
        return gelu(geglu(bias_gelu(x, b, "tanh")))

    def ref_mlp(x, b):
        return gelu_ref(geglu_ref(bias_gelu_ref(x, b, "tanh")))

    compiled = torch.compile(mlp, fullgraph=True, dynamic=False)
    compare(compiled, ref_mlp, [inputs((2, 3, 128)), torch.randn(128)], torch.float32, ["y", "dx", "dbias"])


def test_ops_dispatch_triton_matches_torch():
    x, b = inputs((7, 768)), torch.randn(768)
    results = {}
    try:
        for choice in ("triton", "torch"):
            assert dispatch.configure({"kernels": choice})["gelu"] == choice
            results[choice] = (dispatch.geglu(x), dispatch.gelu(x, "tanh"), dispatch.bias_gelu(x, b))
    finally:
        dispatch.configure({"kernels": "auto"})
    for a, b in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
