"""`python -m cramming.glue model=PATH_OR_ID` for transformers checkpoints (cramming.finetune.external).

Tiny random-weight folders of each family the installed transformers has are built here with
``save_pretrained`` (offline), run through the project's GLUE protocol, and ranked by the leaderboard.
"""

import json

import _glue_fixtures
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

from cramming.finetune.encode import collate, encode_examples
from cramming.finetune.external import ExternalClassifier, is_external, load_external, slug
from cramming.finetune.pretrained import build_finetune_model, load_pretrained, resolve_head
from cramming.glue import run_glue
from cramming.leaderboard import scan, write_leaderboard

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("restore_runtime_globals")

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
SETTINGS = {"tasks": ["sst2"], "seeds": 2, "epochs": 1, "max_train_examples": 48, "max_eval_examples": 32,
            "max_test_examples": 8, "impl": {"threads": 1, "kernels": "torch"}}  # fmt: skip


def wordpiece(corpus) -> transformers.PreTrainedTokenizerFast:
    tok = _glue_fixtures.train_tokenizer(corpus, lines=1500, vocab_size=800)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )  # fmt: skip


def byte_bpe(corpus) -> transformers.PreTrainedTokenizerFast:
    """RoBERTa's kind: byte-level BPE, <s> a </s></s> b </s>, <pad> = 1."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=specials, show_progress=False)
    with open(corpus, encoding="utf-8") as f:
        tok.train_from_iterator([next(f) for _ in range(1500)], trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        cls_token="<s>", sep_token="</s>", mask_token="<mask>",
    )  # fmt: skip


def family_config(family: str, tok) -> object:
    ids = {"pad_token_id": tok.pad_token_id}
    vocab = len(tok)
    if family == "bert":
        return transformers.BertConfig(vocab_size=vocab, max_position_embeddings=128, **SMALL, **ids)
    if family == "roberta":
        return transformers.RobertaConfig(vocab_size=vocab, max_position_embeddings=130, type_vocab_size=1,
                                          bos_token_id=0, eos_token_id=2, **SMALL, **ids)  # fmt: skip
    if family == "distilbert":
        return transformers.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                             max_position_embeddings=128, **ids)  # fmt: skip
    if family == "albert":
        return transformers.AlbertConfig(vocab_size=vocab, embedding_size=16, max_position_embeddings=128,
                                         **SMALL, **ids)  # fmt: skip
    cls, sep = tok.cls_token_id, tok.sep_token_id
    return transformers.ModernBertConfig(vocab_size=vocab, max_position_embeddings=128, local_attention=16,
                                         cls_token_id=cls, sep_token_id=sep, bos_token_id=cls, eos_token_id=sep,
                                         **SMALL, **ids)  # fmt: skip


FAMILIES = [f for f, name in [("bert", "BertConfig"), ("roberta", "RobertaConfig"), ("distilbert", "DistilBertConfig"),
                              ("albert", "AlbertConfig"), ("modernbert", "ModernBertConfig")]
            if hasattr(transformers, name)]  # fmt: skip


def make_checkpoint(family: str, folder, corpus):
    """A random-weight transformers folder of ``family`` with its own fast tokenizer, as a user downloads it."""
    tok = byte_bpe(corpus) if family == "roberta" else wordpiece(corpus)
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(family_config(family, tok))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_corpus):
    root = tmp_path_factory.mktemp("hf-checkpoints")
    return {f: make_checkpoint(f, root / f"tiny-{f}", tiny_corpus["train"]) for f in FAMILIES}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return tmp_path_factory.mktemp("outputs")


def test_which_models_are_external(checkpoints, tmp_path):
    assert is_external(checkpoints["bert"]) and is_external("bert-base-uncased")
    assert is_external("FacebookAI/roberta-base") and slug("FacebookAI/roberta-base") == "roberta-base"
    _glue_fixtures.make_tiny_export(tmp_path / "model", _glue_fixtures.REPO_ROOT / "README.md")
    assert not is_external(tmp_path / "model")  # this project's export keeps its own loader
    assert not is_external("outputs/RUN/model") and not is_external(tmp_path)


def test_an_unloadable_id_is_a_clear_error():
    """Offline (HF_HUB_OFFLINE=1): a hub id that is not cached fails with one readable ValueError."""
    with pytest.raises(ValueError, match="neither a cramming export nor a transformers checkpoint"):
        run_glue("no-such-org/no-such-model", {"tasks": ["sst2"]})


@pytest.mark.parametrize("family", FAMILIES)
def test_classifier_starts_from_the_checkpoint_with_the_protocol(checkpoints, family):
    """Bug it guards: fresh random encoder weights instead of the checkpoint's, or the family's own
    dropout (often 0) instead of the protocol's 0.1 on hidden states and attention."""
    pretrained = load_external(checkpoints[family])
    model = build_finetune_model(pretrained, 3, dropout=0.1, head="auto", attention_dropout=0.1)
    assert isinstance(model, ExternalClassifier) and model.num_labels == 3
    reference = transformers.AutoModel.from_pretrained(checkpoints[family]).state_dict()
    for name, tensor in model.encoder.state_dict().items():
        torch.testing.assert_close(tensor, reference[name], msg=name)
    cfg = model.encoder.config.to_dict()
    assert any(cfg.get(k) == 0.1 for k in ("attention_probs_dropout_prob", "attention_dropout"))
    assert resolve_head("auto", pretrained) == (
        "bert" if family in ("bert", "albert", "roberta") else "crammed"
    )
    ids = torch.randint(5, 200, (2, 9))
    out = model.eval()(ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 2]))
    assert out["logits"].shape == (2, 3) and torch.isfinite(out["loss"])


