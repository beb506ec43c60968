"""The training step of ``python -m cramming``, timed as it runs, in tokens/s and MFU.

    python benchmarks/bench_step.py                       # crammed-bert, microbatch 8, seq 128
    python benchmarks/bench_step.py --arch small --steps 20
    python benchmarks/bench_step.py --smoke               # tiny sizes, proves the script runs

What is timed is the training loop's own step, ``cramming.train.optimizer_step``: forward,
backward, gradient clipping at ``cfg.train.grad_clip`` and the AdamW step, with the model from
``cramming.models.build_mlm``, the optimizer from ``cramming.optim.build_optimizer`` (its
per-device implementation, recorded in the JSON), the runtime from ``cramming.runtime.make_runtime``
(device, threads, kernels, precision), ``--compile`` through the loop's ``CompiledStep``, and each microbatch masked by ``cramming.data.MLMCollator``, as the
loop draws it. ``cfg.arch``, ``cfg.train`` and ``cfg.data`` are composed exactly as
``python -m cramming arch=ARCH`` composes them. One step is one microbatch (no accumulation). Only
the corpus is synthetic: random token ids stand in for the loader's memory-mapped sequences.

MFU = tokens/s × model FLOPs per token / peak. FLOPs per token come from
``cramming.perf.flops_per_token`` (6·N + 12·L·H·T, the tied decoder counted at the masked
fraction). The peak is measured in the same run: on CPU a large fp32 matmul with the same
thread count, on GPU the bf16 table value (or a measured matmul off the table). Peak and
step timings are interleaved (peak, steps, peak, steps, ..., peak) and the best peak is
used, because the machine may be shared and noisy.

Writes ``<out>/step_<arch>_<device>.json`` (``_smoke`` added in smoke mode).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cramming import perf
from cramming.config import CONF_DIR
from cramming.data import MLMCollator
from cramming.data.tokenizer import SPECIAL_TOKENS
from cramming.kernels import dispatch
from cramming.models import build_mlm, count_parameters
from cramming.optim import build_optimizer, implementation_of
from cramming.perf import flops_per_token
from cramming.runtime import CompiledStep, Runtime, make_runtime, resolve_device
from cramming.train import optimizer_step, to_device

TIMED = "cramming.train.optimizer_step"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
SEED = 0
SMOKE = {"arch": "tiny", "microbatch": 2, "seq_len": 32, "steps": 2, "warmup": 1, "rounds": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default=None, help="name of a conf/arch/*.yaml (default crammed-bert)")
    p.add_argument("--microbatch", type=int, default=None, help="sequences per step (default 8)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 128)")
    p.add_argument(
        "--precision",
        choices=[p for p in perf.PRECISIONS if p != "auto"],
        default=None,
        help="default bf16 GPU, fp32 CPU",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30 GPU, 8 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 GPU, 2 CPU)")
    p.add_argument("--rounds", type=int, default=None, help="peak measurements between step chunks")
    p.add_argument("--compile", action="store_true", help="torch.compile the step (the loop's CompiledStep)")
    p.add_argument("--kernels", choices=dispatch.CHOICES, default="auto", help="cfg.impl.kernels")
    p.add_argument("--vocab-size", type=int, default=32768)
    p.add_argument("--device", default=None, help="cuda or cpu (default cuda when available)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON result")
    p.add_argument("--smoke", action="store_true", help="tiny sizes; timings not comparable")
    args = p.parse_args(argv)
    args.device = resolve_device(args.device or "auto")  # as make_runtime resolves impl.device
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


def recipe(name: str) -> dict:
    """``cfg`` (arch, train, data, impl) as ``python -m cramming arch=NAME`` composes it, as plain dicts."""
    folder = CONF_DIR / "arch"
    available = sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml"))
    if name not in available:
        raise ValueError(f"unknown arch {name!r}; available: {available}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("pretrain", overrides=[f"arch={name}"])
    return {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("arch", "train", "data", "impl")}


def runtime_for(args: argparse.Namespace, impl: dict) -> Runtime:
    """The loop's runtime (threads, kernels, device, precision) with the flags' overrides."""
    impl = {**impl, "device": args.device.type, "precision": args.precision, "threads": args.threads}
    impl.update(kernels=args.kernels, compile=args.compile)
    return make_runtime(impl)


def microbatches(args: argparse.Namespace, collator: MLMCollator, runtime: Runtime) -> Callable:
    """The loop's ``next_microbatch``: random ids (seeded), masked by the real collator per draw."""
    ids_generator = torch.Generator().manual_seed(SEED)
    mask_generator = torch.Generator().manual_seed(SEED + 1)
    first = len(SPECIAL_TOKENS)  # ordinary tokens only: the collator never masks specials

    def next_microbatch() -> dict[str, torch.Tensor]:
        ids = torch.randint(first, args.vocab_size, (args.microbatch, args.seq_len), generator=ids_generator)
        return to_device(collator(ids, generator=mask_generator), runtime.device)  # as the loop does

    return next_microbatch


