"""recipe=bert and recipe=roberta end to end on the tiny corpus: training, export, transformers, GLUE batches."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from cramming.config import CONF_PATH
from cramming.export.folder import load_model, load_tokenizer
from cramming.export.remote import export_hf
from cramming.finetune.encode import collate, encode_examples
from cramming.finetune.pretrained import build_finetune_model, load_pretrained
from cramming.kernels import dispatch as ops
from cramming.pretrain import pretrain_main

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # two short pretraining runs: ~1 min on a free CPU, ~3.5 min on a busy one

TEXTS = ["the film is a great and moving story", "awful"]
PAIRS = ["it was good", "really bad acting, nothing happens"]


def run_recipe(recipe: str, tiny_corpus, tmp_path) -> dict:
    overrides = [
        f"recipe={recipe}", "budget=40steps", f"name={recipe}", f"base_dir={tmp_path / 'outputs'}",
        "arch.num_layers=2", "arch.hidden_size=64", "arch.num_heads=2", "arch.intermediate_size=128",
        "arch.max_position_embeddings=64", "train.lr=2e-3", "train.warmup_fraction=0.1",
        "train.microbatch_size=8", "train.batch_size_start=8", "train.batch_size=8", "train.log_every=10",
        "train.validation_batches=2", "data=local", f"data.files=[{tiny_corpus['train']}]",
        f"data.validation_files=[{tiny_corpus['valid']}]", "data.vocab_size=2048", "data.seq_len=48",
        f"data.cache_dir={tmp_path / 'cache'}", "data.num_workers=1", "impl.kernels=torch",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        cfg = compose("pretrain", overrides=overrides)
    summary = pretrain_main(cfg)
    run = tmp_path / "outputs" / recipe
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"summary": summary, "run": run, "train": [m for m in logged if "lr" in m]}


@pytest.fixture(scope="module")
def runs(tiny_corpus, tmp_path_factory):
    ops.configure({"kernels": "torch"})
    root = tmp_path_factory.mktemp("recipes")
    return {recipe: run_recipe(recipe, tiny_corpus, root) for recipe in ("bert", "roberta")}


@pytest.mark.parametrize("recipe", ["bert", "roberta"])
def test_recipe_trains_with_falling_loss_and_exports(runs, recipe):
    """Catches: a recipe whose loss does not fall (wrong labels or masking), or a run that does not export."""
    run = runs[recipe]
    assert run["summary"]["finished"] and run["summary"]["recipe"] == recipe
    first, last = run["train"][0], run["train"][-1]
    assert last["loss"] < first["loss"] - 0.5, (first["loss"], last["loss"])
    if recipe == "bert":  # NSP logged beside the MLM loss
        assert {"mlm_loss", "nsp_loss", "nsp_accuracy"} <= set(last)
        assert last["loss"] == pytest.approx(last["mlm_loss"] + last["nsp_loss"], rel=1e-4)
    assert (run["run"] / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("recipe", ["bert", "roberta"])
def test_export_records_how_pretraining_framed_the_inputs(runs, recipe, tmp_path):
    """Catches an export (ours or the transformers folder) that does not say how the inputs were framed:
    evaluation code could not rebuild the training layout (seq_len, [CLS] per sequence, masking, normaliser)."""
    model_dir = runs[recipe]["run"] / "model"
    framing = json.loads((model_dir / "config.json").read_text())["cramming_pretraining"]
    assert framing["recipe"] == recipe and framing["seq_len"] == 48
    assert framing["objective"] == ("nsp" if recipe == "bert" else "mlm")
    assert (framing["masking"], framing["mlm_probability"]) == ("bert", 0.15)
    assert framing["tokenizer_kind"] == ("wordpiece" if recipe == "bert" else "bpe")
    assert "cls_per_sequence" in framing and "normalizer" in framing
    hf = json.loads((export_hf(model_dir, tmp_path / "hf") / "config.json").read_text())
    assert hf["cramming_pretraining"] == framing


@pytest.mark.parametrize(
    "recipe, classes",
    [("bert", ("BertForPreTraining", "BertForMaskedLM", "AutoModel")), ("roberta", ("RobertaForMaskedLM",))],
)
def test_transformers_loads_the_export_without_remote_code(runs, recipe, classes, tmp_path):
    """Catches: a weight-name or layout mistake (QKV split, RoBERTa's position offset, the decoder bias,
    the pooler/NSP head) that changes logits, or an export that needs trust_remote_code."""
    model_dir = runs[recipe]["run"] / "model"
    out = export_hf(model_dir, tmp_path / "hf")
    assert not list(out.glob("*.py"))  # no remote code shipped
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    batch = tokenizer(TEXTS, PAIRS, padding=True, return_tensors="pt")
    assert batch["input_ids"][0].tolist()[
        : len(load_tokenizer(model_dir).encode(TEXTS[0], PAIRS[0]).ids)
    ] == (load_tokenizer(model_dir).encode(TEXTS[0], PAIRS[0]).ids)
    ours = load_model(model_dir)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        mine = ours(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch.get("token_type_ids"),
        )
        for name in classes:
            model = getattr(transformers, name).from_pretrained(out).eval()
            got = model(**batch)
            if name == "AutoModel":
                continue  # the encoder alone: loaded without error is the point
            logits = got.prediction_logits if name == "BertForPreTraining" else got.logits
            assert torch.allclose(logits[real], mine["logits"][real], atol=1e-4)
            if name == "BertForPreTraining":
                assert torch.allclose(got.seq_relationship_logits, mine["nsp_logits"], atol=1e-5)


def test_glue_batches_use_token_types_on_a_bert_recipe_model(runs):
    """Catches: GLUE fine-tuning that drops token types (B looks like A) for a model trained with them."""
    model_dir = runs["bert"]["run"] / "model"
    classifier = build_finetune_model(load_pretrained(model_dir), 2, dropout=0.0).eval()
    examples = encode_examples(load_tokenizer(model_dir), TEXTS, PAIRS, labels=[0, 1])
    batch = collate(examples, torch.arange(2).numpy(), torch.device("cpu"))
    assert batch["token_type_ids"].max() == 1
    with torch.no_grad():
        with_types = classifier(**{k: v for k, v in batch.items() if k != "labels"})["logits"]
        batch["token_type_ids"].zero_()
        without = classifier(**{k: v for k, v in batch.items() if k != "labels"})["logits"]
    assert not torch.allclose(with_types, without)
