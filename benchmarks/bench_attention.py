"""Flash-attention kernel vs PyTorch attention, forward and forward+backward, in TFLOP/s and ms.

    python benchmarks/bench_attention.py                 # GPU: T in {128, 512, 1024, 4096}, B*T = 65536
    python benchmarks/bench_attention.py --smoke         # tiny shapes through the interpreter
    python benchmarks/bench_attention.py --bert-only     # crammed-BERT's shape only: B=128, T=128

Providers: this kernel (``triton``); SDPA restricted to each backend in turn with
``torch.nn.attention.sdpa_kernel`` (``sdpa_flash``, ``sdpa_efficient``, ``sdpa_cudnn``, ``sdpa_math``;
a backend that refuses the inputs, e.g. flash with a padding mask, is listed as unsupported); eager
bmm-softmax-bmm (``eager``) and ``torch.compile`` of it (``compile``). H = 12, D = 64, bf16, with
and without a key-padding mask (lengths drawn in [T/2, T]). FLOPs: forward 4*B*H*T^2*D, backward
2.5x forward (so fwd+bwd = 3.5x), counted over the full padded T.

Writes ``attention_<device>.csv/.json`` and ``attention_<device>_<mode>_<pad|nopad>.png`` under
``--out``. Rows carry ``speedup_vs_best_sdpa`` (best SDPA ms / this provider's ms) and, for the
kernel, its max abs difference to SDPA on the same inputs.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

GPU_SHAPES = {"T": (128, 512, 1024, 4096), "tokens": 65536, "H": 12, "D": 64}
SMOKE_SHAPES = {"T": (16, 40), "tokens": 80, "H": 2, "D": 32}
SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")
MODES = ("fwd", "fwd+bwd")
_NO_TIME = {"ms": None, "ms_p20": None, "ms_p80": None}


def eager_attention(q, k, v, key_padding_mask=None):
    """bmm -> softmax (fp32) -> bmm, the way a plain BERT implementation writes it."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)  # (B, H, T, T)
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.matmul(probs, v)  # (B, H, T, D)


def _sdpa(backend_name: str) -> Callable:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, f"{backend_name.upper()}_ATTENTION", None) or SDPBackend.MATH

    def run(q, k, v, key_padding_mask=None):
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]  # (B, 1, 1, T)
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    return run


def providers() -> dict[str, Callable]:
    from cramming.kernels import attention

    table = {"triton": attention}
    table.update({f"sdpa_{name}": _sdpa(name) for name in SDPA_BACKENDS})
    table["eager"] = eager_attention
    table["compile"] = torch.compile(eager_attention, dynamic=False)
    return table


def make_inputs(B: int, H: int, T: int, D: int, padded: bool, device: torch.device, dtype: torch.dtype):
    g = torch.Generator(device="cpu").manual_seed(T)
    q, k, v, do = (torch.randn(B, H, T, D, generator=g).to(device, dtype) for _ in range(4))
    mask = None
    if padded:  # right padding, real lengths in [T/2, T]
        lengths = torch.randint(max(1, T // 2), T + 1, (B,), generator=g)
        mask = (torch.arange(T)[None, :] < lengths[:, None]).to(device)  # (B, T)
    return q, k, v, do, mask


def _step(fn: Callable, mode: str, q, k, v, do, mask) -> Callable[[], object]:
    if mode == "fwd":

        def forward():
            with torch.no_grad():
                return fn(q, k, v, key_padding_mask=mask)

        return forward
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]

    def forward_backward():
        for x in leaves:
            x.grad = None
        fn(*leaves, key_padding_mask=mask).backward(do)

    return forward_backward


def measure(name: str, fn: Callable, mode: str, inputs: tuple, smoke: bool) -> dict:
    """Time one provider; a backend that refuses the inputs or runs out of memory gets a status, no time."""
    step = _step(fn, mode, *inputs)
    try:
        with warnings.catch_warnings():  # SDPA explains each refusal in a warning; the status says it
            warnings.simplefilter("ignore", UserWarning)
            step()  # compile / autotune / reject before timing
        timing = common.time_fn(step, smoke=smoke)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"status": "oom", **_NO_TIME}
    except RuntimeError:
        if name.startswith("sdpa_"):  # this backend cannot take these inputs (mask, dtype, device)
            return {"status": "unsupported", **_NO_TIME}
        raise
    return {"status": "ok", **timing}


def _kernel_error(table: dict, q, k, v, mask) -> float:
    with torch.no_grad():
        ours = table["triton"](q, k, v, key_padding_mask=mask)
        ref = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=None if mask is None else mask[:, None, None, :]
        )
    return (ours.float() - ref.float()).abs().max().item()


