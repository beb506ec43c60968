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


EVAL = ["--eval-every-tokens", "512", "--heldout-chars", "20000"]


def data_args(tiny_corpus):
    return [f"data.files=[{tiny_corpus['train']}]", f"data.validation_files=[{tiny_corpus['valid']}]"]


@pytest.mark.slow
def test_smoke_two_variants_and_a_failing_one(tmp_path, tiny_corpus, glue_dir):
    """Catches: variant overrides not reaching the run, a failed variant aborting the others, GLUE-lite not
    scored, no held-out curve or time to target, machine paths in the results, missing result files;
    --reuse keyed on the command line instead of the resolved config."""
    proc = run_bench(
        tmp_path, "--glue-dir", str(glue_dir), *data_args(tiny_corpus), *EVAL,
        "variants.base=", "variants.const=train.schedule=constant",
        "variants.wd=glue.weight_decay=0.05",  # fine-tuning only: reuses base's pretrained run
        "variants.broken=train.stop_after_steps=1",  # ends like a crash: no finished model
    )  # fmt: skip
    report = json.loads((tmp_path / "res" / "quality_t.json").read_text())
    rows = report["variants"]
    assert rows["base"]["ok"] == 1 and rows["const"]["ok"] == 1
    assert rows["broken"]["ok"] == 0 and "not finished" in rows["broken"]["failed"][0]
    for name, schedule in (("base", "wsd"), ("const", "constant")):  # base: the default schedule
        run = next(r for r in report["runs"] if r["variant"] == name)
        config = yaml.safe_load((tmp_path / "runs" / f"t_{name}_s0" / "config.yaml").read_text())
        assert config["train"]["schedule"] == schedule  # the variant's override reached the run
        assert config["train"]["heldout"]["every_tokens"] == 512  # the loop scores the bench's text
        assert run["steps"] == 3 and run["tokens_seen"] == 3 * 4 * 128
        held = run["heldout"]
        assert held["mask_rate"] == 0.15 and held["chars"] == 20_000 and held["masked_tokens"] > 100
        assert 0 < held["bits_per_char"] < held["nats_per_masked_token"]
        assert [p[1] for p in run["curve"]["heldout"]] == [512, 1024, 1536]  # every 512 tokens, and the end
        assert run["curve"]["heldout"][-1][3] == pytest.approx(held["bits_per_char"], rel=1e-4)  # same text
        assert set(run["glue"]) == {"SST-2", "RTE"}
        assert run["glue_average"] == pytest.approx((run["glue"]["SST-2"] + run["glue"]["RTE"]) / 2)
    # the two schedules give different learning rates, so different scores: each run really trained itself
    scores = {r["variant"]: r["heldout"]["nats_per_masked_token"] for r in report["runs"] if r["ok"]}
    assert scores["base"] != scores["const"]
    base = next(r for r in report["runs"] if r["variant"] == "base")
    assert report["target"]["value"] == pytest.approx(
        base["heldout"]["bits_per_char"]
    )  # the baseline's final
    assert base["time_to_target"]["tokens"] == pytest.approx(1536)  # reached at its own last evaluation
    assert report["comparability"]["groups"] == [["base", "const", "wd"]]
    assert report["comparability"]["pairs"]["base vs const"] == "nats and bpc"
    wd = next(r for r in report["runs"] if r["variant"] == "wd")
    assert wd["run"] == base["run"] == "t_base_s0"
    settings = json.loads((tmp_path / "runs" / "t_base_s0" / "glue_lite_wd" / "results.json").read_text())
    assert settings["settings"]["weight_decay"] == 0.05  # the glue.* override reached fine-tuning
    assert settings["threads"] == 1  # the shared impl.threads=1 reached fine-tuning too
    assert len(list((tmp_path / "runs").glob("*.pretrain.log"))) == 3  # base, const, broken
    md = (tmp_path / "res" / "quality_t.md").read_text()
    assert "| base |" in md and "| const |" in md and "FAILED" in md and "masked at 15%" in md
    for text in (md, (tmp_path / "res" / "quality_t.json").read_text()):
        assert str(tmp_path) not in text and "/tiny_corpus" not in text  # no machine paths
    assert (tmp_path / "res" / "quality_t.png").stat().st_size > 10_000
    assert "time to target" in proc.stdout and "wrote" in proc.stdout
    # --reuse: a command line that differs but resolves to the same config (grad_clip is 0.5 already)
    # trains and fine-tunes nothing and reports the same figures (across code: other work edits the tree)
    again = run_bench(
        tmp_path, "--reuse", "--reuse-across-code", "--glue-dir", str(glue_dir), *data_args(tiny_corpus), *EVAL,
        "train.grad_clip=0.5", "variants.base=", "variants.wd=glue.weight_decay=0.05",
    )  # fmt: skip
    # base is reused from disk once (wd shares it in the same invocation); both fine-tunings from disk
    assert again.stdout.count("reusing the finished run") == 1 and again.stdout.count("glue: reusing") == 2
    second = json.loads((tmp_path / "res" / "quality_t.json").read_text())
    assert second["variants"]["wd"]["glue"] == rows["wd"]["glue"]
    assert second["variants"]["base"]["bits_per_char"] == rows["base"]["bits_per_char"]


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


