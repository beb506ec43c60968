"""Every export kind through transformers: no weight left behind, the same logits on padded batches.

Kinds: crammed MLM and classifier (remote code, WordPiece and byte-level BPE), recipe=bert and recipe=roberta
models transformers computes natively (BertForPreTraining, RobertaForMaskedLM), and the same two with a
non-native override (``arch.norm_position=pre``), which go through the remote code with their decoder bias,
pooler and NSP head. Weights are random and every parameter is perturbed (a decoder bias of zeros or a
LayerNorm of ones would hide a dropped weight). Batches are ``padding=True`` sentence pairs of unequal
lengths; logits are compared at the non-pad positions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_export import perturbed, tiny_arch, train_tokenizer

from cramming.conf import read_yaml
from cramming.data.tokenizer import special_ids
from cramming.data.tokenizer import train_tokenizer as train_cramming_tokenizer
from cramming.export.folder import FRAMING, load_model, pretraining_framing, save_export
from cramming.export.remote import check_carried, export_hf, hf_config, state_dict_for_hf
from cramming.kernels import dispatch as ops
from cramming.models import BertForMLM, BertForPreTraining, build_classifier

transformers = pytest.importorskip("transformers")

TEXTS = ["the film is a great and moving story", "awful", "a long, winding and rather dull plot"]
PAIRS = ["it was good", "really bad acting, nothing happens at all in the whole", "no"]
SMALL = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 64,
}


def small_arch(name: str, **extra) -> dict:
    arch = read_yaml("arch", f"{name}.yaml")
    return {**arch, **SMALL, "dropout": 0.0, "attention_dropout": 0.0, **extra}


def run_cfg(recipe: str, bpe: bool) -> dict:
    """The slice of a run config pretraining_framing reads."""
    data = read_yaml("data", "local.yaml")
    if recipe != "crammed":
        data.update(masking="bert", mlm_probability=0.15, objective="nsp" if recipe == "bert" else "mlm")
    data["tokenizer"]["kind"] = "bpe" if bpe else "wordpiece"
    return {"recipe": recipe, "data": data}


@pytest.fixture(scope="module")
def tokenizers(tiny_corpus) -> dict:
    with open(tiny_corpus["train"], encoding="utf-8") as f:
        docs = [line for _, line in zip(range(3000), f) if line.strip()]
    return {
        "wordpiece": train_tokenizer(tiny_corpus["train"]),
        "bpe": train_cramming_tokenizer(docs, 600, {"kind": "bpe"}),
    }


# kind -> (model builder (vocab) -> model, tokenizer, recipe, transformers class names, native?)
KINDS = {
    "crammed-mlm": (lambda v: BertForMLM(tiny_arch(), v), "wordpiece", "crammed", ["AutoModelForMaskedLM"], False),
    "crammed-mlm-bpe": (lambda v: BertForMLM(tiny_arch(), v), "bpe", "crammed", ["AutoModelForMaskedLM"], False),
    "crammed-classifier": (
        lambda v: build_classifier(tiny_arch(), v, 3, dropout=0.0, attention_dropout=0.0),
        "wordpiece", "crammed", ["AutoModelForSequenceClassification"], False,
    ),
    "bpe-classifier": (
        lambda v: build_classifier(tiny_arch(), v, 2, dropout=0.0, head="bert", attention_dropout=0.0),
        "bpe", "crammed", ["AutoModelForSequenceClassification"], False,
    ),
    "bert-native": (
        lambda v: BertForPreTraining(small_arch("bert-base"), v, nsp=True),
        "wordpiece", "bert", ["BertForPreTraining", "AutoModelForPreTraining"], True,
    ),
    "roberta-native": (
        lambda v: BertForPreTraining(small_arch("roberta-base"), v), "bpe", "roberta", ["AutoModelForMaskedLM"], True,
    ),
    "bert-pre-ln": (
        lambda v: BertForPreTraining(small_arch("bert-base", norm_position="pre"), v, nsp=True),
        "wordpiece", "bert", ["AutoModelForPreTraining", "AutoModelForMaskedLM"], False,
    ),
    "roberta-pre-ln": (
        lambda v: BertForPreTraining(small_arch("roberta-base", norm_position="pre"), v),
        "bpe", "roberta", ["AutoModelForMaskedLM", "AutoModelForPreTraining"], False,
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def exported(tokenizers, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("kinds")
    out = {}
    for i, (kind, (build, tok_name, recipe, _, _)) in enumerate(KINDS.items()):
        tok = tokenizers[tok_name]
        torch.manual_seed(i)
        model = perturbed(build(tok.get_vocab_size()), seed=100 + i)
        extra = {"pretraining": {"recipe": recipe}}
        if kind != "crammed-classifier":  # one export from before the framing block existed
            extra[FRAMING] = pretraining_framing(run_cfg(recipe, tok_name == "bpe"), tok)
        if "classifier" in kind:
            labels = [f"l{j}" for j in range(model.num_labels)]
            extra.update(labels=labels, text_column="text", max_length=64)
        src = save_export(model, tok, root / kind, extra=extra)
        out[kind] = {"src": src, "hf": export_hf(src, root / f"{kind}-hf"), "tok": tok}
    return out


@pytest.fixture(autouse=True)
def _torch_ops():
    ops.configure({"kernels": "torch"})
    yield
    ops.configure({"kernels": "auto"})


def ours(src: Path, batch: dict) -> dict[str, torch.Tensor]:
    model = load_model(src)
    kwargs = {"attention_mask": batch["attention_mask"], "token_type_ids": batch.get("token_type_ids")}
    with torch.no_grad():
        return model(batch["input_ids"], **kwargs)


@pytest.mark.parametrize("kind", list(KINDS))
def test_transformers_loads_every_weight_and_gives_our_logits_on_padded_batches(exported, kind):
    """Catches a weight dropped or left random on load (MLM decoder bias, BERT pooler, NSP head, classifier
    heads), a wrong pad id or missing special tokens (padding=True fails or pads with <s>), a wrong weight
    layout, or a native/remote mix-up: transformers must report no missing, unexpected or mismatched key."""
    _, tok_name, _, classes, native = KINDS[kind]
    folder = exported[kind]["hf"]
    assert bool(list(folder.glob("*.py"))) is not native  # native kinds ship no remote code
    config = json.loads((folder / "config.json").read_text())
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    pad = special_ids(exported[kind]["tok"])["pad"]
    assert config["pad_token_id"] == pad == tokenizer.pad_token_id
    batch = tokenizer(TEXTS, PAIRS, padding=True, return_tensors="pt")
    real = batch["attention_mask"].bool()
    assert (~real).any() and (
        batch["input_ids"][~real] == pad
    ).all()  # unequal lengths, padded with the pad id
    want = ours(exported[kind]["src"], batch)
    for name in classes:
        cls = getattr(transformers, name)
        model, info = cls.from_pretrained(folder, trust_remote_code=not native, output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), (name, info)
        with torch.no_grad():
            got = model.eval()(**batch)
        if "SequenceClassification" in name:
            torch.testing.assert_close(got.logits, want["logits"], atol=1e-5, rtol=1e-5)
            continue
        logits = got.prediction_logits if "PreTraining" in name else got.logits
        torch.testing.assert_close(logits[real], want["logits"][real], atol=1e-4, rtol=1e-4)
        if "PreTraining" in name and "nsp_logits" in want:
            torch.testing.assert_close(got.seq_relationship_logits, want["nsp_logits"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_config_records_how_pretraining_framed_the_inputs(exported, kind):
    """Catches an export (native or remote code) whose config.json does not say how inputs were framed in
    pretraining, or says it wrongly; an export from before the key says it was not recorded."""
    _, tok_name, recipe, _, _ = KINDS[kind]
    config = json.loads((exported[kind]["hf"] / "config.json").read_text())
    framing = config[FRAMING]
    if kind == "crammed-classifier":
        assert framing["recorded"] is False and framing["tokenizer_kind"] == "wordpiece"
        return
    source = json.loads((exported[kind]["src"] / "config.json").read_text())[FRAMING]
    assert framing == source
    assert framing["recipe"] == recipe and framing["seq_len"] == 128 and framing["cls_per_sequence"] is False
    assert framing["objective"] == ("nsp" if recipe == "bert" else "mlm")
    assert framing["mlm_probability"] == (0.4 if recipe == "crammed" else 0.15)
    assert framing["masking"] == ("crammed" if recipe == "crammed" else "bert") and framing["masking_scheme"]
    assert framing["tokenizer_kind"] == tok_name
    if tok_name == "wordpiece":
        assert framing["normalization"] == {"lowercase": True, "strip_accents": True, "ascii_only": True}
        assert framing["normalizer"]["type"] == "BertNormalizer"
    else:
        assert framing["normalization"] == {} and framing["normalizer"] is None


def test_an_export_that_would_lose_or_invent_a_weight_is_refused(exported):
    """Catches the old behaviour: a weight the remote-code class has no place for (here the decoder bias of
    a recipe=bert model, or an unknown tensor) written anyway and dropped with only a warning on load."""
    model = load_model(exported["bert-pre-ln"]["src"])
    state = state_dict_for_hf(model)
    src_config = json.loads((exported["bert-pre-ln"]["src"] / "config.json").read_text())
    config = hf_config(src_config, exported["bert-pre-ln"]["tok"])
    check_carried(state, config)  # as exported: everything has its place
    with pytest.raises(ValueError, match="no place for: decoder_bias, nsp_head.bias, nsp_head.weight"):
        check_carried(state, {**config, "decoder_bias": False, "nsp": False})
    with pytest.raises(ValueError, match="no place for: extra.weight"):
        check_carried({**state, "extra.weight": torch.zeros(2)}, config)
    without_pooler = {k: v for k, v in state.items() if not k.startswith("pooler.")}
    with pytest.raises(ValueError, match="start from random values: pooler.bias, pooler.weight"):
        check_carried(without_pooler, config)


def test_a_fine_tuned_classifier_carries_its_encoders_framing(exported, tmp_path):
    """Catches fine-tuning dropping the pretraining framing: the classifier export (and its transformers
    folder) must say how the encoder's inputs were framed, not 'not recorded'."""
    from tiny_export import finetune_cfg, write_csv

    from cramming.finetune import run_finetune

    rows = [{"text": t, "label": str(i % 2)} for i, t in enumerate(TEXTS + PAIRS)]
    train = write_csv(tmp_path / "train.csv", rows)
    cfg = finetune_cfg(
        model=str(exported["crammed-mlm"]["src"]), train_file=str(train), out_dir=str(tmp_path / "ft")
    )
    run_finetune({**cfg, "epochs": 1, "max_length": 32})
    source = json.loads((exported["crammed-mlm"]["src"] / "config.json").read_text())[FRAMING]
    assert json.loads((tmp_path / "ft" / "config.json").read_text())[FRAMING] == source
    hf = json.loads((export_hf(tmp_path / "ft", tmp_path / "ft-hf") / "config.json").read_text())
    assert hf[FRAMING] == source
