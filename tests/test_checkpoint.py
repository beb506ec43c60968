"""Checkpoint files: checksummed, atomic, pruned; damaged or mismatched ones are refused with a fallback."""

import json
import logging
import os

import pytest
import torch

from cramming.conf import read_yaml
from cramming.config import ConfigError, check_group
from cramming.train.checkpoint import (
    CheckpointError,
    all_finite,
    identity,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    model_state,
    save_checkpoint,
    sidecar,
)

ARCH = {"name": "tiny", "hidden_size": 8}
IDENT = identity(ARCH, 100, '{"tokenizer": 1}')


def write(run_dir, step, keep=5, ident=IDENT):
    state = {"step": step, "model": {"w": torch.full((64,), float(step))}}
    return save_checkpoint(run_dir, state, keep=keep, meta={**ident, "config": {"seed": 1}})


def test_sidecar_holds_checksum_and_config(tmp_path):
    path = write(tmp_path, 3)
    info = json.loads(sidecar(path).read_text())
    assert info["bytes"] == path.stat().st_size and len(info["sha256"]) == 64
    assert info["step"] == 3 and info["config"] == {"seed": 1} and info["arch"] == ARCH
    assert load_checkpoint(path, IDENT)["model"]["w"][0] == 3
    assert not list(path.parent.glob(".*.tmp"))


def test_keeps_the_newest_and_removes_stale_temporaries(tmp_path):
    write(tmp_path, 1)
    (tmp_path / "checkpoints" / ".step_00000009.pt.abc.tmp").write_bytes(b"half")  # a killed writer
    for step in (2, 3, 10):
        write(tmp_path, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003.pt", "step_00000010.pt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_00000003.json",
        "step_00000003.pt",
        "step_00000010.json",
        "step_00000010.pt",
    ]


def test_damaged_checkpoints_are_refused_and_resume_falls_back(tmp_path, caplog):
    paths = [write(tmp_path, step) for step in (1, 2, 3, 4)]
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) // 2])  # truncated
    flipped = bytearray(paths[2].read_bytes())
    flipped[len(flipped) // 2] ^= 0x10  # one bit flipped, same size
    paths[2].write_bytes(bytes(flipped))
    sidecar(paths[1]).unlink()  # killed between payload and sidecar
    for path, fragment in [
        (paths[3], "truncated"),
        (paths[2], "sha256"),
        (paths[1], "no step_00000002.json"),
    ]:
        with pytest.raises(CheckpointError, match=fragment) as err:
            load_checkpoint(path, IDENT)
        assert str(path) in str(err.value)
    with caplog.at_level(logging.WARNING, logger="cramming"):
        path, state = load_latest(tmp_path, IDENT)
    assert path == paths[0] and state["step"] == 1
    assert "falling back" in caplog.text and "step_00000004.pt" in caplog.text
    assert list_checkpoints(tmp_path) == [paths[0]]  # the refused ones are set aside, not deleted
    assert (tmp_path / "checkpoints" / "step_00000004.pt.refused").exists()


def test_other_arch_or_tokenizer_is_refused_and_all_bad_is_an_error(tmp_path):
    write(tmp_path, 1)
    write(tmp_path, 2)
    other_arch = identity({"name": "tiny", "hidden_size": 16}, 100, '{"tokenizer": 1}')
    other_tok = identity(ARCH, 100, '{"tokenizer": 2}')
    for expect, word in [(other_arch, "architecture"), (other_tok, "tokenizer")]:
        with pytest.raises(CheckpointError, match=word) as err:
            load_latest(tmp_path, expect)
        assert "none of the 2 checkpoints" in str(err.value)
        assert "step_00000001.pt" in str(err.value) and "step_00000002.pt" in str(err.value)


def test_no_checkpoints_is_none(tmp_path):
    assert load_latest(tmp_path, IDENT) is None


def test_model_state_has_no_wrapper_prefixes_and_nan_is_detected():
    model = torch.nn.Linear(3, 2)
    compiled = torch.compile(model)
    assert set(model_state(compiled)) == {"weight", "bias"}
    assert all_finite(model.state_dict())
    with torch.no_grad():
        model.bias[0] = float("nan")
    assert not all_finite(model.state_dict())


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("on_nonfinite", "ignore", "'restore', 'stop'"),
        ("nonfinite_lr_factor", 2.0, "(0, 1]"),
        ("keep_checkpoints", 0, ">= 1"),
        ("checkpoint_every_steps", 1.5, "whole number"),
        ("checkpoint_minutes", -1, ">= 0"),
    ],
)
def test_bad_resilience_settings_are_named(key, value, fragment):
    """A bad checkpoint/non-finite setting is refused before the run, naming the key and the accepted range."""
    recipe = read_yaml("train", "bert-o4.yaml")
    check_group("train", recipe)  # the shipped recipe passes
    with pytest.raises(ConfigError, match=key) as err:
        check_group("train", {**recipe, key: value})
    assert fragment in str(err.value)


class RunsCode:
    """Unpickling this creates ``marker``: proof that loading a checkpoint ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_checkpoint_with_a_pickled_object_is_refused_and_runs_nothing(tmp_path):
    """Catches torch.load(weights_only=False): a checkpoint from elsewhere could run code on resume."""
    marker = tmp_path / "code-ran"
    state = {"step": 1, "model": {"w": torch.zeros(2)}, "extra": RunsCode(marker)}
    path = save_checkpoint(tmp_path, state, meta=IDENT)  # a valid sidecar: size and sha256 match
    with pytest.raises(CheckpointError, match="plain Python values") as err:
        load_checkpoint(path, IDENT)
    assert str(path) in str(err.value) and "mkdir" in str(err.value)
    assert not marker.exists()


def test_trim_metrics_drops_a_line_cut_by_a_kill(tmp_path):
    from cramming.train.checkpoint import trim_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"kind": "train", "step": 1}\n{"kind": "train", "step": 5}\n\n{"kind": "train", "step": 9, "lo'
    )
    assert trim_metrics(path, step=5) == 2  # the cut record and the empty line
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 5]