@pytest.mark.parametrize("family", FAMILIES)
def test_glue_runner_on_each_family(checkpoints, outputs, glue_dir, family):
    """The whole protocol: seeds, median, confusion matrix, submission TSV, run report, external mark."""
    out = outputs / f"external-{family}" / "glue"
    results = run_glue(checkpoints[family], {**SETTINGS, "glue_dir": str(glue_dir)}, out_dir=out)
    sst2 = results["tasks"]["sst2"]
    assert results["external"]["family"] == family and results["arch"] == family
    assert results["external"]["parameters"] > 0 and results["run"] == f"external-{family}"
    assert len(sst2["seeds"]) == 2 and sst2["classes"]["dev"]["confusion_matrix"]
    assert sum(map(sum, sst2["classes"]["dev"]["confusion_matrix"])) == 32
    assert (out / "submission" / "SST-2.tsv").read_text().startswith("index\tprediction")
    assert (out / "confusion" / "sst2.png").is_file()
    assert family in (out.parent / "report.html").read_text()


def test_leaderboard_ranks_external_rows_beside_project_runs(checkpoints, outputs, glue_dir, tmp_path):
    """At least one row computed by the GLUE runner on an external checkpoint, marked external."""
    if not (outputs / "external-bert" / "glue" / "results.json").is_file():
        run_glue(checkpoints["bert"], {**SETTINGS, "glue_dir": str(glue_dir)},
                 out_dir=outputs / "external-bert" / "glue")  # fmt: skip
    project = outputs / "project-run"
    _glue_fixtures.make_tiny_export(project / "model", _glue_fixtures.REPO_ROOT / "README.md")
    (project / "summary.json").write_text(json.dumps({"arch": "tiny", "finished": True, "budget": "1m"}))
    run_glue(project / "model", {**SETTINGS, "glue_dir": str(glue_dir)})
    rows, _ = scan(outputs)
    kinds = {r["run"]: r["kind"] for r in rows}
    assert kinds["external-bert"] == "external" and kinds["project-run"] == "measured"
    bert = next(r for r in rows if r["run"] == "external-bert")
    assert bert["arch"] == "bert" and bert["average"] is not None and bert["coverage"] == "1/9"
    paths = write_leaderboard(outputs, tmp_path / "lb")
    assert "external-bert [external]" in paths["md"].read_text()
    assert "external" in next(
        line for line in paths["csv"].read_text().splitlines() if "external-bert" in line
    )
    assert '<tr class="external' in paths["html"].read_text()


