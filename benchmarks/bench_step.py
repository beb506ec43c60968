"""One full pretraining step (forward, backward, clipping, AdamW) in tokens/s and MFU.

    python benchmarks/bench_step.py                       # crammed-bert, microbatch 8, seq 128
    python benchmarks/bench_step.py --arch small --steps 20
    python benchmarks/bench_step.py --smoke               # tiny sizes, proves the script runs

The step is the bert-o4 recipe's: AdamW lr 1e-3, betas (0.9, 0.98), eps 1e-12, weight
decay 0.01 on matrices only (not norms, biases or the position scale), gradient clipping
0.5; fused AdamW (on CPU too). Inputs are random token ids with 25% of the
positions labelled, as the MLM collator gives them, so sparse prediction decodes a quarter.

MFU = tokens/s × model FLOPs per token / peak. FLOPs per token come from
``cramming.perf.flops_per_token`` (6·N + 12·L·H·T, the tied decoder counted at the masked
fraction). The peak is measured in the same run: on CPU a large fp32 matmul with the same
thread count, on GPU the bf16 table value (or a measured matmul off the table). Peak and
step timings are interleaved (peak, steps, peak, steps, ..., peak) and the best peak is
used, because the machine may be shared and noisy.

On CPU the OpenMP threads sleep instead of spinning while they wait (``OMP_WAIT_POLICY=PASSIVE``
unless the environment sets it): on a shared machine a spinning thread burns its time slice
while its partner is descheduled, which made steps 2-3x slower here; the large matmul of the
peak runs under the same policy.

Writes ``<out>/step_<arch>_<device>.json`` (``_smoke`` added in smoke mode).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads libgomp

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from importlib import resources  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from cramming import ops, perf  # noqa: E402
from cramming.model import IGNORE_INDEX, build_mlm, count_parameters  # noqa: E402
from cramming.perf import flops_per_token  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
MLM_PROBABILITY = 0.25
SMOKE = {"arch": "tiny", "microbatch": 2, "seq_len": 32, "steps": 2, "warmup": 1, "rounds": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default=None, help="name of a conf/arch/*.yaml (default crammed-bert)")
    p.add_argument("--microbatch", type=int, default=None, help="sequences per step (default 8)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 128)")
    p.add_argument("--precision", choices=perf.PRECISIONS, default=None, help="default bf16 GPU, fp32 CPU")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30 GPU, 8 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 GPU, 2 CPU)")
    p.add_argument("--rounds", type=int, default=None, help="peak measurements between step chunks")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--kernels", choices=ops.CHOICES, default="auto", help="cfg.impl.kernels")
    p.add_argument("--vocab-size", type=int, default=32768)
    p.add_argument("--device", default=None, help="cuda or cpu (default cuda when available)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON result")
    p.add_argument("--smoke", action="store_true", help="tiny sizes; timings not comparable")
    args = p.parse_args(argv)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = args.device.type == "cuda"
    defaults = {
        "arch": "crammed-bert",
        "microbatch": 8,
        "seq_len": 128,
        "steps": 30 if gpu else 8,
        "warmup": 5 if gpu else 2,
        "rounds": 1 if gpu else 3,
        "precision": "bf16" if gpu else "fp32",
        "threads": 2,
    }
    if args.smoke:
        defaults.update(SMOKE)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("microbatch", "seq_len", "steps", "threads", "rounds", "vocab_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be at least 1")
    return args


def load_arch(name: str) -> dict:
    """An arch config from the installed ``cramming.conf`` package, as a plain dict."""
    folder = resources.files("cramming.conf") / "arch"
    available = sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml"))
    if name not in available:
        raise ValueError(f"unknown arch {name!r}; available: {available}")
    text = (folder / f"{name}.yaml").read_text()
    return OmegaConf.to_container(OmegaConf.create(text), resolve=True)


def build_optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """bert-o4 AdamW: no weight decay on vectors and scalars (norms, biases, position scale)."""
    params = list({id(p): p for p in model.parameters()}.values())  # tied weight once
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.01},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    # Fused on CPU too: one pass over param, grad and both moments instead of ~10 foreach passes
    # (the foreach ops fall back to per-tensor loops on CPU); 5-10x faster step here.
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.98), eps=1e-12, fused=True)


def random_batch(args: argparse.Namespace, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random ids with exactly 25% of the positions labelled (a fixed count keeps shapes static)."""
    B, T = args.microbatch, args.seq_len
    input_ids = torch.randint(0, args.vocab_size, (B, T), generator=generator)
    labels = torch.full((B * T,), IGNORE_INDEX, dtype=torch.long)
    masked = torch.randperm(B * T, generator=generator)[: max(1, round(MLM_PROBABILITY * B * T))]
    labels[masked] = torch.randint(0, args.vocab_size, (masked.numel(),), generator=generator)
    return {"input_ids": input_ids.to(args.device), "labels": labels.view(B, T).to(args.device)}


