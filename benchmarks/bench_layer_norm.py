"""LayerNorm: Triton kernel vs PyTorch eager vs torch.compile, forward and forward+backward.

    python benchmarks/bench_layer_norm.py --out benchmarks/results          # GPU
    python benchmarks/bench_layer_norm.py --smoke --out /tmp/bench          # anywhere, tiny

Shapes: BERT (rows = batch x 128 tokens; widths 768 and 3072), a width sweep, and the
residual-fused variant. Bandwidth counts the bytes an ideal kernel must move (same model
for every provider), so GB/s are comparable across providers:
forward 2 MN (read x, write y), forward+backward 5 MN (plus read x, dy; write dx), times
the element size; the residual variant moves 4 MN forward and 8 MN in total.
``--as-used``: only what crammed-BERT's pretraining step runs, at one microbatch (128 x 128 = 16,384
rows, width 768): LayerNorm of the fp32 residual stream, and add + LayerNorm with the bf16 branch output
(autocast) added to the fp32 residual stream, fp32 weights, the normed output cast to bf16 for the next
matmul (dtype ``bf16+fp32``: 12 bytes per element forward, read 2 + 4, write 4 + 2; 28 forward+backward).
The Triton provider is the dispatch's path (cast the branch to fp32, fused kernel, cast the output).
Results: <out>/layer_norm_<device>.csv|json|png.
"""

from __future__ import annotations

import torch

try:  # run from the repo root (python -m / import) or as a script from anywhere
    from benchmarks import _common as common
except ImportError:  # pragma: no cover - script mode puts benchmarks/ itself on sys.path
    import _common as common

EPS = 1e-12
TARGET_SHAPE = (65536, 768)


MIXED = "bf16+fp32"  # the model's add + LayerNorm under autocast: bf16 branch, fp32 residual stream
MIXED_BYTES = {"fwd": 12, "fwd+bwd": 28}  # per element, see the module docstring


def shapes(smoke: bool, as_used: bool = False) -> list[tuple[str, int, int, torch.dtype | str, bool]]:
    """(group, rows, width, dtype, residual) cases; sized so a GPU run (one torch.compile per
    shape) stays around a minute."""
    if as_used:
        rows = 64 if smoke else 128 * 128  # one microbatch of 128 sequences
        return [("as-used", rows, 768, torch.float32, False), ("as-used", rows, 768, MIXED, True)]
    if smoke:
        return [("bert", 64, 768, torch.bfloat16, False), ("bert", 64, 768, torch.bfloat16, True),
                ("sweep", 64, 1000, torch.float32, False)]  # fmt: skip
    rows = 512 * 128  # BERT: batch 512 x 128 tokens
    cases = [("bert", rows, n, torch.bfloat16, False) for n in (768, 3072)]
    cases += [("bert", rows, 768, torch.float32, False), ("bert", rows, 768, torch.bfloat16, True)]
    return cases + [("sweep", rows, n, torch.bfloat16, False) for n in (256, 1024, 2048, 4096, 8192)]


def _as_used(add_norm):
    """add + LayerNorm the way the model runs it: the branch promoted to the residual's fp32, the normed
    output cast to bf16 (what the next matmul reads under autocast), the fp32 sum kept for the stream."""

    def run(x, r, w, b, eps):
        normed, summed = add_norm(x.to(r.dtype), r, w, b, eps)
        return normed.to(torch.bfloat16), summed

    return run


def providers(residual: bool, mixed: bool = False) -> dict:
    from cramming.kernels import layer_norm, layer_norm_ref, layer_norm_residual, layer_norm_residual_ref

    if mixed:
        eager = _as_used(layer_norm_residual_ref)
        return {
            "triton": _as_used(layer_norm_residual),
            "eager": eager,
            "compile": torch.compile(eager, dynamic=False),
        }
    if residual:
        return {
            "triton": layer_norm_residual,
            "eager": layer_norm_residual_ref,
            "compile": torch.compile(layer_norm_residual_ref, dynamic=False),
        }
    return {
        "triton": layer_norm,
        "eager": layer_norm_ref,
        "compile": torch.compile(layer_norm_ref, dynamic=False),
    }