def cue_task(glue_dir, corpus, train: int = 320, dev: int = 80):
    """An SST-2 folder whose label is a cue word in a corpus sentence: a tiny random model learns it in
    a few epochs, so the two paths' scores differ by more than the majority class."""
    rng = np.random.default_rng(0)
    lines = [line.strip().lower() for line in open(corpus, encoding="utf-8") if len(line.split()) > 8]
    rows = []
    for i in range(train + dev + 8):
        words = lines[i % len(lines)].split()[:20]
        label = int(rng.integers(2))
        words.insert(int(rng.integers(len(words))), ("excellent" if label else "terrible"))
        rows.append((" ".join(w.replace("\t", " ") for w in words), label))
    folder = glue_dir / "SST-2"
    folder.mkdir(parents=True)
    for name, part in (("train", rows[:train]), ("dev", rows[train : train + dev])):
        (folder / f"{name}.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in part))
    (folder / "test.tsv").write_text(
        "index\tsentence\n" + "".join(f"{i}\t{t}\n" for i, (t, _) in enumerate(rows[-8:]))
    )
    return glue_dir


def test_native_export_scores_agree_through_both_paths(tmp_path, tiny_corpus):
    """A recipe=bert export fine-tuned as a cramming export and, after export_hf, as a transformers
    BERT folder: the same weights and tokenizer, so the medians agree within the seeds' spread."""
    from cramming.export.folder import save_export
    from cramming.export.remote import export_hf
    from cramming.models import BertForPreTraining

    arch = {**_glue_fixtures.tiny_arch(), **json.loads(json.dumps(BERT_ARCH))}
    tok = _glue_fixtures.train_tokenizer(tiny_corpus["train"])
    torch.manual_seed(0)
    model = BertForPreTraining(arch, tok.get_vocab_size(), nsp=True)
    native = save_export(model, tok, tmp_path / "run" / "model", extra={"pretraining": {"recipe": "bert"}})
    hf = export_hf(native, tmp_path / "hf-bert")
    assert json.loads((hf / "config.json").read_text())["model_type"] == "bert" and is_external(hf)
    # the same encoder through both loaders: equal hidden states in eval mode
    ours_model = build_finetune_model(load_pretrained(native), 2).eval()
    theirs_model = build_finetune_model(load_external(hf), 2).eval()
    encoded = encode_examples(tok, ["a gripping , funny film"], ["dull and long"], None, 32)
    batch = collate(encoded, np.arange(1), torch.device("cpu"))
    with torch.no_grad():
        hidden = ours_model.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        other = theirs_model.encoder(**batch).last_hidden_state
    torch.testing.assert_close(hidden, other, atol=1e-4, rtol=1e-4)
    cue_dir = cue_task(tmp_path / "glue", tiny_corpus["train"])
    settings = {**SETTINGS, "glue_dir": str(cue_dir), "seeds": 3, "epochs": 8, "lr": 1e-3,
                "max_train_examples": None, "max_eval_examples": None}  # fmt: skip
    ours = run_glue(native, settings, out_dir=tmp_path / "ours")["tasks"]["sst2"]
    theirs = run_glue(hf, settings, out_dir=tmp_path / "theirs")["tasks"]["sst2"]
    assert ours["examples"] == theirs["examples"]  # the same subsets, encoded the same way
    a = [s["scores"]["accuracy"] for s in ours["seeds"]]
    b = [s["scores"]["accuracy"] for s in theirs["seeds"]]
    assert min(np.median(a), np.median(b)) > 75  # both learnt the cue (the majority class is ~50%)
    spread = max(np.ptp(a), np.ptp(b), 100 / 80)  # at least one dev example
    assert abs(np.median(a) - np.median(b)) <= spread, (a, b)
    print("native vs transformers path, SST-2 dev accuracy per seed:", a, b)


BERT_ARCH = {"name": "bert-tiny", "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
             "ffn": "gelu", "activation": "gelu", "norm_position": "post", "linear_bias": True, "norm_bias": True,
             "embedding_norm": True, "final_norm": False, "position_embedding": "learned",
             "max_position_embeddings": 128, "type_vocab_size": 2, "prediction_head": True,
             "tie_embeddings": True, "dropout": 0.1, "attention_dropout": 0.1}  # fmt: skip