def make_step(model, optimizer, batch, args: argparse.Namespace):
    amp = args.precision != "fp32"
    dtype = perf.precision_dtype(args.precision)
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(args.device.type, dtype=dtype, enabled=amp):
            loss = model(batch["input_ids"], labels=batch["labels"])["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5, foreach=True)
        optimizer.step()
        return loss

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, n: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Wall-clock seconds per step, and the process's CPU seconds (all threads) per step."""
    times, cpu_times = [], []
    for _ in range(n):
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return times, cpu_times


def measure_peak(args: argparse.Namespace) -> dict[str, float | None]:
    """One large-matmul measurement (FLOP/s, wall and CPU clocks) with the run's dtype, device, threads."""
    dtype = perf.precision_dtype(args.precision)
    if args.smoke:  # small matmul: the smoke run must take seconds, and its numbers mean nothing
        return perf.matmul_peaks(dtype, args.device, args.threads, size=256, repeats=2)
    return perf.matmul_peaks(dtype, args.device, args.threads)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    ops.configure({"kernels": args.kernels})
    arch = load_arch(args.arch)
    torch.manual_seed(0)
    model = build_mlm(arch, args.vocab_size).to(args.device).train()
    n_params = count_parameters(model)
    fpt = flops_per_token(arch, n_params, args.seq_len, MLM_PROBABILITY, args.vocab_size)
    optimizer = build_optimizer(model, args.device)
    if args.compile:
        model = torch.compile(model)
    batch = random_batch(args, torch.Generator().manual_seed(0))
    step = make_step(model, optimizer, batch, args)

    start = time.perf_counter()
    time_steps(step, args.warmup, args.device)
    warmup_s = time.perf_counter() - start
    # Interleave peak and step measurements so both see the same machine load.
    peaks, times, cpu_times = [measure_peak(args)], [], []
    chunks = [args.steps // args.rounds + (i < args.steps % args.rounds) for i in range(args.rounds)]
    for n in chunks:
        wall, cpu = time_steps(step, n, args.device)
        times, cpu_times = times + wall, cpu_times + cpu
        peaks.append(measure_peak(args))
    loss = float(step().detach())

    tokens = args.microbatch * args.seq_len
    median_s = statistics.median(times)
    cpu_peaks = [p["cpu"] for p in peaks if p["cpu"] is not None]
    peaks = [p["wall"] for p in peaks]
    peak, peak_source = max(peaks), f"measured {args.precision} matmul, best of {len(peaks)} interleaved runs"
    tabled = perf.table_peak_flops(args.device)
    if args.precision == "bf16" and tabled is not None and not args.smoke:
        peak, peak_source = tabled, "table (dense bf16); peak_gflops_all holds the measured matmuls"
    return {
        "arch": args.arch,
        "device": device_name(args.device),
        "smoke": args.smoke,
        "precision": args.precision,
        "threads": args.threads if args.device.type == "cpu" else None,
        "microbatch": args.microbatch,
        "seq_len": args.seq_len,
        "vocab_size": args.vocab_size,
        "compile": args.compile,
        "kernels": ops.configure({"kernels": args.kernels}),
        "parameters": n_params,
        "model_flops_per_token": fpt,
        "tokens_per_step": tokens,
        "steps": len(times),
        "warmup_steps": args.warmup,
        "warmup_s": warmup_s,
        "step_s_median": median_s,
        "step_s_p20": quantile(times, 0.2),
        "step_s_p80": quantile(times, 0.8),
        "step_s_min": min(times),
        "step_s_max": max(times),
        "step_s_all": times,
        "step_cpu_s_median": statistics.median(cpu_times),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "tokens_per_s": tokens / median_s,
        "achieved_tflops": tokens / median_s * fpt / 1e12,
        "peak_tflops": peak / 1e12,
        "peak_gflops": peak / 1e9,
        "peak_source": peak_source,
        "peak_gflops_all": [p / 1e9 for p in peaks],
        "mfu": perf.mfu(tokens / median_s, fpt, peak),
        "mfu_best_step": perf.mfu(tokens / min(times), fpt, peak),
        # Contention-robust view for shared CPUs: step and matmul both in FLOPs per CPU-second of the
        # process (descheduled time not counted), i.e. the MFU had the threads had their cores alone.
        "peak_gflops_cpu_clock": max(cpu_peaks) / 1e9 if cpu_peaks else None,
        "mfu_cpu_clock": (
            perf.mfu(tokens / statistics.median(cpu_times), fpt, max(cpu_peaks) / args.threads)
            if cpu_peaks
            else None
        ),
        "final_loss": loss,
        "torch": torch.__version__,
        "argv": sys.argv,
    }


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def device_tag(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    return next((k for k in perf.GPU_BF16_PEAK_TFLOPS if k in name), name).lower().replace(" ", "_")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.smoke:
        print("SMOKE MODE: tiny sizes; the timings only show that the script runs end to end.")
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_smoke" if args.smoke else ""
    path = args.out / f"step_{args.arch}_{device_tag(args.device)}{suffix}.json"
    path.write_text(json.dumps(result, indent=2))
    print(
        f"{result['arch']} {result['device']} {result['precision']} mb={result['microbatch']} "
        f"T={result['seq_len']}: step {result['step_s_median'] * 1e3:.1f} ms "
        f"(p20 {result['step_s_p20'] * 1e3:.1f}, p80 {result['step_s_p80'] * 1e3:.1f}), "
        f"{result['tokens_per_s']:.0f} tok/s, {result['achieved_tflops'] * 1e3:.1f} GFLOP/s of "
        f"peak {result['peak_gflops']:.1f} GFLOP/s -> MFU {100 * result['mfu']:.1f}% "
        f"(model {result['model_flops_per_token'] / 1e6:.1f} MFLOP/token)"
    )
    if result["mfu_cpu_clock"] is not None:
        print(
            f"by CPU clock (time descheduled on a shared machine not counted): step "
            f"{result['step_cpu_s_median']:.2f} CPU-s, peak {result['peak_gflops_cpu_clock']:.1f} GFLOP/s "
            f"-> MFU {100 * result['mfu_cpu_clock']:.1f}%"
        )
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
