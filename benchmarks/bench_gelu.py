"""GELU family: Triton kernels vs PyTorch eager vs torch.compile, forward and forward+backward.

    python benchmarks/bench_gelu.py --out benchmarks/results          # GPU
    python benchmarks/bench_gelu.py --smoke --out /tmp/bench          # anywhere, tiny

Ops: gelu (exact erf), gelu tanh, bias-GELU, GeGLU. ``width`` is the input's last dim
(GeGLU halves it). Bandwidth counts the bytes an ideal kernel must move, the same for
every provider, times the element size: gelu / bias-GELU forward 2 MN (read x, write y),
forward+backward 5 MN (plus read x, dy; write dx); GeGLU forward 1.5 MN (read x, write
half), forward+backward 4 MN (plus read x, dy (half); write dx).
Results: <out>/gelu_<device>.csv|json|png.
"""

from __future__ import annotations

import torch

try:  # run from the repo root (python -m / import) or as a script from anywhere
    from benchmarks import _common as common
except ImportError:  # pragma: no cover - script mode puts benchmarks/ itself on sys.path
    import _common as common

TARGET = ("geglu", 65536, 3072)  # GeGLU fwd+bwd >= 1.5x eager, >= 1.0x compile
MOVED = {"gelu": (2.0, 5.0), "gelu_tanh": (2.0, 5.0), "bias_gelu": (2.0, 5.0), "geglu": (1.5, 4.0)}


def cases(smoke: bool, as_used: bool = False) -> list[tuple[str, int, int, torch.dtype]]:
    """(op, rows, width, dtype); sized so a GPU run (one torch.compile per shape) stays short.
    ``as_used``: only crammed-BERT's GeGLU as its pretraining step runs it, on the bf16 output (autocast)
    of the FFN's input projection, one microbatch (128 x 128 tokens), width 3072."""
    if as_used:
        return [("geglu", 64 if smoke else 128 * 128, 3072, torch.bfloat16)]
    if smoke:
        return [("gelu", 64, 768, torch.bfloat16), ("gelu_tanh", 64, 768, torch.float32),
                ("bias_gelu", 64, 1000, torch.bfloat16), ("geglu", 64, 1536, torch.bfloat16)]  # fmt: skip
    rows = 512 * 128  # BERT: batch 512 x 128 tokens; FFN width 3072
    out = [(op, rows, 3072, torch.bfloat16) for op in ("gelu", "gelu_tanh", "bias_gelu", "geglu")]
    out.append(("geglu", rows, 3072, torch.float32))
    return out + [("geglu", rows, n, torch.bfloat16) for n in (512, 1024, 2048, 6144, 8192)]


def providers(op: str) -> dict:
    import cramming.kernels as k

    triton_fn, ref_fn = {
        "gelu": (lambda x, b: k.gelu(x), lambda x, b: k.gelu_ref(x)),
        "gelu_tanh": (lambda x, b: k.gelu(x, "tanh"), lambda x, b: k.gelu_ref(x, "tanh")),
        "bias_gelu": (k.bias_gelu, k.bias_gelu_ref),
        "geglu": (lambda x, b: k.geglu(x), lambda x, b: k.geglu_ref(x)),
    }[op]
    return {"triton": triton_fn, "eager": ref_fn, "compile": torch.compile(ref_fn, dynamic=False)}


def make_step(fn, mode: str, x, b):
    if mode == "fwd":
        return lambda: fn(x, b)
    dy = torch.randn_like(fn(x, b))
    # autograd.grad, not .backward(): no accumulation into .grad to time as well
    return lambda: torch.autograd.grad(fn(x, b), (x, b), dy, allow_unused=True)


def bench_case(op, rows, width, dtype, smoke, info) -> list[dict]:
    torch.manual_seed(0)
    device = common.bench_device(smoke)
    x = torch.randn(rows, width, device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(width, device=device, dtype=dtype, requires_grad=True)
    results = []
    for name, fn in providers(op).items():
        for mode, moved in zip(("fwd", "fwd+bwd"), MOVED[op]):
            num_bytes = int(moved * rows * width * x.element_size())
            timed = common.time_bandwidth(make_step(fn, mode, x, b), num_bytes, smoke, info)
            results.append({
                "op": op, "provider": name, "mode": mode, "rows": rows, "width": width,
                "dtype": str(dtype).removeprefix("torch."), **timed,
            })  # fmt: skip
    return results


def report_targets(rows: list[dict]) -> None:
    for row in rows:
        if (row["op"], row["rows"], row["width"], row["dtype"], row["provider"]) == (
            *TARGET,
            "bfloat16",
            "triton",
        ):
            print(
                f"target {row['op']} {row['mode']} {row['rows']}x{row['width']} bf16: "
                f"{row['speedup_vs_eager']:.2f}x eager, {row['speedup_vs_compile']:.2f}x compile, "
                f"{row['pct_peak_bw'] or 0:.0f}% of peak bandwidth (fwd+bwd goal: >= 1.5x eager, >= 1.0x compile)"
            )


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--as-used", action="store_true", help="only the GeGLU the pretraining step runs")
    args = parser.parse_args(argv)
    smoke = common.setup(args)
    info = common.device_info()
    rows = []
    for op, m, n, dtype in cases(smoke, args.as_used):
        if args.bert_only and n != 3072 and not smoke:  # the BERT FFN width; the rest is the width sweep
            continue
        rows += bench_case(op, m, n, dtype, smoke, info)
        common.print_case(rows[-6:])
    common.add_speedups(rows, keys=("op", "mode", "rows", "width", "dtype"))
    report_targets(rows)
    sweep = [row for row in rows if row["op"] == "geglu" and row["dtype"] == "bfloat16"]
    title = f"GeGLU bf16, {rows[0]['rows']} rows, {info['name']}"
    common.save_width_sweep(rows, sweep, "gelu_as_used" if args.as_used else "gelu", args.out, smoke, title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
