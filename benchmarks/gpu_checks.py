"""The measurements of benchmarks/run_gpu.sh that are no training run and no speed benchmark.

    python benchmarks/gpu_checks.py env OUT.json      # versions, GPU, peak, TF32, what runs per op (after
                                                      # the self-check) for impl.kernels=auto/triton/torch
    python benchmarks/gpu_checks.py dynamo OUT.json   # graph breaks and graph counts of the pretraining
                                                      # forward under torch.compile, auto/triton/torch
    python benchmarks/gpu_checks.py errors OUT.json   # bf16 forward/backward error of each op vs fp64,
                                                      # Triton kernel and PyTorch side by side, real shapes

``--device cpu --small`` runs each on CPU (the Triton interpreter, tiny shapes): tests/test_run_gpu.py
does so to prove the scripts run before a GPU is lent. Each command writes one JSON file and prints it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

KERNEL_CHOICES = ("auto", "triton", "torch")


def _configure(kernels: str, compiled: bool) -> None:
    from cramming.kernels import dispatch

    dispatch.configure({"kernels": kernels}, compiled=compiled)


def env_report(device: str, save=lambda partial: None) -> dict:
    """Versions, the device, its MFU peak, and per kernel choice what runs after the self-check.
    ``save(partial)`` after each stage, so a step cut by its time cap still leaves what it found."""
    import triton

    from cramming import perf
    from cramming.kernels import dispatch
    from cramming.runtime import make_runtime

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        name = torch.cuda.get_device_name(0)
        found = perf.gpu_table_peak(name)
        info |= {"gpu": name, "capability": list(torch.cuda.get_device_capability(0)),
                 "sms": props.multi_processor_count, "memory_gb": props.total_memory / 2**30,
                 "peak_table_key": found and found[0], "peak_bf16_tflops": found and found[1]}  # fmt: skip
    kernels = info["kernels"] = {}
    save(info)
    for choice in KERNEL_CHOICES:
        for compiled in (False, True):
            key = f"{choice}/{'compile' if compiled else 'eager'}"
            try:
                threads = 1 if device == "cpu" else None
                impl = {"device": device, "kernels": choice, "compile": compiled, "precision": "bf16"}
                make_runtime({**impl, "threads": threads})
                kernels[key] = {"ran": dispatch.describe(device), "self_check": dispatch.self_check_results()}
            except Exception as err:  # impl.kernels=triton with a failing kernel: the run would refuse
                kernels[key] = {"error": f"{type(err).__name__}: {err}"[:400]}
            save(info)
    info["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return info


def tiny_mlm(arch_name: str, vocab: int) -> torch.nn.Module:
    from cramming.conf import read_yaml
    from cramming.models import build_mlm

    arch = read_yaml("arch", f"{arch_name}.yaml")
    torch.manual_seed(0)
    return build_mlm(arch, vocab)


def mlm_batch(batch: int, seq: int, vocab: int, device: str) -> dict:
    from cramming.data import MLMCollator

    special = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    g = torch.Generator().manual_seed(0)
    collated = MLMCollator(vocab, special)(torch.randint(5, vocab, (batch, seq), generator=g), generator=g)
    return {name: t.to(device) for name, t in collated.items()}


def dynamo_report(device: str, arch: str, batch: int, dtype: torch.dtype, save=lambda partial: None) -> dict:
    """Per kernel choice (auto first: the default): Dynamo's graphs and breaks for the pretraining forward
    as a compiled run traces it (``torch._dynamo.explain``). Recompiles show in the compiled training
    runs' logs (TORCH_LOGS=recompiles), which run_gpu_report counts."""
    import torch._dynamo

    vocab = 32768 if arch != "tiny" else 1024
    model = tiny_mlm(arch, vocab).to(device)
    data = mlm_batch(batch, 128, vocab, device)
    result = {}
    for choice in KERNEL_CHOICES:
        _configure(choice, compiled=True)
        torch._dynamo.reset()
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            explained = torch._dynamo.explain(model)(**data)
        result[choice] = {
            "graphs": explained.graph_count,
            "graph_breaks": explained.graph_break_count,
            "break_reasons": [str(r.reason)[:200] for r in explained.break_reasons[:3]],
        }
        save(result)
    _configure("auto", compiled=False)
    return result