def load_bench():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import _quality_report
    import bench_quality

    return bench_quality, _quality_report


def test_reuse_is_keyed_on_the_resolved_config(tmp_path, tiny_corpus, monkeypatch):
    """Catches --reuse keyed on the command line: a changed default in conf/ must retrain (the README's
    RoBERTa row mixed runs made under two cls_per_sequence defaults), while a spelled-out default must not."""
    import shutil

    import cramming.conf
    import cramming.config

    bq, _ = load_bench()
    argv = ["--no-glue", "--runs-dir", str(tmp_path / "runs"), *data_args(tiny_corpus),
            "variants.base=", "variants.spelled=train.grad_clip=0.5"]  # fmt: skip

    def keys():
        args, shared, variants = bq.parse_args(argv)
        plans = bq.plan_runs(args, shared, variants)
        return {v: bq.config_key(plans[(tuple(o), 0)]["config"]) for v, o in variants.items()}

    before = keys()
    assert before["base"] == before["spelled"]  # different command lines, one resolved config
    conf = tmp_path / "conf"
    shutil.copytree(cramming.conf.CONF_DIR, conf)
    path = conf / "train" / "bert-o4.yaml"
    path.write_text(path.read_text().replace("grad_clip: 0.5", "grad_clip: 0.25"))
    monkeypatch.setattr(cramming.conf, "CONF_DIR", conf)
    monkeypatch.setattr(cramming.config, "CONF_DIR", conf)  # what the benchmark composes from
    after = keys()
    assert after["base"] != before["base"]  # a changed default: retrain
    assert after["spelled"] == before["spelled"]  # its value is on the command line: unchanged
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "summary.json").write_text('{"finished": true}')
    code = {"sources": "abc"}
    (run / "bench_quality.json").write_text(json.dumps({"config_key": before["base"], "code": code}))
    assert bq.reusable(run, before["base"], code) and not bq.reusable(run, after["base"], code)
    assert not bq.reusable(run, before["base"], {"sources": "abd"})  # a code change: retrain
    assert bq.reusable(run, before["base"], None)  # --reuse-across-code


def test_time_to_target_paths_and_panels(tmp_path):
    """Catches: time to target taken at the first evaluation below target instead of interpolated,
    machine paths left in result text, and an empty GLUE panel drawn when there is no GLUE."""
    _, rep = load_bench()
    points = [[10.0, 100, 5.0, 3.0], [20.0, 200, 4.0, 2.0], [30.0, 300, 3.5, 1.5]]
    assert rep.crossing(points, 2.5, 3) == {"seconds": 15.0, "tokens": 150.0}
    assert rep.crossing(points, 1.0, 3) is None
    assert (
        rep.clean("data.files=[/home/me/corpus/train.txt] out=/tmp/x/res") == "data.files=[train.txt] out=res"
    )
    assert rep.clean("data.files=[corpus/train.txt]") == "data.files=[corpus/train.txt]"  # relative: kept
    record = {"variant": "a", "seed": 0, "ok": True, "curve": {"heldout": points}, "heldout": {}}
    report = {"name": "t", "shared": [], "target": {"value": 2.0, "metric": "bpc"},
              "variants": {"a": {"glue_average": None}}}  # fmt: skip
    assert rep.plot(report, [record], tmp_path / "p.png") == 2  # wall clock and tokens, no GLUE panel
    report["variants"]["a"]["glue_average"] = {"mean": 70.0, "min": 69.0, "max": 71.0}
    assert rep.plot(report, [record], tmp_path / "p.png") == 3
