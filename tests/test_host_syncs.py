"""One device->host transfer per optimizer step: the loop reads loss, grad norm, the finite flag and the
side metrics back together, once (cramming.train.step.optimizer_step), and decides and logs from those floats.

Counted on CPU without CUDA: a TorchFunctionMode sees every Tensor.item / tolist / __bool__ / __float__ /
__int__ / __index__ / numpy / cpu call made by the loop's thread while an optimizer step (``train_step``,
its log line included: ``train.log_every=1`` logs every step) runs. On a GPU each of these would wait for
the device. Not counted: the optimizer's own step counters (``state['step']``, host tensors on a GPU too),
and the batch-making thread (host tensors before ``to_device``). Checkpoint and validation steps are off
here (``train.checkpoint_every_steps=0``, no validation): they read whole tensors back by design.
"""

import logging
import math
import threading

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.overrides import TorchFunctionMode

from cramming.config import CONF_PATH
from cramming.pretrain import pretrain_main

READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu"}
STEPS = 5


class HostReads(TorchFunctionMode):
    """Counts tensor reads by the host on the thread that entered the mode."""

    def __init__(self, exempt):
        super().__init__()
        self.exempt, self.count, self.where = exempt, 0, []
        self.thread = threading.get_ident()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if (
            name in READS
            and threading.get_ident() == self.thread
            and args
            and isinstance(args[0], torch.Tensor)
            and not any(args[0] is t for t in self.exempt())
        ):
            self.count += 1
            self.where.append(name)
        return func(*args, **(kwargs or {}))


def overrides(tiny_corpus, tmp_path, *extra):
    return [
        f"budget={STEPS}steps",
        "name=syncs",
        f"base_dir={tmp_path / 'outputs'}",
        "train.microbatch_size=4",
        "train.batch_size_start=4",
        "train.batch_size=8",  # accumulation ramps from 1 to 2 microbatches
        "train.batch_ramp_fraction=0.5",
        "train.log_every=1",  # every step writes a log line: counted with its step
        "train.checkpoint_minutes=0",
        "train.validate_every_minutes=0",
        "data=local",
        f"data.files=[{tiny_corpus['train']}]",
        "data.vocab_size=2048",
        "data.filters.max_tokens_per_char=0.5",
        "data.seq_len=32",
        f"data.cache_dir={tmp_path / 'cache'}",
        "impl.kernels=torch",
        "impl.threads=1",
        "impl.dataloader_workers=1",
        *extra,
    ]


def step_counters(optimizer) -> list[torch.Tensor]:
    """The optimizers' ``state['step']`` tensors (Muon+AdamW holds two optimizers)."""
    parts = [optimizer, getattr(optimizer, "muon", None), getattr(optimizer, "adamw", None)]
    states = [s for part in parts if part is not None and hasattr(part, "state") for s in part.state.values()]
    return [s["step"] for s in states if torch.is_tensor(s.get("step"))]


def count_reads(monkeypatch, tiny_corpus, tmp_path, *extra) -> list[int]:
    """Host reads of each optimizer step of a short pretraining run."""
    from cramming.train.loop import Pretrainer

    per_step, real = [], Pretrainer.train_step

    def counted(self, p):
        with HostReads(lambda: step_counters(self.optimizer)) as mode:
            result = real(self, p)
        per_step.append(mode.count)
        return result

    monkeypatch.setattr(Pretrainer, "train_step", counted)
    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        cfg = compose("pretrain", overrides=overrides(tiny_corpus, tmp_path, *extra))
    before = list(logging.getLogger().handlers)
    try:
        summary = pretrain_main(cfg)
    finally:
        for handler in logging.getLogger().handlers[:]:
            if handler not in before:
                logging.getLogger().removeHandler(handler)
                handler.close()
    assert summary["steps"] == STEPS
    return per_step


TINY = ("arch=tiny", "train=cpu")
BERT = ("recipe=bert", "arch.num_layers=2", "arch.hidden_size=64", "arch.num_heads=2",
        "arch.intermediate_size=128", "arch.max_position_embeddings=64")  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [TINY, (*TINY, "train.optimizer=muon"), BERT],  # BERT: the NSP side metrics travel in the same transfer
    ids=["adamw", "muon", "bert"],
)
def test_one_host_read_per_optimizer_step(monkeypatch, tiny_corpus, tmp_path, extra):
    per_step = count_reads(monkeypatch, tiny_corpus, tmp_path, *extra)
    assert per_step == [1] * STEPS, per_step


class Weighted(torch.nn.Module):
    """A classifier whose forward takes an extra keyword (class weights), as fine-tuning's does."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x, labels, class_weights):
        logits = self.linear(x)
        loss = torch.nn.functional.cross_entropy(logits, labels, weight=class_weights)
        return {"loss": loss, "nsp_accuracy": (logits.argmax(-1) == labels).float().mean()}


@pytest.mark.parametrize("fp16_scaler", [False, True], ids=["no-scaler", "grad-scaler"])
def test_optimizer_step_for_fine_tuning(fp16_scaler):
    """Fine-tuning's use: accum=1, no DDP, grad_clip=0 (off), an fp16 GradScaler or None, extra model
    keywords in the microbatch, lr=None (a scheduler set it); floats back from one read."""
    from cramming.runtime import Runtime
    from cramming.train import optimizer_step

    torch.manual_seed(0)
    runtime = Runtime(torch.device("cpu"), torch.float32)
    model = Weighted()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if fp16_scaler else None
    weights = torch.tensor([1.0, 2.0, 0.5])
    batch = {"x": torch.randn(8, 4), "labels": torch.arange(8) % 3, "class_weights": weights}
    before = [p.detach().clone() for p in model.parameters()]
    extras: dict = {}
    with HostReads(lambda: step_counters(optimizer)) as mode:
        loss, norm, finite = optimizer_step(
            model, optimizer, lambda: batch, 1, None, 0.0, runtime, scaler=scaler, extras=extras
        )
    assert mode.count == 1, mode.where
    assert type(loss) is float and type(norm) is float and finite is True
    assert norm > 0 and math.isfinite(loss) and type(extras["nsp_accuracy"]) is float
    assert optimizer.param_groups[0]["lr"] == 0.05  # lr=None: left alone
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the update ran
    kept = [p.detach().clone() for p in model.parameters()]
    _, _, finite = optimizer_step(model, optimizer, lambda: batch, 1, 0.01, 0.0, runtime, scaler=scaler,
                                  inject_nan=True)  # fmt: skip
    assert finite is False and optimizer.param_groups[0]["lr"] == 0.01
    assert all(torch.equal(a, b) for a, b in zip(kept, model.parameters()))  # skipped
    if scaler is not None:
        assert scaler.get_scale() < 1024.0  # the scaler saw the non-finite gradients and backed off
