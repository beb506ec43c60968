"""arch.position_embedding=rotary and arch.qk_norm=true: RoPE and per-head RMSNorm on q and k."""

from pathlib import Path

import pytest
import torch
import torch._dynamo
from tokenizers import Tokenizer, models

from cramming.conf import read_yaml
from cramming.config import ConfigError, check_group
from cramming.data import MLMCollator
from cramming.export.folder import load_model, save_export
from cramming.export.remote import export_hf
from cramming.kernels import dispatch as ops
from cramming.models import Rotary, build_classifier, build_mlm
from cramming.optim import build_optimizer
from cramming.runtime import Runtime
from cramming.train import optimizer_step

REPO_ROOT = Path(__file__).resolve().parents[1]
VOCAB, T = 300, 16
SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
TRAIN = read_yaml("train", "bert-o4.yaml")
NEW = {"position_embedding": "rotary", "qk_norm": True}


def arch(**changes) -> dict:
    base = read_yaml("arch", "tiny.yaml")
    return {**base, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, **changes}


def model(**changes) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_mlm(arch(**changes), VOCAB)


def batch(size: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return MLMCollator(VOCAB, SPECIAL)(torch.randint(5, VOCAB, (size, T), generator=g), generator=g)


@pytest.fixture(autouse=True)
def torch_ops():
    ops.configure({"kernels": "torch"})
    yield
    ops.configure({"kernels": "auto"})
    torch._dynamo.reset()


def test_rotary_scores_depend_only_on_the_offset():
    """Catches a rotation that is not relative (cos/sin of the wrong positions, pairs mixed across the
    halves, a table sliced from the wrong end): q_i . k_j must equal q_{i+s} . k_{j+s}."""
    torch.manual_seed(0)
    rotary, D = Rotary(16, 64), 16
    q0, k0 = torch.randn(D), torch.randn(D)
    q = rotary(q0.expand(1, 1, 40, D).contiguous())[0, 0]  # (T, D): the same vector at every position
    k = rotary(k0.expand(1, 1, 40, D).contiguous())[0, 0]
    scores = q @ k.T  # (T, T)
    torch.testing.assert_close(scores[:-5, :-5], scores[5:, 5:], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(scores[0, 0], scores[0, 3])  # the offset itself does matter
    torch.testing.assert_close(q.norm(dim=-1), q0.norm().expand(40), rtol=1e-5, atol=1e-5)  # a rotation
    torch.testing.assert_close(q[0], q0)  # position 0 is not rotated


def test_rotary_model_has_no_additive_positions_but_knows_the_order():
    """Catches rotary left without any position signal (the embeddings' table dropped and q, k not
    rotated: the encoder would be permutation-equivariant) or still adding the sinusoid table."""
    m = model(position_embedding="rotary").eval()
    assert m.encoder.embeddings.position is None
    ids = batch()["input_ids"]
    flipped = ids.flip(1)
    with torch.no_grad():
        out, out_flipped = m.encoder(ids), m.encoder(flipped)
    assert not torch.allclose(out.flip(1), out_flipped, atol=1e-4)


def test_qk_norm_gives_attention_unit_rms_queries_and_keys(monkeypatch):
    """Catches qk_norm built but not applied (or applied over the wrong axis: all heads together)."""
    seen = []
    real = ops.attention

    def spy(q, k, v, **kwargs):
        seen.append((q, k))
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(ops, "attention", spy)
    m = model(**NEW).eval()
    with torch.no_grad():
        m(**batch())
    assert len(seen) == 2
    for q, k in seen:
        for t in (q, k):  # (B, H, T, D): RMS 1 per head and position (rotation keeps the norm)
            torch.testing.assert_close(
                t.pow(2).mean(-1).sqrt(), torch.ones(t.shape[:-1]), rtol=1e-3, atol=1e-3
            )
    names = [n for n, _ in m.named_parameters() if "_norm" in n and "attn" in n]
    assert names == [f"encoder.blocks.{i}.attn.{w}_norm.weight" for i in range(2) for w in "qk"]


@pytest.mark.parametrize("changes", [NEW, {"position_embedding": "rotary"}, {"qk_norm": True}])
def test_shapes_and_finite_loss_with_both_attention_paths(changes):
    """Catches rotary/QK-norm that only works on one kernel path (they are applied before ops.attention,
    so PyTorch's reference and the Triton kernel, run here by the interpreter, must agree)."""
    m = model(**changes).eval()
    b = batch()
    with torch.no_grad():
        reference = m(**b)
        ops.configure({"kernels": "triton"})
        kernel = m(**b)
    k = b["labels"].shape[1]
    assert reference["logits"].shape == (2 * k, VOCAB) and torch.isfinite(reference["loss"])
    torch.testing.assert_close(kernel["logits"], reference["logits"], rtol=1e-4, atol=1e-4)


def test_a_few_training_steps_lower_the_loss_with_rotary_and_qk_norm():
    """Catches a gradient path broken by the new ops (e.g. q_norm weights that never get a gradient)."""
    m = model(**NEW)
    optimizer = build_optimizer(m, TRAIN, torch.device("cpu"))
    b, runtime, losses = batch(), Runtime(torch.device("cpu"), torch.float32), []
    for _ in range(6):
        loss, _, finite = optimizer_step(m, optimizer, lambda: b, 1, 3e-3, 0.5, runtime)
        assert finite
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.1, losses
    assert not torch.equal(m.encoder.blocks[0].attn.q_norm.weight, torch.ones(16))


def test_export_round_trip_is_strict_and_exact(tmp_path):
    """Catches the q/k norm weights missing from the export, or the rotary tables saved (they are
    rebuilt) so that a strict load fails, or a loaded model that computes something else."""
    m = model(**NEW).eval()
    tokenizer = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]"))
    save_export(m, tokenizer, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.arch["position_embedding"] == "rotary" and loaded.arch["qk_norm"] is True
    b = batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**b)["logits"], m(**b)["logits"], rtol=0, atol=0)


