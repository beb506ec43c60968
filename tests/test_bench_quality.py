"""benchmarks/bench_quality.py: variants trained and scored through the product's own CLI paths."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "bench_quality.py"


def run_bench(tmp_path, *args, check=True):
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--name", "t", "--out", str(tmp_path / "res"),
           "--runs-dir", str(tmp_path / "runs"), *args]  # fmt: skip
    # The product as users run it: conftest's TRITON_INTERPRET=1 would make every kernel crawl
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, check=check, timeout=900, env=env
    )


def data_args(tiny_corpus):
    return [f"data.files=[{tiny_corpus['train']}]", f"data.validation_files=[{tiny_corpus['valid']}]"]


@pytest.mark.slow
def test_smoke_two_variants_and_a_failing_one(tmp_path, tiny_corpus, glue_dir):
    """Catches: variant overrides not reaching the run, a failed variant aborting the others, GLUE-lite not
    scored, missing result files."""
    proc = run_bench(
        tmp_path, "--glue-dir", str(glue_dir), *data_args(tiny_corpus),
        "variants.base=", "variants.const=train.schedule=constant",
        "variants.wd=glue.weight_decay=0.05",  # fine-tuning only: reuses base's pretrained run
        "variants.broken=train.stop_after_steps=1",  # ends like a crash: no finished model
    )  # fmt: skip
    report = json.loads((tmp_path / "res" / "quality_t.json").read_text())
    rows = report["variants"]
    assert rows["base"]["ok"] == 1 and rows["const"]["ok"] == 1
    assert rows["broken"]["ok"] == 0 and "not finished" in rows["broken"]["failed"][0]
    for name, schedule in (("base", "budget-triangle2"), ("const", "constant")):
        run = next(r for r in report["runs"] if r["variant"] == name)
        config = yaml.safe_load((tmp_path / "runs" / f"t_{name}_s0" / "config.yaml").read_text())
        assert config["train"]["schedule"] == schedule  # the variant's override reached the run
        assert run["valid_mlm_loss"] > 0 and run["steps"] == 3
        assert set(run["glue"]) == {"SST-2", "RTE"}
        assert run["glue_average"] == pytest.approx((run["glue"]["SST-2"] + run["glue"]["RTE"]) / 2)
    # the two schedules give different learning rates, so different losses: each run really trained itself
    losses = {r["variant"]: r["final_mlm_loss"] for r in report["runs"] if r["ok"]}
    assert losses["base"] != losses["const"]
    assert "directly comparable" in report["comparability"]
    wd = next(r for r in report["runs"] if r["variant"] == "wd")
    assert wd["run_dir"] == next(r["run_dir"] for r in report["runs"] if r["variant"] == "base")
    settings = json.loads((tmp_path / "runs" / "t_base_s0" / "glue_lite_wd" / "results.json").read_text())
    assert settings["settings"]["weight_decay"] == 0.05  # the glue.* override reached fine-tuning
    assert settings["threads"] == 1  # the shared impl.threads=1 reached fine-tuning too
    assert len(list((tmp_path / "runs").glob("*.pretrain.log"))) == 3  # base, const, broken
    md = (tmp_path / "res" / "quality_t.md").read_text()
    assert "| base |" in md and "| const |" in md and "FAILED" in md
    assert (tmp_path / "res" / "quality_t.png").stat().st_size > 10_000
    assert "wrote" in proc.stdout
    # --reuse: the same command again trains and fine-tunes nothing and reports the same figures
    again = run_bench(
        tmp_path, "--reuse", "--glue-dir", str(glue_dir), *data_args(tiny_corpus),
        "variants.base=", "variants.wd=glue.weight_decay=0.05",
    )  # fmt: skip
    # base is reused from disk once (wd shares it in the same invocation); both fine-tunings from disk
    assert again.stdout.count("reusing the finished run") == 1 and again.stdout.count("glue: reusing") == 2
    second = json.loads((tmp_path / "res" / "quality_t.json").read_text())
    assert second["variants"]["wd"]["glue"] == rows["wd"]["glue"]


def test_bad_variant_is_named_before_training(tmp_path, tiny_corpus):
    """Catches: a typo in one variant discovered only after the others trained for hours."""
    proc = run_bench(
        tmp_path, "--no-glue", *data_args(tiny_corpus),
        "variants.base=", "variants.typo=train.no_such_key=1", check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "typo" in proc.stderr and "no_such_key" in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_variants_file_and_missing_glue_dir(tmp_path, tiny_corpus):
    """Catches: a YAML variants file not read, or GLUE silently skipped when no GLUE folder is given."""
    path = tmp_path / "v.yaml"
    path.write_text("base: []\nbad: 'budget=abc'\n")
    proc = run_bench(tmp_path, "--no-glue", "--variants", str(path), *data_args(tiny_corpus), check=False)
    assert proc.returncode != 0 and "bad" in proc.stderr and "abc" in proc.stderr
    proc = run_bench(tmp_path, "variants.base=", *data_args(tiny_corpus), check=False)
    assert proc.returncode == 2 and "--glue-dir" in proc.stderr
