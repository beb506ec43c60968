"""cramming/export/hf/modeling_cramming.py (the remote code shipped with exports) computes what cramming/models does.

The remote code is a standalone copy of the model: any change to one that the other does not follow would
make exported models give other logits. Random weights (every parameter perturbed), a padded batch, and
every combination of the encoder's switches (FFN glu/gelu x norm pre/post x positions learned /
scaled-sinusoidal / rotary x QK-norm off/on), plus the other arch switches, each on its own.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from omegaconf import OmegaConf
from tiny_export import REPO_ROOT, perturbed, tiny_arch

from cramming.export.hf.configuration_cramming import CrammingConfig
from cramming.export.hf.modeling_cramming import (
    CrammingForMaskedLM,
    CrammingForPreTraining,
    CrammingForSequenceClassification,
)
from cramming.kernels import dispatch as ops
from cramming.models import BertForMLM, BertForPreTraining, build_classifier

VOCAB = 97
VARIANTS = {
    "crammed": {},
    "post-ln-bert-like": {"norm_position": "post", "ffn": "gelu", "position_embedding": "learned",
                          "linear_bias": True, "prediction_head": True, "final_norm": False, "type_vocab_size": 2},
    "gelu-tanh-no-norm-bias": {"activation": "gelu_tanh", "norm_bias": False, "embedding_norm": False, "final_norm": False},
    "untied-with-head": {"tie_embeddings": False, "prediction_head": True, "norm_eps": 1e-5},
    "rotary-qk-norm": {"position_embedding": "rotary", "qk_norm": True},
    "rotary-post-ln": {"position_embedding": "rotary", "norm_position": "post", "final_norm": False},
}  # fmt: skip
# Every combination of the switches that change what the encoder computes: 2 x 2 x 3 x 2 = 24 archs.
GRID = [
    {"ffn": ffn, "norm_position": norm, "position_embedding": positions, "qk_norm": qk_norm}
    for ffn, norm, positions, qk_norm in itertools.product(
        ("glu", "gelu"), ("pre", "post"), ("learned", "scaled-sinusoidal", "rotary"), (False, True)
    )
]


@pytest.fixture(autouse=True)
def _torch_ops():
    ops.configure({"kernels": "torch"})
    yield
    ops.configure({"kernels": "auto"})


def padded_batch(types: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (3, 17), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    token_types = (torch.arange(17) >= 6).long().expand(3, -1) * mask if types else None
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": token_types}


def remote(cls, ours: torch.nn.Module, **config) -> torch.nn.Module:
    model = cls(CrammingConfig(arch=dict(ours.arch), vocab_size=VOCAB, **config))
    model.load_state_dict(ours.state_dict(), strict=True)  # same names, every tensor
    return model.eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_masked_lm_parity(variant):
    """Catches the remote MLM drifting from ours (norm placement, FFN, positions, biases, head, decoder)."""
    arch = {**tiny_arch(), **VARIANTS[variant]}
    torch.manual_seed(0)
    ours = perturbed(BertForMLM(arch, VOCAB), 1)
    theirs = remote(CrammingForMaskedLM, ours)
    batch = padded_batch(arch.get("type_vocab_size", 0) > 0)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        want = ours(
            batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]
        )
        got = theirs(**batch).logits
    torch.testing.assert_close(got[real], want["logits"][real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("switches", GRID, ids=lambda g: "-".join(str(v) for v in g.values()))
def test_masked_lm_parity_for_every_encoder_combination(switches):
    """Catches a switch the remote code follows alone but not in combination (e.g. rotary with post-LN)."""
    arch = {**tiny_arch(), **switches}
    torch.manual_seed(0)
    ours = perturbed(BertForMLM(arch, VOCAB), 4)
    theirs = remote(CrammingForMaskedLM, ours)
    batch = padded_batch(False)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        want = ours(batch["input_ids"], attention_mask=batch["attention_mask"])["logits"]
        got = theirs(**batch).logits
        hidden = theirs.encoder(**batch).last_hidden_state
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden[real], ours.encoder(batch["input_ids"], batch["attention_mask"])[real],
                               atol=1e-5, rtol=1e-5)  # fmt: skip


def test_the_grid_covers_every_shipped_arch():
    """Catches an arch in conf/arch/ whose switches the grid (and so the parity check) leaves out."""
    defaults = tiny_arch()
    for path in sorted((REPO_ROOT / "conf" / "arch").glob("*.yaml")):
        arch = {**defaults, **OmegaConf.to_container(OmegaConf.load(path))}
        switches = {key: arch.get(key, False) for key in GRID[0]}
        assert switches in GRID, f"{path.name}: {switches}"


@pytest.mark.parametrize("variant", ["crammed", "post-ln-bert-like"])
@pytest.mark.parametrize("nsp", [False, True])
def test_pretraining_parity_with_decoder_bias_and_nsp(variant, nsp):
    """Catches the remote pretraining model dropping the decoder bias, the pooler or the NSP head."""
    arch = {**tiny_arch(), **VARIANTS[variant], "type_vocab_size": 2}
    torch.manual_seed(0)
    ours = perturbed(BertForPreTraining(arch, VOCAB, nsp=nsp), 2)
    theirs = remote(CrammingForPreTraining, ours, decoder_bias=True, nsp=nsp)
    batch = padded_batch(True)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        want = ours(
            batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]
        )
        got = theirs(**batch)
    torch.testing.assert_close(got.prediction_logits[real], want["logits"][real], atol=1e-5, rtol=1e-5)
    if nsp:
        torch.testing.assert_close(got.seq_relationship_logits, want["nsp_logits"], atol=1e-5, rtol=1e-5)
    else:
        assert got.seq_relationship_logits is None


@pytest.mark.parametrize("head", ["crammed", "bert", "gelu"])
@pytest.mark.parametrize("variant", ["crammed", "post-ln-bert-like"])
def test_classifier_parity(head, variant):
    """Catches the remote classifier drifting from ours in any of the three heads."""
    arch = {**tiny_arch(), **VARIANTS[variant]}
    torch.manual_seed(0)
    ours = perturbed(build_classifier(arch, VOCAB, 3, dropout=0.0, head=head, attention_dropout=0.0), 3)
    theirs = remote(CrammingForSequenceClassification, ours, num_labels=3)
    batch = padded_batch(arch.get("type_vocab_size", 0) > 0)
    with torch.no_grad():
        want = ours(
            batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]
        )
        got = theirs(**batch).logits
    torch.testing.assert_close(got, want["logits"], atol=1e-5, rtol=1e-5)
