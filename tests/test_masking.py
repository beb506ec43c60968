"""Static-shape MLM masking: a fixed count of masked slots per sequence, and the model's gather-by-index loss."""

import pytest
import torch
import torch.nn.functional as F

from cramming.conf import read_yaml
from cramming.data import MLMCollator
from cramming.kernels import dispatch as ops
from cramming.models import IGNORE_INDEX, build_mlm

SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
VOCAB, T = 300, 24


@pytest.fixture(autouse=True)
def torch_ops():
    ops.configure({"kernels": "torch"})  # the model math, not the kernels, is under test here
    yield
    ops.configure({"kernels": "auto"})


def tiny_model() -> torch.nn.Module:
    arch = read_yaml("arch", "tiny.yaml")
    torch.manual_seed(0)
    return build_mlm({**arch, "hidden_size": 32, "intermediate_size": 64}, VOCAB)


def batch_with_specials(seed: int, pads: int) -> torch.Tensor:
    """(4, T) ids: row 0 plain, row 1 with `pads` trailing [PAD]s, row 2 many [SEP]s, row 3 a single real token."""
    ids = torch.randint(5, VOCAB, (4, T), generator=torch.Generator().manual_seed(seed))
    ids[1, T - pads :] = SPECIAL["pad"]
    ids[2, ::2] = SPECIAL["sep"]
    ids[3, 2:] = SPECIAL["pad"]
    ids[3, 0] = SPECIAL["cls"]
    return ids


def test_fixed_count_and_sequences_with_few_maskable_tokens():
    """Catches per-token (Bernoulli) masking, whose count varies, and filling short rows with specials."""
    ids = batch_with_specials(0, pads=10)
    collate = MLMCollator(VOCAB, SPECIAL, mlm_probability=0.25)
    k = collate.num_masked(T)
    assert k == 6
    batch = collate(ids, generator=torch.Generator().manual_seed(1))
    positions, labels, inputs = batch["masked_positions"], batch["labels"], batch["input_ids"]
    assert positions.shape == labels.shape == (4, k) and positions.dtype == torch.long
    for row in range(4):
        assert len(set(positions[row].tolist())) == k, "slots of one sequence must be distinct positions"
    real = labels != IGNORE_INDEX
    assert real[:3].all(), "rows with at least k maskable tokens get exactly k labelled slots"
    # row 3 is [CLS], one real token, then [PAD]s
    maskable = (~torch.isin(ids[3], torch.tensor(list(SPECIAL.values())))).nonzero().squeeze(1)
    assert real[3].sum() == len(maskable) == 1
    assert positions[3, 0] == maskable[0], "the one maskable token comes first, the ignored slots after"
    ignored = positions[3, 1:]
    assert torch.isin(ids[3, ignored], torch.tensor(list(SPECIAL.values()))).all()
    assert torch.equal(inputs[3, ignored], ids[3, ignored]), "ignored slots leave their token unchanged"


def test_positions_are_uniform_over_maskable_tokens():
    """Catches a biased choice, e.g. always the first k maskable positions or ties broken by index."""
    ids = torch.randint(5, VOCAB, (4000, 16), generator=torch.Generator().manual_seed(2))
    ids[:, [0, 5, 9, 15]] = SPECIAL["sep"]  # 12 maskable positions, k = 4: each chosen 1/3 of the time
    batch = MLMCollator(VOCAB, SPECIAL)(ids, generator=torch.Generator().manual_seed(3))
    counts = torch.bincount(batch["masked_positions"].flatten(), minlength=16).double() / len(ids)
    assert counts[[0, 5, 9, 15]].sum() == 0
    keep = [i for i in range(16) if i not in (0, 5, 9, 15)]
    assert (counts[keep] - 1 / 3).abs().max() < 0.03  # std of each frequency ~0.0075


def test_indexed_loss_equals_boolean_mask_loss():
    """Catches gathering along the wrong axis, labels out of step with positions, or ignored slots in the mean."""
    model = tiny_model()
    ids = batch_with_specials(4, pads=10)
    batch = MLMCollator(VOCAB, SPECIAL)(ids, generator=torch.Generator().manual_seed(5))
    assert (batch["labels"] == IGNORE_INDEX).any(), "the batch should include ignored slots"
    new = model(**batch)["loss"]
    (new_grad,) = torch.autograd.grad(new, model.decoder.weight)

    # the old way: per-token labels and a boolean selection of the same positions
    dense = torch.full_like(ids, IGNORE_INDEX).scatter(1, batch["masked_positions"], batch["labels"]).view(-1)
    hidden = model.encoder(batch["input_ids"])
    selected = dense != IGNORE_INDEX
    old = F.cross_entropy(model.decode(hidden.view(-1, hidden.shape[-1])[selected]), dense[selected])
    (old_grad,) = torch.autograd.grad(old, model.decoder.weight)
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(new_grad, old_grad, rtol=1e-5, atol=1e-7)
    # per-token labels still work for other callers, and dense prediction agrees
    torch.testing.assert_close(model(batch["input_ids"], dense.view(ids.shape))["loss"], old)
    model.arch["sparse_prediction"] = False
    torch.testing.assert_close(model(**batch)["loss"], old, rtol=1e-6, atol=1e-6)


def test_pretraining_forward_has_static_shapes():
    """Catches a data-dependent shape (boolean indexing, nonzero, .item()) in the pretraining forward:
    dynamo traces those as unbacked sizes (a host sync on GPU), a graph break, or a recompile."""
    symbolic = []

    def record_symbolic_shapes(gm: torch.fx.GraphModule, example_inputs):
        for node in gm.graph.nodes:
            value = node.meta.get("example_value")
            shape = value.shape if isinstance(value, torch.Tensor) else (value,)
            if any(isinstance(size, torch.SymInt) for size in shape):
                symbolic.append(node.name)
        return gm.forward

    model = tiny_model()
    collate = MLMCollator(VOCAB, SPECIAL)
    k = collate.num_masked(T)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=record_symbolic_shapes, fullgraph=True, dynamic=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed, pads in enumerate((0, 7, 20)):  # different numbers of special and maskable tokens
            batch = collate(batch_with_specials(seed, pads), generator=torch.Generator().manual_seed(seed))
            out = compiled(**batch)
            assert out["logits"].shape == (4 * k, VOCAB)
            assert torch.isfinite(out["loss"])
    torch._dynamo.reset()
    assert not symbolic, f"data-dependent shapes in the traced forward: {symbolic}"


def test_mismatched_positions_and_labels_raise():
    model = tiny_model()
    ids = batch_with_specials(0, pads=0)
    with pytest.raises(ValueError, match=r"masked_positions \(4, 6\) and labels \(4, 5\)"):
        model(ids, torch.zeros(4, 5, dtype=torch.long), masked_positions=torch.zeros(4, 6, dtype=torch.long))