def run(smoke: bool, dtype: torch.dtype, bert_only: bool = False) -> list[dict]:
    shapes = SMOKE_SHAPES if smoke else GPU_SHAPES
    if bert_only:  # T=128 on GPU: BERT's sequence length, one microbatch of 128 sequences (B=128)
        shapes = {**shapes, "T": shapes["T"][:1], "tokens": shapes["tokens"] if smoke else 128 * 128}
    device = common.bench_device(smoke)
    peak = common.device_info()["peak_tflops"]
    table = providers()
    H, D, rows = shapes["H"], shapes["D"], []
    for T in shapes["T"]:
        B = max(1, shapes["tokens"] // T)
        for padded in (False, True):
            inputs = make_inputs(B, H, T, D, padded, device, dtype)
            err = _kernel_error(table, *inputs[:3], inputs[4])
            for mode in MODES:
                flops = 4 * B * H * T * T * D * (1.0 if mode == "fwd" else 3.5)
                for name, fn in table.items():
                    result = measure(name, fn, mode, inputs, smoke)
                    tflops = flops / (result["ms"] * 1e-3) / 1e12 if result["ms"] else None
                    row = {"provider": name, "mode": mode, "padded": padded, "B": B, "H": H, "T": T, "D": D,
                           "dtype": str(dtype).removeprefix("torch."), **result, "tflops": tflops,
                           "pct_peak": common.pct_of_peak(tflops, peak) if tflops else None,
                           "max_err_vs_sdpa": err if name == "triton" else None}  # fmt: skip
                    rows.append(row)
                    print(_format(row), flush=True)
    common.add_speedups(rows, keys=("mode", "padded", "T"))  # speedup_vs_eager, speedup_vs_compile
    return _add_sdpa_speedups(rows)


def _format(row: dict) -> str:
    head = f"{row['mode']:8s} T={row['T']:5d} pad={row['padded']!s:5s} {row['provider']:15s}"
    if row["status"] != "ok":
        return f"{head} {row['status']}"
    return f"{head} {row['ms']:9.3f} ms  {row['tflops']:8.2f} TFLOP/s"


def _add_sdpa_speedups(rows: list[dict]) -> list[dict]:
    for row in rows:
        same = [r for r in rows if (r["mode"], r["padded"], r["T"]) == (row["mode"], row["padded"], row["T"])]
        sdpa = [r["ms"] for r in same if r["provider"].startswith("sdpa_") and r["status"] == "ok"]
        best = min(sdpa) if sdpa else None
        row["speedup_vs_best_sdpa"] = best / row["ms"] if best and row["status"] == "ok" else None
    return rows


def summarize(rows: list[dict], smoke: bool) -> None:
    """The GPU targets: fwd+bwd at T=128/512 vs the best SDPA backend; forward at T >= 1024 vs peak."""
    ours = [r for r in rows if r["provider"] == "triton" and r["status"] == "ok"]
    print(
        "\nkernel vs best SDPA backend (speedup > 1: kernel faster)"
        + (" [smoke: meaningless]" if smoke else "")
    )
    for r in ours:
        pct = f", {r['pct_peak']:.0f}% of peak" if r["pct_peak"] is not None else ""
        speedup = r["speedup_vs_best_sdpa"]
        speedup = "n/a" if speedup is None else f"{speedup:.2f}x"
        case = f"{r['mode']:8s} T={r['T']:5d} pad={r['padded']!s:5s}"
        print(f"  {case} {r['tflops']:8.2f} TFLOP/s{pct}, {speedup}")


def main(argv: list[str] | None = None) -> None:
    parser = common.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    args = parser.parse_args(argv)
    smoke = common.setup(args)  # sets TRITON_INTERPRET=1 in smoke mode, before the kernels import
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    rows = run(smoke, dtype, args.bert_only)
    summarize(rows, smoke)
    tag = "smoke" if smoke else common.device_info()["tag"]
    name = f"attention_{tag}" + ("" if args.dtype == "bf16" else f"_{args.dtype}")
    paths = list(common.save_results(rows, name, args.out))
    for mode in MODES:
        for padded in (False, True):
            subset = [r for r in rows if r["mode"] == mode and r["padded"] == padded and r["status"] == "ok"]
            suffix = f"{'fwdbwd' if mode == 'fwd+bwd' else 'fwd'}_{'pad' if padded else 'nopad'}"
            shape = f"H={rows[0]['H']} D={rows[0]['D']}"
            title = f"attention {mode}, {'padded' if padded else 'no padding'}, {shape} {args.dtype}"
            title += " (SMOKE: not comparable)" if smoke else ""
            png = common.plot(subset, "T", "tflops", "provider", args.out / f"{name}_{suffix}.png", title)
            paths += [png] if png else []  # no panel for a setting with no timings
    print("wrote", *map(str, paths), sep="\n  ")


if __name__ == "__main__":
    main()
