"""AdamW step time, fused against foreach, on one arch's parameter set (side by side, interleaved).

    python benchmarks/bench_optim.py                    # crammed-bert on this machine's default device
    python benchmarks/bench_optim.py --arch small --rounds 3 --steps 2
    python benchmarks/bench_optim.py --smoke            # tiny sizes, proves the script runs

Both optimizers come from ``cramming.optim.build_adamw`` with the arch's training recipe
(``cfg.train``: lr, betas, eps, weight decay) and share the model's parameters and one set of
random gradients, so they do the same work; only the implementation differs. Rounds alternate
(foreach, fused, foreach, fused, ...) so both see the same machine load; the median per
implementation is reported. This is how ``cramming.optim.adamw_implementation`` was chosen.

Writes ``<out>/optim_<arch>_<device>.json`` (``_smoke`` added in smoke mode).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cramming.config import CONF_PATH
from cramming.models import build_mlm, count_parameters
from cramming.optim import IMPLEMENTATIONS, build_adamw
from cramming.runtime import make_runtime

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="crammed-bert", help="name of a conf/arch/*.yaml")
    p.add_argument("--vocab-size", type=int, default=32768)
    p.add_argument("--rounds", type=int, default=5, help="alternations of the two implementations")
    p.add_argument("--steps", type=int, default=3, help="timed steps per implementation per round")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--device", default=None, help="cuda or cpu (default cuda when available)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON result")
    p.add_argument("--smoke", action="store_true", help="tiny arch, 1 round; timings not comparable")
    args = p.parse_args(argv)
    if args.smoke:
        args.arch, args.vocab_size, args.rounds, args.steps = "tiny", 512, 1, 1
    for name in ("rounds", "steps", "threads", "vocab_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be at least 1")
    return args


def recipe(arch: str) -> tuple[dict, dict]:
    """(cfg.arch, cfg.train) exactly as ``python -m cramming arch=ARCH`` composes them."""
    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        cfg = compose("pretrain", overrides=[f"arch={arch}"])
    return OmegaConf.to_container(cfg.arch, resolve=True), OmegaConf.to_container(cfg.train, resolve=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> dict:
    # the loop's runtime (device, threads); no model forward runs, so no kernel choice to check
    impl = {"device": args.device or "auto", "threads": args.threads, "kernels": "torch"}
    args.device = make_runtime(impl).device  # main names the result file after it
    arch, train = recipe(args.arch)
    torch.manual_seed(0)
    model = build_mlm(arch, args.vocab_size).to(args.device)
    for param in model.parameters():
        param.grad = torch.randn_like(param) * 1e-3
    hyper = {k: train[k] for k in ("lr", "betas", "eps", "weight_decay")}
    optimizers = {
        name: build_adamw(model, device=args.device, implementation=name, **hyper) for name in IMPLEMENTATIONS
    }
    for optimizer in optimizers.values():  # untimed: allocates the moments
        optimizer.step()
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(args.rounds):
        for name, optimizer in optimizers.items():
            for _ in range(args.steps):
                sync(args.device)
                start = time.perf_counter()
                optimizer.step()
                sync(args.device)
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    faster = min(medians, key=medians.get)
    return {
        "arch": args.arch,
        "device": args.device.type,
        "smoke": args.smoke,
        "threads": args.threads if args.device.type == "cpu" else None,
        "parameters": count_parameters(model),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "step_s_median": medians,
        "step_s_all": times,
        "faster": faster,
        "speedup": max(medians.values()) / min(medians.values()),
        "torch": torch.__version__,
        "argv": sys.argv,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"optim_{args.arch}_{args.device.type}{'_smoke' if args.smoke else ''}.json"
    path.write_text(json.dumps(result, indent=2))
    medians = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in result["step_s_median"].items())
    print(
        f"{args.arch} AdamW step on {args.device.type}: {medians} -> {result['faster']} x{result['speedup']:.2f}"
    )
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
