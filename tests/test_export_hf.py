"""Hugging Face export: transformers loads the folder offline and gives cramming's logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_export import build_tiny_classifier, build_tiny_export

from cramming.export.folder import load_model, load_tokenizer
from cramming.export.remote import export_hf, main
from cramming.kernels import dispatch as ops

transformers = pytest.importorskip("transformers")

LABELS = ["contradiction", "entailment", "neutral"]
TEXTS = ["the film is a great and moving story", "awful", "a long, winding and rather dull plot"]
PAIRS = ["it was good", "really bad acting", "nothing happens"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_corpus) -> dict:
    root = tmp_path_factory.mktemp("hf")
    mlm = build_tiny_export(tiny_corpus["train"], root / "model")
    classifier = build_tiny_classifier(mlm, root / "finetuned", LABELS)
    return {
        "mlm": mlm,
        "classifier": classifier,
        "mlm_hf": export_hf(mlm, root / "model-hf"),
        "classifier_hf": export_hf(classifier, root / "finetuned-hf"),
    }


@pytest.fixture(autouse=True)
def _torch_ops():
    ops.configure({"kernels": "torch"})  # compare against the PyTorch reference path
    yield
    ops.configure({"kernels": "auto"})


def hf_batch(path: Path) -> dict:
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(path)
    return tokenizer(TEXTS, PAIRS, padding=True, return_tensors="pt")


def test_folder_layout_and_config(exports):
    folder = exports["classifier_hf"]
    names = {p.name for p in folder.iterdir()}
    assert names >= {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json", "configuration_cramming.py", "modeling_cramming.py"}  # fmt: skip
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSequenceClassification"].startswith("modeling_cramming.")
    assert config["id2label"] == {"0": "contradiction", "1": "entailment", "2": "neutral"}
    for name in ("configuration_cramming.py", "modeling_cramming.py"):  # self-contained remote code
        source = (folder / name).read_text()
        assert "import cramming" not in source and "from cramming" not in source


def test_tokenizer_matches_cramming(exports):
    ours = load_tokenizer(exports["mlm"])
    batch = hf_batch(exports["mlm_hf"])
    for i, (a, b) in enumerate(zip(TEXTS, PAIRS)):
        ids = ours.encode(a, b).ids
        assert batch["input_ids"][i, : len(ids)].tolist() == ids
        assert batch["attention_mask"][i].sum().item() == len(ids)
    auto = transformers.AutoTokenizer.from_pretrained(exports["mlm_hf"], trust_remote_code=True)
    assert auto(TEXTS[0])["input_ids"] == ours.encode(TEXTS[0]).ids


def test_masked_lm_and_encoder_logits_match(exports):
    batch = hf_batch(exports["mlm_hf"])
    ours = load_model(exports["mlm"])
    path = exports["mlm_hf"]
    mlm = transformers.AutoModelForMaskedLM.from_pretrained(path, trust_remote_code=True).eval()
    encoder = transformers.AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    mask = batch["attention_mask"]
    with torch.no_grad():
        want = ours(batch["input_ids"], attention_mask=mask)["logits"]
        got = mlm(input_ids=batch["input_ids"], attention_mask=mask).logits
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        want_hidden = ours.encoder(batch["input_ids"], mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden[real], want_hidden[real], atol=1e-5, rtol=1e-5)
    assert mlm.decoder.weight.data_ptr() == mlm.encoder.embeddings.word.weight.data_ptr()  # tied


def test_sequence_classification_logits_match(exports):
    batch = hf_batch(exports["classifier_hf"])
    ours = load_model(exports["classifier"])
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        exports["classifier_hf"], trust_remote_code=True
    ).eval()
    with torch.no_grad():
        want = ours(batch["input_ids"], attention_mask=batch["attention_mask"])["logits"]
        got = model(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert model.config.id2label == dict(enumerate(LABELS))
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()


@pytest.mark.slow
def test_remote_code_runs_without_the_cramming_package(exports, tmp_path):
    """A fresh process where `import cramming` fails still loads the folder and gives the same logits."""
    with torch.no_grad():
        batch = hf_batch(exports["classifier_hf"])
        want = load_model(exports["classifier"])(batch["input_ids"], attention_mask=batch["attention_mask"])
    script = f"""
import sys, json
sys.modules["cramming"] = None  # any import of cramming now fails
import torch, transformers
path = {str(exports["classifier_hf"])!r}
tok = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=True)
model = transformers.AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(**tok({TEXTS!r}, {PAIRS!r}, padding=True, return_tensors="pt")).logits
print(json.dumps(logits.tolist()))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    got = np.asarray(json.loads(proc.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(got, want["logits"].numpy(), atol=1e-5)


def test_cli_arguments(exports, tmp_path, capsys):
    assert main([f"model={exports['mlm']}", f"out={tmp_path / 'x'}"]) == 0
    assert (tmp_path / "x" / "modeling_cramming.py").is_file()
    assert main([f"model={tmp_path}", f"out={tmp_path / 'y'}"]) == 2
    assert "not an exported cramming model" in capsys.readouterr().err
    assert main(["path=foo"]) == 2
    assert "unexpected argument 'path=foo'" in capsys.readouterr().err


def test_python_dash_m_cramming_export_is_the_command(exports, tmp_path):
    """Catches `python -m cramming.export` (the README's command) not reaching remote.main."""
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "cramming.export", f"model={exports['mlm']}", f"out={out}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "modeling_cramming.py").is_file() and (out / "config.json").is_file()
    proc = subprocess.run(
        [sys.executable, "-m", "cramming.export", "path=foo"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "error: unexpected argument 'path=foo'" in proc.stderr
