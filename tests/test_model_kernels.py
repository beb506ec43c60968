"""The model gives the same training trajectory with the Triton kernels (interpreter) as with PyTorch."""

import pytest
import torch
from _kernel_checks import DEVICE  # cuda when a GPU runs the kernels natively, else cpu (interpreter)

from cramming.conf import read_yaml
from cramming.kernels import dispatch as ops
from cramming.models import build_classifier, build_mlm
from cramming.optim import build_optimizer

pytestmark = pytest.mark.interpreter

TRAIN = {"optimizer": "adamw", "lr": 1e-3, "betas": [0.9, 0.98], "eps": 1e-12, "weight_decay": 0.01}


@pytest.fixture(autouse=True)
def restore_dispatch():
    yield
    ops.configure({"kernels": "auto"})


def tiny_arch(**changes) -> dict:
    arch = read_yaml("arch", "tiny.yaml")
    arch.update(changes)
    return arch


def train_losses(kernels: str, arch: dict, steps: int = 3) -> list[float]:
    ops.configure({"kernels": kernels})
    torch.manual_seed(0)
    model = build_mlm(arch, vocab_size=300).to(DEVICE)
    optimizer = build_optimizer(model, TRAIN, torch.device(DEVICE))
    data = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        ids = torch.randint(5, 300, (2, 37), generator=data)  # odd length: not a block multiple
        labels = torch.where(torch.rand(ids.shape, generator=data) < 0.25, ids, torch.full_like(ids, -100))
        loss = model(ids.to(DEVICE), labels.to(DEVICE))["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("arch", [tiny_arch(), tiny_arch(norm_position="post", ffn="gelu", linear_bias=True)])
def test_training_steps_match_between_triton_and_torch(arch):
    reference = train_losses("torch", arch)
    fused = train_losses("triton", arch)
    assert reference[-1] < reference[0]
    assert fused == pytest.approx(reference, rel=1e-4, abs=1e-4)


def test_padded_classifier_matches_between_triton_and_torch():
    arch = tiny_arch()
    ids = torch.randint(5, 300, (3, 21), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 9:] = False  # a padded sequence, as in fine-tuning
    outputs = {}
    for kernels in ("torch", "triton"):
        ops.configure({"kernels": kernels})
        torch.manual_seed(0)
        model = build_classifier(arch, 300, num_labels=3, dropout=0.0).to(DEVICE)
        out = model(
            ids.to(DEVICE), attention_mask=mask.to(DEVICE), labels=torch.tensor([0, 1, 2], device=DEVICE)
        )
        out["loss"].backward()
        outputs[kernels] = (out["logits"].detach(), model.encoder.embeddings.word.weight.grad.clone())
    torch.testing.assert_close(outputs["triton"][0], outputs["torch"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outputs["triton"][1], outputs["torch"][1], rtol=1e-4, atol=1e-6)


def test_bf16_autocast_training_step_runs_with_triton_kernels():
    """Under autocast the attention output is bf16 while the residual stream is fp32."""
    arch = tiny_arch()
    ids = torch.randint(5, 300, (2, 19), generator=torch.Generator().manual_seed(3))
    labels = torch.where(ids % 3 == 0, ids, torch.full_like(ids, -100))
    losses = {}
    for kernels in ("torch", "triton"):
        ops.configure({"kernels": kernels})
        torch.manual_seed(0)
        model = build_mlm(arch, vocab_size=300).to(DEVICE)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = model(ids.to(DEVICE), labels.to(DEVICE))["loss"]
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        losses[kernels] = loss.item()
    assert losses["triton"] == pytest.approx(losses["torch"], rel=2e-2)
