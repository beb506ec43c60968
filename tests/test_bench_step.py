"""benchmarks/bench_step.py times the training loop's own step, not a re-implementation of it."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cramming.conf import read_yaml
from cramming.config import CONF_PATH
from cramming.data import MLMCollator
from cramming.kernels import dispatch
from cramming.models import build_mlm
from cramming.optim import adamw_implementation, build_optimizer
from cramming.runtime import Runtime
from cramming.train import optimizer_step

REPO_ROOT = Path(__file__).resolve().parents[1]
VOCAB, MICRO, SEQ = 512, 2, 32
SPECIALS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}  # a trained tokenizer numbers them first


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_step", REPO_ROOT / "benchmarks" / "bench_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def restore_globals():
    """The benchmark sets the thread count and the kernel choice for the whole process."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    dispatch.configure({"kernels": "auto"})


def loop_losses(steps: int) -> list[float]:
    """Losses of ``steps`` calls of the loop's optimizer_step on seed-0 weights and seeded batches."""
    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        cfg = compose("pretrain", overrides=["arch=tiny"])
        train = OmegaConf.to_container(cfg.train, resolve=True)
        mlm_probability = float(cfg.data.mlm_probability)
    arch = read_yaml("arch", "tiny.yaml")
    torch.manual_seed(0)
    model = build_mlm(arch, VOCAB).train()
    optimizer = build_optimizer(model, train, torch.device("cpu"))
    collator = MLMCollator(VOCAB, SPECIALS, mlm_probability)
    ids_gen, mask_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)

    def next_microbatch():
        return collator(torch.randint(5, VOCAB, (MICRO, SEQ), generator=ids_gen), generator=mask_gen)

    runtime = Runtime(torch.device("cpu"), torch.float32)
    losses = []
    for _ in range(steps):
        loss, _, _ = optimizer_step(
            model, optimizer, next_microbatch, 1, train["lr"], train["grad_clip"], runtime
        )
        losses.append(float(loss))
    return losses


def test_bench_step_times_the_loops_optimizer_step(tmp_path, restore_globals):
    """Catches the benchmark drifting from the product again: its own masking (a rate other than
    data.mlm_probability), its own clipping or optimizer, or hyper-parameters other than cfg.train's — any of
    which changes the losses — and a JSON that does not say what it timed."""
    bench = load_bench()
    argv = [
        "--smoke",
        "--device",
        "cpu",
        "--kernels",
        "torch",
        "--vocab-size",
        str(VOCAB),
        "--out",
        str(tmp_path),
    ]
    result = bench.main(argv)
    assert json.loads((tmp_path / "step_tiny_cpu_smoke.json").read_text()) == json.loads(json.dumps(result))
    assert result["timed"] == "cramming.train.optimizer_step"
    assert result["masking"] == "cramming.data.MLMCollator"
    assert result["optimizer_implementation"] == adamw_implementation(torch.device("cpu"))
    assert result["tokens_per_step"] == MICRO * SEQ and len(result["step_s_all"]) == result["steps"] == 2
    losses = result["losses"]
    assert len(losses) == result["warmup_steps"] + result["steps"] and result["final_loss"] == losses[-1]
    torch.set_num_threads(result["threads"])  # the same thread count, so the same float reductions
    assert losses == pytest.approx(loop_losses(len(losses)), rel=1e-6)
    assert len(set(losses)) == len(losses)  # a fresh batch and a real update every step
