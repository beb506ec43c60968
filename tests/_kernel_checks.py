"""Shared by the Triton kernel tests: the device they run on and the kernel-vs-reference accuracy check.

Accuracy rule: fp32 must match a float64 reference tightly; for fp16/bf16 the kernel's max error
against the float64 reference (computed from the same low-precision inputs) may be at most twice
PyTorch's own low-precision error against it, plus a tiny epsilon (the FlashAttention tests' rule).
"""

import os

import torch

# With TRITON_INTERPRET=0 on a CUDA machine the same tests run the compiled kernels on the GPU.
DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def fwd_bwd(fn, inputs, grad_outputs, dtype=None):
    """Outputs of fn and the gradients of every input, given fixed output gradients."""
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = torch.autograd.grad(outs, leaves, [g.to(o.dtype) for g, o in zip(grad_outputs, outs)])
    return [o.detach() for o in outs] + list(grads)


def assert_accurate(kernel, torch_own, ref64, names):
    """fp32: tight against float64; low precision: at most 2x PyTorch's own error + tiny."""
    for name, k, t, r in zip(names, kernel, torch_own, ref64):
        assert k.shape == r.shape and k.dtype == t.dtype, name
        scale = 1.0 + r.abs().max().item()
        err = (k.double() - r).abs().max().item()
        if k.dtype == torch.float32:
            assert err <= 2e-6 * scale, f"{name}: fp32 error {err:.3g} (scale {scale:.3g})"
        else:
            torch_err = (t.double() - r).abs().max().item()
            assert err <= 2 * torch_err + 1e-6 * scale, (
                f"{name}: {k.dtype} error {err:.3g} vs torch {torch_err:.3g}"
            )


def compare(kernel_fn, ref_fn, inputs, dtype, names):
    """Every output and every input gradient: kernel vs PyTorch in ``dtype`` vs float64.
    Returns the kernel's outputs then gradients."""
    torch.manual_seed(1)
    ref_outs = ref_fn(*[t.double() for t in inputs])
    ref_outs = ref_outs if isinstance(ref_outs, tuple) else (ref_outs,)
    grad_outputs = [torch.randn_like(o).to(dtype) for o in ref_outs]
    low = [t.to(dtype) for t in inputs]  # the inputs everyone starts from
    kernel = fwd_bwd(kernel_fn, low, grad_outputs)
    torch_own = fwd_bwd(ref_fn, low, grad_outputs)
    ref64 = fwd_bwd(ref_fn, low, grad_outputs, dtype=torch.float64)
    assert_accurate(kernel, torch_own, ref64, names)
    return kernel
