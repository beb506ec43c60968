"""Export folders: a corrupt config.json or tokenizer.json is a clear ValueError, and every CLI
that reads an export turns it into one ``error:`` line with exit status 2."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest
import torch
from tiny_export import CLI_IMPL, tiny_arch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from cramming.export.folder import CONFIG, TOKENIZER, load_model, load_tokenizer, read_config, save_export
from cramming.models import BertForMLM

WORDS = "the a film was good bad great awful plot actors music long short funny dull".split()


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A tiny MLM export with a word-level tokenizer (no shared data needed)."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator([" ".join(WORDS)] * 3, trainers.WordLevelTrainer(special_tokens=specials))
    torch.manual_seed(0)
    model = BertForMLM(tiny_arch(), tok.get_vocab_size())
    return save_export(model, tok, tmp_path_factory.mktemp("export") / "model")


def corrupt(export: Path, tmp_path: Path, name: str, content: str) -> Path:
    """A copy of ``export`` with ``name`` replaced by ``content``."""
    copy = tmp_path / "corrupt"
    copy.mkdir()
    for path in export.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / name).write_text(content)
    return copy


def edited_config(export: Path, **changes) -> str:
    config = json.loads((export / CONFIG).read_text())
    config.update(changes)
    return json.dumps({k: v for k, v in config.items() if v is not None})


def test_good_export_round_trips(export):
    config = read_config(export)
    assert config["task"] == "mlm" and isinstance(config["vocab_size"], int)
    assert load_model(export).vocab_size == config["vocab_size"]
    assert load_tokenizer(export).token_to_id("[MASK]") is not None


@pytest.mark.parametrize(
    "content, message",
    [
        ("[]", r"config\.json holds a JSON list, not an object"),
        ("not json", r"config\.json is not valid JSON"),
        ("VOCAB", r"config\.json is missing the key 'vocab_size'"),
        ("ARCH", r"config\.json: arch=\[1, 2\] must be a JSON object"),
        ("LABELS", r"config\.json is missing the key 'num_labels'"),
        ("FLOAT_VOCAB", r"config\.json: vocab_size=12.5 must be a JSON integer"),
    ],
)
def test_corrupt_config_is_a_value_error_naming_file_and_key(export, tmp_path, content, message):
    content = {
        "VOCAB": edited_config(export, vocab_size=None),
        "ARCH": edited_config(export, arch=[1, 2]),
        "LABELS": edited_config(export, task="classification"),
        "FLOAT_VOCAB": edited_config(export, vocab_size=12.5),
    }.get(content, content)
    path = corrupt(export, tmp_path, CONFIG, content)
    for reader in (read_config, load_model, load_tokenizer):
        with pytest.raises(ValueError, match=message) as info:
            reader(path)
        assert str(path) in str(info.value)


def test_garbage_tokenizer_is_a_value_error(export, tmp_path):
    path = corrupt(export, tmp_path, TOKENIZER, '{"model": 42}')
    with pytest.raises(ValueError, match=rf"{TOKENIZER} is not a readable tokenizer: ") as info:
        load_tokenizer(path)
    assert str(path / TOKENIZER) in str(info.value)


def test_export_hf_cli_reports_a_bad_tokenizer_in_one_line(export, tmp_path, capsys):
    from cramming.export.remote import main

    path = corrupt(export, tmp_path, TOKENIZER, "garbage")
    assert main([f"model={path}", f"out={tmp_path / 'hf'}"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("cramming.export: error: ")
        and "is not a readable tokenizer" in err
        and err.count("\n") == 1
    )


CASES = [("glue", "config"), ("glue", "tokenizer"), ("finetune", "config"), ("finetune", "tokenizer")]


@pytest.mark.parametrize("module, broken", [*CASES, ("predict", "config")])
def test_hydra_clis_report_a_corrupt_export_in_one_line(
    export, tmp_path, monkeypatch, capsys, module, broken
):
    import importlib

    if broken == "config":
        path, expected = corrupt(export, tmp_path, CONFIG, "[]"), "holds a JSON list"
    else:
        path, expected = corrupt(export, tmp_path, TOKENIZER, "garbage"), "is not a readable tokenizer"
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood film,pos\nbad film,neg\n")
    args = {
        "glue": [*CLI_IMPL, f"out_dir={tmp_path / 'g'}", "tasks=[rte]"],
        "finetune": [*CLI_IMPL, f"train_file={train}", f"out_dir={tmp_path / 'ft'}"],
        "predict": CLI_IMPL,
    }[module]
    root = logging.getLogger()  # Hydra configures logging in-process; restore it for the other tests
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(sys, "argv", [module, f"model={path}", *args])
    cli = importlib.import_module(f"cramming.{module}")
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # "error: ..." or "cramming.COMMAND: error: ..." (commands.fail names the command)
    error_lines = [line for line in err.splitlines() if re.match(r"(cramming[\w.]*: )?error: ", line)]
    assert len(error_lines) == 1 and expected in error_lines[0]