def test_transformers_export_computes_rotary_and_qk_norm(tmp_path):
    """Catches the remote code ignoring rotary or QK-norm (or loading with the tables left unbuilt on
    transformers' meta device): the transformers model must give our logits."""
    from transformers import AutoModelForMaskedLM

    m = model(**NEW).eval()
    with torch.no_grad():  # q/k norm weights away from their ones-init, so a dropped weight shows
        for block in m.encoder.blocks:
            block.attn.q_norm.weight.uniform_(0.5, 1.5)
            block.attn.k_norm.weight.uniform_(0.5, 1.5)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials)}, unk_token="[UNK]"))
    save_export(m, tokenizer, tmp_path / "model")
    export_hf(tmp_path / "model", tmp_path / "hf")
    theirs = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    b = batch()
    with torch.no_grad():
        want = m(b["input_ids"])["logits"]  # no labels: logits at every position, as transformers gives
        got = theirs(input_ids=b["input_ids"]).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_classifier_with_rotary_handles_padding():
    """Catches rotary breaking the fine-tuning path (padded batches with an attention mask)."""
    torch.manual_seed(0)
    classifier = build_classifier(arch(**NEW), VOCAB, num_labels=2).eval()
    ids = batch()["input_ids"]
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    with torch.no_grad():
        logits = classifier(ids, mask)["logits"]
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


@pytest.mark.parametrize("kernels", ["torch", "triton"])  # triton: the interpreter's custom ops
def test_forward_with_rotary_and_qk_norm_is_one_graph(kernels):
    """Catches a graph break from the new ops (a Python-side shape, a .item(), a table built per call)."""
    ops.configure({"kernels": kernels})
    explanation = torch._dynamo.explain(model(**NEW))(**batch())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_default_arch_is_rotary_without_qk_norm_and_the_sinusoid_still_builds():
    """Catches the default losing rotary positions (the recipe search's winner) or gaining QK-norm, and
    the scaled sinusoid of recipe=crammed-paper leaking rotary tables or QK-norm weights."""
    m = model()
    assert arch()["position_embedding"] == "rotary" and arch()["qk_norm"] is False
    assert m.encoder.embeddings.position is None and m.encoder.blocks[0].attn.rotary is not None
    assert not any("norm" in n for n, _ in m.encoder.blocks[0].attn.named_modules() if n)
    paper = model(position_embedding="scaled-sinusoidal")
    assert paper.encoder.embeddings.position is not None
    assert not any("norm" in n or "rotary" in n for n, _ in paper.encoder.blocks[0].attn.named_modules() if n)
    assert not any("rotary" in n for n, _ in paper.named_buffers())


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"position_embedding": "alibi"}, r"arch.position_embedding='alibi' is not one of .*'rotary'"),
        ({"position_embedding": "rotary", "hidden_size": 30, "num_heads": 2}, r"even head dimension.*15"),
        ({"qk_norm": "yes"}, r"arch.qk_norm='yes' must be true or false"),
    ],
)
def test_bad_switch_values_are_config_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        check_group("arch", arch(**changes))


def test_checkpoints_from_before_qk_norm_keep_their_identity():
    """Catches adding arch.qk_norm to the presets refusing every earlier checkpoint on resume as
    "made for another architecture" (the default builds the same model as before the key)."""
    from cramming.train.checkpoint import identity

    before = {k: v for k, v in arch().items() if k != "qk_norm"}
    assert identity(arch(), 300, "{}") == identity(before, 300, "{}")
    assert identity(arch(qk_norm=True), 300, "{}") != identity(before, 300, "{}")