def make_step(args: argparse.Namespace, cfg: dict, runtime: Runtime) -> tuple[Callable, dict]:
    """``step() -> loss``: one ``optimizer_step`` of the loop, and facts about what it runs."""
    torch.manual_seed(SEED)
    model = build_mlm(cfg["arch"], args.vocab_size).to(runtime.device).train()
    optimizer = build_optimizer(model, cfg["train"], runtime.device)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.dtype == torch.float16)
    # the loop's compiled step: impl.compile_mode, one graph per shape, eager once if compiling fails
    compiled = CompiledStep(model, runtime, what="benchmark step")
    # The tokenizer trained by cramming.data.tokenizer numbers its special tokens first, in this order.
    special_ids = {name: index for index, name in enumerate(SPECIAL_TOKENS)}
    collator = MLMCollator(args.vocab_size, special_ids, float(cfg["data"]["mlm_probability"]))
    next_microbatch = microbatches(args, collator, runtime)
    lr, grad_clip = float(cfg["train"]["lr"]), float(cfg["train"]["grad_clip"])

    def one_step(module: torch.nn.Module, next_batch: Callable):
        return optimizer_step(module, optimizer, next_batch, 1, lr, grad_clip, runtime, scaler=scaler)

    def step() -> float:
        loss, _, _ = compiled.run(one_step, next_microbatch)
        return float(loss)  # the loop reads the loss back after every step, so the timing does too

    facts = {
        "timed": TIMED,
        "optimizer": f"AdamW ({implementation_of(optimizer)})",
        "optimizer_implementation": implementation_of(optimizer),
        "masking": "cramming.data.MLMCollator",
        "train": {k: cfg["train"][k] for k in ("lr", "betas", "eps", "weight_decay", "grad_clip")},
        "parameters": count_parameters(model),
    }
    return step, facts


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, n: int, device: torch.device) -> tuple[list[float], list[float], list[float]]:
    """Wall-clock seconds per step, the process's CPU seconds (all threads) per step, and the losses."""
    times, cpu_times, losses = [], [], []
    for _ in range(n):
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        losses.append(step())
        sync(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return times, cpu_times, losses


def measure_peak(args: argparse.Namespace) -> dict[str, float | None]:
    """One large-matmul measurement (FLOP/s, wall and CPU clocks) with the run's dtype, device, threads."""
    dtype = perf.precision_dtype(args.precision)
    if args.smoke:  # small matmul: the smoke run must take seconds, and its numbers mean nothing
        return perf.matmul_peaks(dtype, args.device, args.threads, size=256, repeats=2)
    return perf.matmul_peaks(dtype, args.device, args.threads)


def run(args: argparse.Namespace) -> dict:
    """Build the loop's step from the recipe, time it (see the module docstring) and describe the run."""
    cfg = recipe(args.arch)
    runtime = runtime_for(args, cfg["impl"])
    step, facts = make_step(args, cfg, runtime)
    mlm_probability = float(cfg["data"]["mlm_probability"])
    fpt = flops_per_token(cfg["arch"], facts["parameters"], args.seq_len, mlm_probability, args.vocab_size)
    setup = {
        "arch": args.arch,
        "device": device_name(args.device),
        "smoke": args.smoke,
        "precision": args.precision,
        "threads": args.threads if args.device.type == "cpu" else None,
        "microbatch": args.microbatch,
        "seq_len": args.seq_len,
        "vocab_size": args.vocab_size,
        "compile": args.compile,
        "kernels": dispatch.describe(args.device),  # what runs per op, after the auto choice
        **facts,
        "mlm_probability": mlm_probability,
        "model_flops_per_token": fpt,
    }
    return {**setup, **summarise(args, measure(args, step), fpt)}


def measure(args: argparse.Namespace, step: Callable) -> dict[str, list | float]:
    """Warm-up, then step chunks interleaved with peak measurements so both see the same machine load."""
    start = time.perf_counter()
    _, _, losses = time_steps(step, args.warmup, args.device)
    warmup_s = time.perf_counter() - start
    peaks, times, cpu_times = [measure_peak(args)], [], []
    chunks = [args.steps // args.rounds + (i < args.steps % args.rounds) for i in range(args.rounds)]
    for n in chunks:
        wall, cpu, chunk_losses = time_steps(step, n, args.device)
        times, cpu_times, losses = times + wall, cpu_times + cpu, losses + chunk_losses
        peaks.append(measure_peak(args))
    return {"warmup_s": warmup_s, "times": times, "cpu_times": cpu_times, "losses": losses, "peaks": peaks}


def chosen_peak(args: argparse.Namespace, peaks: list[float]) -> tuple[float, str]:
    """(FLOP/s, where it came from): the best measured matmul, or the bf16 table value on a listed GPU."""
    tabled = perf.table_peak_flops(args.device)
    if args.precision == "bf16" and tabled is not None and not args.smoke:
        return tabled, "table (dense bf16); peak_gflops_all holds the measured matmuls"
    return max(peaks), f"measured {args.precision} matmul, best of {len(peaks)} interleaved runs"


def summarise(args: argparse.Namespace, measured: dict, fpt: float) -> dict:
    """Step times, throughput and MFU (wall clock and CPU clock) from ``measure``'s record."""
    times, cpu_times, losses = measured["times"], measured["cpu_times"], measured["losses"]
    tokens = args.microbatch * args.seq_len
    median_s = statistics.median(times)
    cpu_peaks = [p["cpu"] for p in measured["peaks"] if p["cpu"] is not None]
    peaks = [p["wall"] for p in measured["peaks"]]
    peak, peak_source = chosen_peak(args, peaks)
    return {
        "tokens_per_step": tokens,
        "steps": len(times),
        "warmup_steps": args.warmup,
        "warmup_s": measured["warmup_s"],
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
        "losses": losses,  # every step's, warm-up included, in order
        "final_loss": losses[-1],
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
