"""The one AdamW builder (cramming.optim) and the one cosine-with-warm-up schedule (cramming.budget)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from cramming.budget import lr_factor
from cramming.conf import read_yaml
from cramming.config.finetune import FinetuneSettings
from cramming.finetune.encode import EncodedExamples
from cramming.finetune.engine import finetune
from cramming.kernels import dispatch as ops
from cramming.models import build_classifier, build_mlm, count_parameters
from cramming.optim import adamw_implementation, build_adamw, build_optimizer, implementation_of, param_groups
from cramming.runtime import Runtime
from cramming.train import optimizer_step

REPO_ROOT = Path(__file__).resolve().parents[1]
VOCAB = 256
TRAIN = read_yaml("train", "bert-o4.yaml")


def tiny_arch() -> dict:
    return read_yaml("arch", "tiny.yaml")


@pytest.fixture(autouse=True)
def torch_ops():
    # The Triton interpreter (TRITON_INTERPRET=1 in conftest) is far too slow for training steps.
    ops.configure({"kernels": "torch"})
    yield
    ops.configure({"kernels": "auto"})


def batches(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        inputs = torch.randint(5, VOCAB, (2, 16), generator=g)
        labels = torch.where(torch.rand(2, 16, generator=g) < 0.25, inputs, -100)
        out.append({"input_ids": inputs, "labels": labels})
    return out


def train_tiny(implementation: str, steps: int = 4) -> tuple[torch.nn.Module, list[float]]:
    torch.manual_seed(0)
    model = build_mlm(tiny_arch(), VOCAB)
    optimizer = build_optimizer(model, TRAIN, torch.device("cpu"), implementation=implementation)
    assert implementation_of(optimizer) == implementation
    stream = iter(batches(2 * steps))
    runtime = Runtime(torch.device("cpu"), torch.float32)
    losses = []
    for _ in range(steps):
        loss, _, finite = optimizer_step(model, optimizer, lambda: next(stream), 2, 1e-3, 0.5, runtime)
        assert finite
        losses.append(float(loss))
    return model, losses


def test_fused_adamw_gives_the_same_update_as_foreach():
    """Catches a fused AdamW (the CPU default) that updates differently from the reference foreach one:
    wrong weight decay per group, eps or bias correction, or a step count kept on the wrong device."""
    fused, fused_losses = train_tiny("fused")
    foreach, foreach_losses = train_tiny("foreach")
    torch.manual_seed(0)
    initial = build_mlm(tiny_arch(), VOCAB).state_dict()
    moved = 0
    for name, param in fused.state_dict().items():
        torch.testing.assert_close(param, foreach.state_dict()[name], rtol=1e-5, atol=1e-6, msg=name)
        moved += not torch.equal(param, initial[name])
    assert (
        moved > len(initial) // 2
    )  # the steps really changed the weights, so the comparison means something
    assert fused_losses == pytest.approx(foreach_losses, rel=1e-5)


def test_param_groups_take_a_tied_weight_once_and_spare_norms_and_biases():
    """Catches a tied decoder counted twice (decayed and updated twice per step) and weight decay
    on norm weights, biases or the position scale."""
    model = build_mlm(tiny_arch(), VOCAB)
    decay, no_decay = param_groups(model, 0.01)
    params = decay["params"] + no_decay["params"]
    assert len({id(p) for p in params}) == len(params)
    assert sum(p.numel() for p in params) == count_parameters(model)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    spared = [p for name, p in model.named_parameters() if "norm" in name or name.endswith(("bias", "scale"))]
    assert len(spared) == len(no_decay["params"]) and all(
        any(p is q for q in no_decay["params"]) for p in spared
    )
    tied = model.encoder.embeddings.word.weight
    assert sum(p is tied for p in decay["params"]) == 1


def test_default_implementation_is_fused_on_cpu_and_cuda():
    """Catches CPU falling back to foreach AdamW, ~4x slower here (benchmarks/bench_optim.py)."""
    assert adamw_implementation(torch.device("cpu")) == "fused"
    assert adamw_implementation(torch.device("cuda")) == "fused"
    optimizer = build_optimizer(build_mlm(tiny_arch(), VOCAB), TRAIN, torch.device("cpu"))
    assert implementation_of(optimizer) == "fused"
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (TRAIN["lr"], tuple(TRAIN["betas"]), TRAIN["eps"])


def test_bad_optimizer_choices_are_rejected():
    model = build_mlm(tiny_arch(), VOCAB)
    with pytest.raises(ValueError, match=r"train.optimizer='sgd'.*adamw"):
        build_optimizer(model, {**TRAIN, "optimizer": "sgd"}, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"'apex'.*fused"):
        build_adamw(
            model,
            lr=1e-3,
            betas=(0.9, 0.98),
            eps=1e-12,
            weight_decay=0.0,
            device="cpu",
            implementation="apex",
        )


def test_finetune_uses_the_one_builder_and_the_budget_cosine_at_step_over_total():
    """Catches fine-tuning forking its own schedule again (e.g. the old (step + 1) / warmup warm-up,
    which gave step 0 a non-zero LR and reached the peak one step early) or its own optimizer
    (foreach on CPU, or weight decay on norms)."""
    rng = np.random.default_rng(0)
    n, batch = 40, 4  # 10 steps per epoch, one epoch: steps 0..9 at p = 0.0, 0.1, ..., 0.9
    ids = [rng.integers(5, VOCAB, size=int(rng.integers(4, 9))) for _ in range(n)]
    data = EncodedExamples(ids, [np.zeros_like(x) for x in ids], rng.integers(0, 2, size=n))
    cfg = FinetuneSettings(lr=1e-3, batch_size=batch, epochs=1, warmup_fraction=0.25, log_every=0)
    seen: list[tuple[torch.optim.Optimizer, list[float]]] = []

    def record(optimizer, args, kwargs):
        seen.append((optimizer, [g["lr"] for g in optimizer.param_groups]))

    handle = register_optimizer_step_pre_hook(record)  # every optimizer: finetune builds its own
    try:
        torch.manual_seed(0)
        cpu = Runtime(torch.device("cpu"), torch.float32)
        finetune(build_classifier(tiny_arch(), VOCAB, num_labels=2), data, cfg, cpu, seed=0)
    finally:
        handle.remove()
    assert len(seen) == 10
    for step, (_, lrs) in enumerate(seen):
        expected = cfg.lr * lr_factor("budget-cosine", step / 10, 0.25)
        assert lrs == pytest.approx([expected] * len(lrs), abs=1e-12), step
    assert seen[0][1][0] == 0.0  # warm-up starts at zero, as pretraining's budget-cosine does
    optimizer = seen[0][0]
    assert implementation_of(optimizer) == "fused"
    assert [g["weight_decay"] for g in optimizer.param_groups] == [cfg.weight_decay, 0.0]
    assert optimizer.param_groups[0]["betas"] == cfg.betas and optimizer.param_groups[0]["eps"] == cfg.eps