def _error(ours: torch.Tensor, exact: torch.Tensor) -> dict:
    """max abs error and relative RMS error (RMS of the difference over RMS of the exact values)."""
    diff = ours.double() - exact
    rms = exact.square().mean().sqrt().clamp_min(1e-30)
    return {"max_abs": diff.abs().max().item(), "rel_rms": (diff.square().mean().sqrt() / rms).item()}


def _with_grads(fn, inputs: list[torch.Tensor], upstream: torch.Tensor, dtype=None) -> list[torch.Tensor]:
    """[fn(*inputs), d(fn . upstream)/d(each input)], inputs cast to ``dtype`` first when given."""
    leaves = [(x.detach().to(dtype) if dtype else x.detach().clone()).requires_grad_() for x in inputs]
    out = fn(*leaves)
    return [out.detach(), *torch.autograd.grad(out, leaves, upstream.to(out.dtype))]


def errors_report(device: str, small: bool, save=lambda partial: None) -> dict:
    """bf16 error vs fp64 at BERT's shapes: attention (B=128, H=12, T=128, D=64, half the batch padded),
    add + LayerNorm as the model runs it (bf16 branch, fp32 residual stream, width 768) and GeGLU on the
    bf16 FFN output (16384 x 3072); the Triton kernel and the PyTorch reference, each in the given dtypes.
    Per op: ``fwd`` and ``bwd_<i>`` (gradient of input i) as max abs and relative RMS error."""
    from cramming.kernels import dispatch

    B, H, T, D, N, F = (2, 2, 40, 32, 64, 96) if small else (128, 12, 128, 64, 768, 3072)
    g = torch.Generator(device=device).manual_seed(0)

    def rand(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, generator=g, device=device).to(dtype)

    lengths = torch.where(torch.arange(B, device=device) % 2 == 0, T, T // 2)
    mask = torch.arange(T, device=device)[None, :] < lengths[:, None]  # (B, T)
    fp32 = torch.float32
    cases = {  # name: (fn, inputs)
        "attention": (lambda q, k, v: dispatch.attention(q, k, v, key_padding_mask=mask),
                      [rand(B, H, T, D), rand(B, H, T, D), rand(B, H, T, D)]),
        "add_layer_norm": (lambda x, r, w, b: dispatch.layer_norm_residual(x, r, w, b, 1e-12)[0],
                           [rand(B * T, N), rand(B * T, N, dtype=fp32), 1 + 0.1 * rand(N, dtype=fp32),
                            0.1 * rand(N, dtype=fp32)]),
        "geglu": (lambda h: dispatch.geglu(h), [rand(B * T, F)]),
    }  # fmt: skip
    result: dict = {"triton": {}, "torch": {}}
    for name, (fn, inputs) in cases.items():
        _configure("torch", compiled=False)
        exact_out = fn(*[x.double() for x in inputs])
        upstream = torch.randn(exact_out.shape, generator=g, device=device, dtype=torch.float64)
        exact = _with_grads(fn, inputs, upstream, torch.float64)
        for choice in ("triton", "torch"):
            _configure(choice, compiled=False)
            ours = _with_grads(fn, inputs, upstream)
            labels = ["fwd", *[f"bwd_{i}" for i in range(len(inputs))]]
            result[choice][name] = {lab: _error(a, e) for lab, a, e in zip(labels, ours, exact)}
        save(result)
    _configure("auto", compiled=False)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("env", "dynamo", "errors"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny shapes and arch (CPU smoke runs)")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(partial: dict) -> None:
        args.out.write_text(json.dumps(partial, indent=2) + "\n")

    if args.command == "env":
        result = env_report(args.device, save)
    elif args.command == "dynamo":
        arch, batch = ("tiny", 2) if args.small else ("crammed-bert", 8)
        dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
        result = dynamo_report(args.device, arch, batch, dtype, save)
    else:
        result = errors_report(args.device, args.small, save)
    save(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