def make_step(fn, mode: str, x, r, w, b):
    """A zero-argument callable running one forward (or forward+backward) of fn."""
    args = (x, w, b) if r is None else (x, r, w, b)
    if mode == "fwd":
        return lambda: fn(*args, EPS)
    outs = fn(*args, EPS)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = [torch.randn_like(o) for o in outs]
    # autograd.grad, not .backward(): no accumulation into .grad to time as well
    return lambda: torch.autograd.grad(fn(*args, EPS), args, grads)


def bench_case(group, rows, width, dtype, residual, smoke, info) -> list[dict]:
    device = common.bench_device(smoke)
    torch.manual_seed(0)
    mixed = dtype == MIXED
    stream = torch.float32 if mixed else dtype  # the residual stream's and the weights' dtype
    x = torch.randn(rows, width, device=device, dtype=torch.bfloat16 if mixed else dtype, requires_grad=True)
    r = torch.randn(rows, width, device=device, dtype=stream, requires_grad=True) if residual else None
    w = torch.randn(width, device=device, dtype=stream, requires_grad=True)
    b = torch.randn(width, device=device, dtype=stream, requires_grad=True)
    moved = {"fwd": 4 if residual else 2, "fwd+bwd": 8 if residual else 5}
    results = []
    for name, fn in providers(residual, mixed).items():
        for mode in ("fwd", "fwd+bwd"):
            per_element = MIXED_BYTES[mode] if mixed else moved[mode] * x.element_size()
            num_bytes = per_element * rows * width
            timed = common.time_bandwidth(make_step(fn, mode, x, r, w, b), num_bytes, smoke, info)
            results.append({
                "op": "layer_norm_residual" if residual else "layer_norm", "group": group, "provider": name,
                "mode": mode, "rows": rows, "width": width, "dtype": str(dtype).removeprefix("torch."),
                **timed,
            })  # fmt: skip
    return results


def report_targets(rows: list[dict]) -> None:
    """The project's targets at 65,536 x 768 bf16 (only meaningful on a GPU)."""
    for row in rows:
        if (row["op"], row["provider"], row["dtype"]) != ("layer_norm", "triton", "bfloat16"):
            continue
        if (row["rows"], row["width"]) != TARGET_SHAPE:
            continue
        if row["mode"] == "fwd":
            print(f"target fwd >= 70% of peak bandwidth: {row['pct_peak_bw']}")
        else:
            print(
                f"target fwd+bwd >= 1.3x eager, >= 1.0x compile: {row['speedup_vs_eager']:.2f}x eager, "
                f"{row['speedup_vs_compile']:.2f}x compile"
            )


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--as-used", action="store_true", help="only the cases the pretraining step runs")
    args = parser.parse_args(argv)
    smoke = common.setup(args)
    info = common.device_info()
    rows = []
    for group, m, n, dtype, residual in shapes(smoke, args.as_used):
        if args.bert_only and group != "bert":
            continue
        rows += bench_case(group, m, n, dtype, residual, smoke, info)
        common.print_case(rows[-6:])
    common.add_speedups(rows, keys=("op", "group", "mode", "rows", "width", "dtype"))
    report_targets(rows)
    # the width sweep plus the BERT widths at the same row count and dtype
    sweep = [
        row
        for row in rows
        if row["op"] == "layer_norm" and (row["rows"], row["dtype"]) == (rows[0]["rows"], "bfloat16")
    ]
    title = f"LayerNorm bf16, {rows[0]['rows']} rows, {info['name']}"
    prefix = "layer_norm_as_used" if args.as_used else "layer_norm"
    common.save_width_sweep(rows, sweep, prefix, args.out, smoke, title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
