"""The one dispatch point between the model and the kernels.

The model calls these functions and never imports Triton. Which implementation
runs is chosen per op from ``cfg.impl``:

- ``impl.kernels``: ``auto`` (default), ``triton`` or ``torch``;
- ``impl.ops.<op>``: the same choice for one op (``layer_norm``, ``gelu``, ``attention``).

``auto`` runs Triton on CUDA tensors, the Triton interpreter on CPU tensors when
``TRITON_INTERPRET=1``, and the PyTorch reference otherwise (with one warning). Under
``torch.compile`` (``configure(..., compiled=True)``) ``auto`` keeps LayerNorm and GELU in
PyTorch, where Inductor fuses them with the neighbouring add, cast and matmul epilogue
(``AUTO_UNDER_COMPILE``); an op moves to Triton there only once a GPU table shows the kernel faster.
The choice changes the numbers only within floating-point tolerances (the kernel tests' rule: at most
twice PyTorch's own error against a float64 reference), never the recipe.

Everything is resolved in ``configure`` (once per process: ``runtime.make_runtime`` calls it with the
job's device, and on a GPU the self-check runs there); ``check_kernels`` only validates a config.
The forward pass reads one plain dict, so it makes no ``importlib``/``os.environ`` call that
``torch.compile`` would have to trace (on torch < 2.12 such a call breaks the graph at every kernel).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Mapping

import torch
from cramming.kernels.activations_ref import bias_gelu_ref, geglu_ref, gelu_ref
from cramming.kernels.flash_attention_ref import attention_ref
from cramming.kernels.norm_ref import layer_norm_ref, layer_norm_residual_ref

CHOICES = ("auto", "triton", "torch")
OPS = ("layer_norm", "gelu", "attention")
DEVICE_TYPES = ("cpu", "cuda")
# What ``auto`` picks on a GPU when the step is compiled. LayerNorm under bf16 autocast with the fp32
# residual stream: Inductor fuses add + LayerNorm + cast in one pass (~12 bytes per element) where the
# kernel needs casts around it (~28); GELU/GeGLU fuse into Inductor's elementwise kernels the same way.
# Attention stays Triton until benchmarks/bench_attention.py on a GPU says SDPA is faster at T=128.
AUTO_UNDER_COMPILE = {"layer_norm": "torch", "gelu": "torch", "attention": "triton"}

_choice: dict[str, str] = {op: "auto" for op in OPS}
_compiled = False
# (device type) -> {op: "triton" | "triton-interpreter" | "torch"}, rebuilt by configure / self_check
_plan: dict[str, dict[str, str]] = {}
_checks: dict[str, str] = {}  # op -> "passed" | "failed: <why>" from the last self_check
_warned: set[str] = set()


def check_kernels(impl_cfg: Mapping | None) -> dict[str, str]:
    """The choice per op (``auto``, ``triton`` or ``torch``) an ``impl`` config asks for, validated only:
    nothing is configured (config validation calls this; ``configure`` is the runtime's)."""
    impl_cfg = impl_cfg or {}
    default = str(impl_cfg.get("kernels", "auto"))
    overrides = impl_cfg.get("ops") or {}
    unknown = set(overrides) - set(OPS)
    if unknown:
        raise ValueError(f"impl.ops has unknown op(s) {sorted(unknown)}; known ops: {list(OPS)}")
    choice = {}
    for op in OPS:
        value = overrides.get(op) or default
        if value not in CHOICES:
            raise ValueError(f"impl kernel choice {value!r} for {op} is not one of {list(CHOICES)}")
        choice[op] = value
    if any(v == "triton" for v in choice.values()) and not triton_available():
        raise ValueError("impl.kernels=triton asks for Triton, but the triton package is not importable")
    return choice


def configure(
    impl_cfg: Mapping | None,
    compiled: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, str]:
    """Resolve every op once for this process from an ``impl`` config; returns the choice per op.

    ``compiled``: the model runs under ``torch.compile`` (``auto`` then follows ``AUTO_UNDER_COMPILE``).
    ``device``: the job's device; on a GPU each Triton op is checked against its reference there first
    (``self_check`` at ``dtype``). ``runtime.make_runtime`` is the caller; the forward only reads the result.
    """
    global _compiled
    choice = check_kernels(impl_cfg)
    _choice.update(choice)
    _compiled = bool(compiled)
    _checks.clear()
    _build_plan()
    if device is not None and torch.device(device).type == "cuda":
        self_check(device, dtype)
    return dict(_choice)


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _build_plan() -> None:
    """Resolve every op for every device type now, from the environment as it is now."""
    has_triton = triton_available()
    interpreting = os.environ.get("TRITON_INTERPRET", "0") == "1"
    _plan.clear()
    for device_type in DEVICE_TYPES:
        interpreted = device_type == "cpu" and interpreting
        _plan[device_type] = {}
        for op in OPS:
            choice = _choice[op]
            if choice == "auto" and _compiled and device_type == "cuda":
                choice = AUTO_UNDER_COMPILE[op]
            runs_triton = choice == "triton" or (
                choice == "auto" and has_triton and (device_type == "cuda" or interpreted)
            )
            _plan[device_type][op] = (
                ("triton-interpreter" if interpreted else "triton") if runs_triton else "torch"
            )


def resolve(op: str, device: torch.device | str) -> str:
    """What runs for ``op`` on tensors of ``device``: ``triton``, ``triton-interpreter`` or ``torch``."""
    return _plan.get(torch.device(device).type, {}).get(op, "torch")


def describe(device: torch.device | str) -> dict[str, str]:
    return {op: resolve(op, device) for op in OPS}


def self_check_results() -> dict[str, str]:
    """Per op: ``passed``, ``failed: <why>`` (auto: PyTorch ran instead), or absent (not checked)."""
    return dict(_checks)


def _use_triton(op: str, tensor: torch.Tensor) -> bool:
    use = _plan.get(tensor.device.type, {}).get(op, "torch") != "torch"
    # no logging while torch.compile traces (a graph break); the eager first call warns. On CUDA auto's
    # PyTorch choice is the compile rule (AUTO_UNDER_COMPILE), not a missing Triton path.
    cpu_fallback = tensor.device.type != "cuda" and _choice[op] == "auto"
    if not use and cpu_fallback and not _warned and not torch.compiler.is_compiling():
        _warned.add(op)
        logging.getLogger("cramming").warning(
            "impl.kernels=auto: no Triton path for %s tensors here (TRITON_INTERPRET=1 runs the interpreter); "
            "the PyTorch reference runs instead",
            tensor.device.type,
        )
    return use


def _kernels():
    import cramming.kernels as kernels

    return kernels


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    if _use_triton("layer_norm", x):
        return _kernels().layer_norm(x, weight, bias, eps)
    return layer_norm_ref(x, weight, bias, eps)


def layer_norm_residual(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(LN(x + residual), x + residual) in one pass where the kernel allows."""
    if _use_triton("layer_norm", x):
        # Under autocast the branch output is bf16/fp16 while the residual stream stays fp32:
        # add in the wider type, as the reference's `x + residual` does.
        common = torch.promote_types(x.dtype, residual.dtype)
        return _kernels().layer_norm_residual(x.to(common), residual.to(common), weight, bias, eps)
    return layer_norm_residual_ref(x, residual, weight, bias, eps)


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    if _use_triton("gelu", x):
        return _kernels().gelu(x, approximate=approximate)
    return gelu_ref(x, approximate)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    if _use_triton("gelu", x):
        return _kernels().bias_gelu(x, bias, approximate=approximate)
    return bias_gelu_ref(x, bias, approximate)


def geglu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    if _use_triton("gelu", x):
        return _kernels().geglu(x, approximate=approximate)
    return geglu_ref(x, approximate)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """(B, H, T, D) attention; key_padding_mask is (B, T), True for real keys."""
    if dropout_p > 0.0:
        # Not while torch.compile traces: a logging call there splits the graph (and a recompile follows).
        warn = not torch.compiler.is_compiling() and "attention-dropout" not in _warned
        if _choice["attention"] != "torch" and warn:
            _warned.add("attention-dropout")
            logging.getLogger("cramming").warning(
                "attention dropout is not fused in the Triton kernel; using PyTorch attention"
            )
        return attention_ref(q, k, v, key_padding_mask, scale=scale, dropout_p=dropout_p)
    if _use_triton("attention", q):
        return _kernels().attention(q, k, v, key_padding_mask=key_padding_mask, scale=scale)
    return attention_ref(q, k, v, key_padding_mask, scale=scale)


def _probe(op: str, device: torch.device, dtype: torch.dtype) -> list[tuple]:
    """Small inputs for one op, and the kernel and reference calls to compare on them."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype).requires_grad_()

    if op == "layer_norm":
        x, w, b = rand(37, 200), rand(200), rand(200)
        return [(lambda k: k.layer_norm(x, w, b, 1e-12), lambda: layer_norm_ref(x, w, b, 1e-12), (x, w, b))]
    if op == "gelu":
        x = rand(37, 2 * 96)
        return [
            (lambda k: k.geglu(x), lambda: geglu_ref(x), (x,)),
            (lambda k: k.gelu(x), lambda: gelu_ref(x), (x,)),
        ]
    q, k_, v = rand(2, 2, 77, 64), rand(2, 2, 77, 64), rand(2, 2, 77, 64)
    mask = torch.arange(77, device=device)[None, :] < torch.tensor([[77], [40]], device=device)  # (B, T)
    return [
        (
            lambda k: k.attention(q, k_, v, key_padding_mask=mask),
            lambda: attention_ref(q, k_, v, mask),
            (q, k_, v),
        )
    ]


def _agrees(kernels, kernel_call, reference_call, inputs) -> bool:
    outputs = []
    for call in (lambda: kernel_call(kernels), reference_call):
        out = call()
        grads = torch.autograd.grad(out.float().square().sum(), inputs)
        outputs.append([out.float(), *[gr.float() for gr in grads]])
    return all(torch.allclose(a, b, rtol=5e-2, atol=5e-2) for a, b in zip(*outputs))


def self_check(device: torch.device | str, dtype: torch.dtype = torch.float32) -> dict[str, str]:
    """Run each op that resolves to Triton once on small inputs, forward and backward, against its reference.

    ``auto``: an op whose kernel fails to compile or disagrees falls back to the PyTorch reference for
    the rest of the process, with a warning naming the error, instead of crashing a long run later.
    ``triton`` (asked for by name): the same failure is a RuntimeError, so a run labelled Triton never
    runs PyTorch. The probes launch fixed tiles, never the autotuner: autotuning on these tiny shapes
    would fill its cache for the real shapes that share a key (T bucket, head dim, mask) with them.
    """
    device = torch.device(device)
    kernels = None
    for op in OPS:
        if resolve(op, device) == "torch":
            continue
        try:
            kernels = kernels or _kernels()
            with _fixed_tiles():
                good = all(_agrees(kernels, *probe) for probe in _probe(op, device, dtype))
            problem = None if good else "results differ from the PyTorch reference"
        except Exception as err:  # compilation or launch errors of any kind
            problem = f"{type(err).__name__}: {err}"
        _checks[op] = "passed" if problem is None else f"failed: {str(problem)[:300]}"
        if problem is None:
            continue
        if _choice[op] == "triton":
            raise RuntimeError(
                f"impl.kernels=triton (or impl.ops.{op}=triton): the {op} kernel failed its start-up check "
                f"on {device} ({str(problem)[:300]}); use impl.kernels=auto to fall back to PyTorch, "
                f"or impl.ops.{op}=torch"
            )
        _choice[op] = "torch"
        _build_plan()
        logging.getLogger("cramming").warning(
            "%s: the Triton kernel failed its start-up check on %s (%s); using the PyTorch reference",
            op,
            device,
            str(problem)[:300],
        )
    return describe(device)


@contextlib.contextmanager
def _fixed_tiles():
    """Kernels launch their first listed tile instead of autotuning (see ``self_check``)."""
    from cramming.kernels import _utils

    previous = _utils.AUTOTUNE
    _utils.AUTOTUNE = False
    try:
        yield
    finally:
        _utils.AUTOTUNE = previous


_build_plan()  # auto, from the environment at import; configure() resolves again
