"""End to end on CPU: a tiny random-init export, `python -m cramming.glue` on SST-2 + STS-B, the leaderboard."""

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch
from _glue_fixtures import make_tiny_export

from cramming.conf import read_yaml
from cramming.export.folder import load_model
from cramming.finetune.pretrained import build_finetune_model, load_pretrained
from cramming.glue import resolve_settings, run_glue, run_glue_from_pretraining

pytestmark = pytest.mark.usefixtures("restore_runtime_globals")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_corpus):
    """outputs/RUN with a tiny export in RUN/model, as pretraining leaves it."""
    outputs = tmp_path_factory.mktemp("outputs")
    make_tiny_export(outputs / "tiny-run" / "model", tiny_corpus["train"])
    (outputs / "tiny-run" / "summary.json").write_text(
        json.dumps(
            {
                "arch": "tiny",
                "budget": "0s",
                "hardware": "cpu",
                "tokens_seen": 0,
                "final_mlm_loss": 7.5,
                "finished": True,
            }
        )
    )
    return outputs / "tiny-run"


def test_classifier_encoder_is_the_export_encoder(run_dir):
    """The tied word embedding is stored once (as decoder.weight): a loader slicing only the stored
    encoder.* names would miss it; the strict load would then fail, or a copy would differ."""
    mlm = load_model(run_dir / "model")
    clf = build_finetune_model(load_pretrained(run_dir / "model"), 2)
    torch.testing.assert_close(clf.encoder.embeddings.word.weight, mlm.encoder.embeddings.word.weight)
    torch.testing.assert_close(clf.encoder.blocks[1].ffn.out.weight, mlm.encoder.blocks[1].ffn.out.weight)


def test_bad_inputs_fail_before_any_work(run_dir, glue_dir, tmp_path):
    with pytest.raises(ValueError, match="is not an exported cramming model"):
        run_glue(run_dir, {"glue_dir": str(glue_dir)})  # the run folder, not its model/ folder
    with pytest.raises(ValueError, match="model is required"):
        run_glue(None, {})
    with pytest.raises(ValueError, match="holds none of the requested tasks"):
        run_glue(run_dir / "model", {"glue_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="unknown GLUE task 'mnli-m'"):
        run_glue(run_dir / "model", {"glue_dir": str(glue_dir), "tasks": ["mnli-m"]})
    with pytest.raises(ValueError, match="max_length=256 exceeds the model's 128 positions"):
        run_glue(run_dir / "model", {"glue_dir": str(glue_dir), "max_length": 256})
    assert not (run_dir / "glue").exists()
    # no glue_dir: the hub dataset, unreachable here (conftest sets HF offline) -> skipped, then a clear error
    with pytest.raises(ValueError, match="no GLUE task could be run from the hub dataset nyu-mll/glue"):
        run_glue(run_dir / "model", {"tasks": ["rte", "cola"]}, out_dir=tmp_path / "hub")
    assert "RTE skipped" in (tmp_path / "hub" / "log.txt").read_text()


def test_pretraining_eval_step_accepts_eval_config(run_dir, tmp_path, caplog):
    eval_cfg = read_yaml("eval", "glue.yaml")
    assert resolve_settings(eval_cfg)["tasks"] == [
        "cola",
        "sst2",
        "mrpc",
        "stsb",
        "qqp",
        "mnli",
        "qnli",
        "rte",
    ]
    eval_cfg["glue_dir"] = str(tmp_path)  # no task there: the failure is logged, pretraining is not undone
    with caplog.at_level("ERROR", logger="cramming"):
        assert (
            run_glue_from_pretraining(
                run_dir / "model", eval_cfg, {"device": "cpu", "threads": 1, "kernels": "torch"}
            )
            is None
        )
    assert "retry with: python -m cramming.glue model=" in caplog.text


def test_several_seeds_report_every_seed_and_the_median(run_dir, glue_dir, tmp_path):
    settings = {
        "glue_dir": str(glue_dir), "tasks": ["rte"], "seeds": 3, "seed": 5, "epochs": 1, "lr": 1e-4,
        "max_train_examples": 48, "max_eval_examples": 40, "max_length": 64, "submission": False,
        "impl": {"threads": 1, "kernels": "torch"},
    }  # fmt: skip
    results = run_glue(run_dir / "model", settings, out_dir=tmp_path / "glue")
    rte = results["tasks"]["rte"]
    assert [s["seed"] for s in rte["seeds"]] == [5, 6, 7]
    accuracies = sorted(s["scores"]["accuracy"] for s in rte["seeds"])
    assert rte["median"]["accuracy"] == pytest.approx(accuracies[1])
    assert rte["median_seed"] in (5, 6, 7) and "submission" not in rte
    assert results["headline"] == {"RTE": rte["median"]["accuracy"]}
    saved = json.loads((tmp_path / "glue" / "results.json").read_text())
    assert saved["settings"]["seeds"] == 3 and saved["tasks"]["rte"]["examples"]["train"] == 48
    assert (tmp_path / "glue" / "confusion" / "rte.png").is_file()
    assert "RTE seed 7" in (tmp_path / "glue" / "log.txt").read_text()


@pytest.mark.slow
def test_cli_runs_sst2_and_stsb_and_leaderboard_shows_it(run_dir, glue_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # plain PyTorch ops: fast
    glue_dir = shutil.copytree(glue_dir, tmp_path / "glue_data")
    (glue_dir / "QNLI" / "train.tsv").unlink()  # a task with a missing file is skipped, not fatal
    cmd = [
        sys.executable, "-m", "cramming.glue", f"model={run_dir / 'model'}", f"glue_dir={glue_dir}",
        "tasks=[sst2,stsb,qnli]", "max_train_examples=160", "max_eval_examples=120", "max_test_examples=50",
        "epochs=1", "batch_size=16", "lr=1e-4", "impl.threads=1", "impl.kernels=torch",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "QNLI skipped: missing QNLI/train.tsv" in log
    assert "average over 2/9 (SST-2, STS-B)" in log

    out = run_dir / "glue"
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {"sst2", "stsb"} and "qnli" in results["skipped"]
    assert (
        results["settings"]["max_train_examples"] == 160 and results["settings"]["max_eval_examples"] == 120
    )
    sst2, stsb = results["tasks"]["sst2"], results["tasks"]["stsb"]
    assert sst2["examples"]["train"] == 160 and sst2["examples"]["dev"] == {"dev": 120}
    assert len(sst2["seeds"]) == 1
    assert set(stsb["median"]) == {"pearson", "spearman"} and "classes" not in stsb
    confusion = sst2["classes"]["dev"]["confusion_matrix"]
    assert sum(map(sum, confusion)) == 120
    # The accuracy is the share of the 120 scored dev predictions on the diagonal, in percent: catches
    # a fraction reported as percent, a score over other examples than the ones predicted, or another seed's.
    assert sst2["median"]["accuracy"] == pytest.approx(100 * (confusion[0][0] + confusion[1][1]) / 120)
    assert set(sst2["classes"]["dev"]["per_class"]) == {"negative", "positive"}
    assert results["average"]["count"] == 2 and results["average"]["of"] == 9
    assert results["average"]["value"] == pytest.approx(
        (sst2["median"]["accuracy"] + stsb["median"]["pearson"]) / 2
    )
    assert (out / "confusion" / "sst2.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "confusion" / "stsb.png").exists()

    sst2_tsv = (out / "submission" / "SST-2.tsv").read_text().splitlines()
    assert sst2_tsv[0] == "index\tprediction" and len(sst2_tsv) == 51
    assert {line.split("\t")[1] for line in sst2_tsv[1:]} <= {"0", "1"}
    assert [line.split("\t")[0] for line in sst2_tsv[1:4]] == ["0", "1", "2"]
    stsb_values = [
        float(line.split("\t")[1]) for line in (out / "submission" / "STS-B.tsv").read_text().splitlines()[1:]
    ]
    assert len(stsb_values) == 50 and all(0.0 <= v <= 5.0 for v in stsb_values)
    assert sorted(zipfile.ZipFile(out / "submission.zip").namelist()) == ["SST-2.tsv", "STS-B.tsv"]
    assert "AX" in results["submission"]["skipped"]

    outputs = run_dir.parent
    lb = subprocess.run(
        [sys.executable, "-m", "cramming.leaderboard", "--outputs", str(outputs)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert lb.returncode == 0, lb.stderr
    rows = list(csv.DictReader(open(outputs / "leaderboard" / "leaderboard.csv")))
    measured = [r for r in rows if r["kind"] == "measured"]
    assert [r["run"] for r in measured] == ["tiny-run"]
    assert float(measured[0]["SST-2"]) == pytest.approx(sst2["median"]["accuracy"], abs=1e-3)
    assert measured[0]["coverage"] == "2/9" and measured[0]["arch"] == "tiny"
    assert "tiny-run" in (outputs / "leaderboard" / "leaderboard.md").read_text()
    assert "<svg" in (outputs / "leaderboard" / "leaderboard.html").read_text()


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in rows) + "\n", encoding="utf-8")


def test_mnli_two_dev_sets_and_ax_from_the_mnli_model(run_dir, tmp_path):
    names = ["entailment", "neutral", "contradiction"]
    head = ["index", "promptID", "pairID", "genre", "s1bp", "s2bp", "s1p", "s2p", "sentence1", "sentence2"]

    def rows(n, labelled):
        out = []
        for i in range(n):
            row = [str(i), "0", "0", "fiction", "-", "-", "-", "-", f"the cat {i} sat", f"a dog {i % 3} ran"]
            out.append(row + ([names[i % 3]] if labelled else []))
        return out

    glue = tmp_path / "glue"
    _write(glue / "MNLI" / "train.tsv", [head + ["gold_label"], *rows(48, True)])
    _write(glue / "MNLI" / "dev_matched.tsv", [head + ["gold_label"], *rows(12, True)])
    _write(glue / "MNLI" / "dev_mismatched.tsv", [head + ["gold_label"], *rows(9, True)])
    _write(glue / "MNLI" / "test_matched.tsv", [head, *rows(7, False)])
    _write(glue / "MNLI" / "test_mismatched.tsv", [head, *rows(6, False)])
    _write(
        glue / "diagnostic" / "diagnostic.tsv",
        [["index", "sentence1", "sentence2"], ["0", "a", "b"], ["1", "c", "d"]],
    )
    settings = {
        "glue_dir": str(glue),
        "tasks": ["mnli"],
        "epochs": 1,
        "impl": {"threads": 1, "kernels": "torch"},
    }
    results = run_glue(run_dir / "model", settings, out_dir=tmp_path / "out")
    mnli = results["tasks"]["mnli"]
    assert set(mnli["median"]) == {"accuracy_matched", "accuracy_mismatched"}
    assert set(results["headline"]) == {"MNLI-m", "MNLI-mm"} and results["average"]["count"] == 2
    assert mnli["examples"]["dev"] == {"matched": 12, "mismatched": 9}
    assert sum(map(sum, mnli["classes"]["mismatched"]["confusion_matrix"])) == 9
    out = tmp_path / "out"
    assert (out / "confusion" / "mnli-m.png").is_file() and (out / "confusion" / "mnli-mm.png").is_file()
    assert sorted(zipfile.ZipFile(out / "submission.zip").namelist()) == [
        "AX.tsv",
        "MNLI-m.tsv",
        "MNLI-mm.tsv",
    ]
    ax = (out / "submission" / "AX.tsv").read_text().splitlines()
    assert ax[0] == "index\tprediction" and len(ax) == 3 and {r.split("\t")[1] for r in ax[1:]} <= set(names)
    assert results["submission"]["skipped"] == {}


def test_rerunning_some_tasks_merges_into_the_earlier_results(run_dir, glue_dir, tmp_path, caplog):
    """A rerun of one task keeps the other tasks' results and TSVs; other settings start afresh;
    a run that fails before scoring anything leaves the earlier results untouched."""
    out = tmp_path / "glue"
    settings = {
        "glue_dir": str(glue_dir), "epochs": 1, "lr": 1e-4, "max_train_examples": 16, "max_eval_examples": 16,
        "max_test_examples": 8, "max_length": 32, "impl": {"threads": 1, "kernels": "torch"}, "log_every": 0,
    }  # fmt: skip
    first = run_glue(run_dir / "model", {**settings, "tasks": ["sst2", "rte"]}, out_dir=out)
    assert set(first["tasks"]) == {"sst2", "rte"} and first["average"]["count"] == 2
    sst2_tsv = (out / "submission" / "SST-2.tsv").read_text()

    broken = tmp_path / "broken"
    shutil.copytree(run_dir / "model", broken)
    (broken / "tokenizer.json").write_text("garbage")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "log.txt"}
    with pytest.raises(ValueError, match="not a readable tokenizer"):
        run_glue(broken, {**settings, "tasks": ["rte"]}, out_dir=out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "log.txt"} == before

    with caplog.at_level("INFO", logger="cramming"):
        merged = run_glue(
            run_dir / "model",
            {**settings, "tasks": ["rte"], "impl": {"threads": 2, "kernels": "torch"}},
            out_dir=out,
        )
    assert "keeping the earlier results of ['sst2']" in caplog.text
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["tasks"]) == {"sst2", "rte"} and saved["merged"] == ["sst2"]
    assert saved["tasks"]["sst2"] == json.loads(json.dumps(first["tasks"]["sst2"], default=float))
    assert saved["average"]["count"] == 2 and saved["average"]["value"] == pytest.approx(
        (merged["headline"]["SST-2"] + merged["headline"]["RTE"]) / 2
    )
    assert (out / "submission" / "SST-2.tsv").read_text() == sst2_tsv
    assert sorted(zipfile.ZipFile(out / "submission.zip").namelist()) == ["RTE.tsv", "SST-2.tsv"]

    caplog.clear()
    with caplog.at_level("INFO", logger="cramming"):
        fresh = run_glue(run_dir / "model", {**settings, "tasks": ["rte"], "seed": 3}, out_dir=out)
    assert "starting a fresh" in caplog.text and "seed=0 -> 3" in caplog.text
    assert set(fresh["tasks"]) == {"rte"} and fresh["average"]["count"] == 1
    assert set(json.loads((out / "results.json").read_text())["tasks"]) == {"rte"}
    assert not (out / "submission" / "SST-2.tsv").exists()  # from the other settings: removed at the end
    assert zipfile.ZipFile(out / "submission.zip").namelist() == ["RTE.tsv"]
