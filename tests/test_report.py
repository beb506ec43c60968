"""The HTML run report (cramming.report) of a real tiny CPU run: pretraining, then GLUE, then a browser."""

import json
import re
import shutil

import pytest
from _browser import body_data, png_size, render
from hydra import compose, initialize_config_dir

from cramming.config import CONF_PATH
from cramming.files import file_sha256
from cramming.glue import run_glue
from cramming.pretrain import pretrain_main
from cramming.report import main, read_run, run_folder

pytestmark = pytest.mark.usefixtures("restore_runtime_globals")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_corpus, glue_dir):
    """outputs/report-run: 12 steps of arch=tiny on one thread, then GLUE SST-2 + MRPC with two seeds."""
    tmp = tmp_path_factory.mktemp("report")
    overrides = [
        "budget=12steps", "name=report-run", f"base_dir={tmp / 'outputs'}", "arch=tiny", "train=cpu",
        "train.log_every=3", "impl.threads=1", "impl.kernels=torch", "data=local",
        f"data.files=[{tiny_corpus['train']}]", f"data.validation_files=[{tiny_corpus['valid']}]",
        "data.vocab_size=2048", f"data.cache_dir={tmp / 'cache'}",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        cfg = compose("pretrain", overrides=overrides)
    pretrain_main(cfg)
    run = tmp / "outputs" / "report-run"
    first = (run / "report.html").read_text()
    settings = {"glue_dir": str(glue_dir), "tasks": ["sst2", "mrpc"], "seeds": 2, "epochs": 1,
                "max_train_examples": 48, "max_eval_examples": 40, "max_test_examples": 8,
                "impl": {"threads": 1, "kernels": "torch"}}  # fmt: skip
    run_glue(run / "model", settings)
    return run, first


def test_pretraining_writes_a_self_contained_report(tiny_run):
    """Bug it guards: a run ending without report.html, or a page that fetches from the network."""
    run, first = tiny_run
    assert "<h2>Training curves</h2>" in first and "GLUE" not in first  # written before GLUE ran
    page = (run / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page), "the page must not fetch anything"
    assert page.count('<img src="data:image/png;base64,') == 5  # 4 training figures + the seed spread
    summary = json.loads((run / "summary.json").read_text())
    assert summary["environment"]["torch"] and summary["kernels"] == {
        "layer_norm": "torch", "gelu": "torch", "attention": "torch"
    }  # fmt: skip
    for expected in (
        "tiny", f"{summary['parameters']:,}", file_sha256(run / "model" / "tokenizer.json"), "12steps",
        "loss against wall clock", "learning rate and batch size", "tokens/s and MFU", "waiting for data",
        "non-finite steps skipped", "overshoot past the budget", "step_00000012.pt", "held-out MLM loss",
        "layer_norm: torch", "eager", "config.yaml", summary["environment"]["torch"],
    ):  # fmt: skip
        assert expected in page, expected
    if summary["environment"]["git_revision"]:
        assert summary["environment"]["git_revision"] in page


def test_glue_adds_its_table_confusion_matrices_and_seed_spread(tiny_run):
    """Bug it guards: GLUE rewriting results.json but not the run's page, or matrices that lose counts."""
    run, _ = tiny_run
    page = (run / "report.html").read_text()
    results = json.loads((run / "glue" / "results.json").read_text())
    assert "GLUE (glue/results.json)" in page and results["average"]["label"] in page
    assert "each fine-tuning seed" in page
    for task in results["tasks"].values():
        seeds = [s["scores"][task["metrics"][0]] for s in task["seeds"]]
        assert f"{min(seeds):.1f} .. {max(seeds):.1f}" in page or min(seeds) == max(seeds)
        matrix = task["classes"]["dev"]["confusion_matrix"]
        assert sum(map(sum, matrix)) == task["examples"]["dev"]["dev"]
        assert f"{task['title']} dev (median seed)" in page
    data = read_run(run)
    assert set(data["glue"]) == {"glue"} and len(data["train"]) >= 4 and data["valid"]


def test_cli_finds_the_run_folder_from_its_glue_folder(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    (copy / "report.html").unlink()
    assert run_folder(copy / "glue") == copy
    main([str(copy / "glue")])
    assert capsys.readouterr().out.strip() == str(copy / "report.html")
    assert "GLUE (glue/results.json)" in (copy / "report.html").read_text()
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert (
        exit_info.value.code == 2
        and err.startswith("cramming.report: error: ")
        and "is not a run folder" in err
    )


def test_report_renders_in_chromium(tiny_run, tmp_path):
    """Headless Chromium at 1400x1000: no console errors, every figure decoded and drawn with a size."""
    run, _ = tiny_run
    shot = tmp_path / "report.png"
    dom, console = render(run / "report.html", shot)
    assert console == []
    data = body_data(dom)
    assert data.get("plots") == "5" and data.get("plots-broken") == "0", data
    assert png_size(shot) == (1400, 1000)


def test_a_broken_figure_is_reported_by_the_page(tiny_run, tmp_path):
    """The page's own check can fail: a truncated figure is counted as broken (so the test above can fail)."""
    run, _ = tiny_run
    page = (run / "report.html").read_text()
    start = page.index('src="data:image/png;base64,') + len('src="data:image/png;base64,')
    broken = tmp_path / "report.html"
    broken.write_text(page[:start] + "AAAA" + page[page.index('"', start) :])
    dom, _ = render(broken)
    assert body_data(dom).get("plots-broken") == "1"


def test_own_task_fine_tuning_adds_its_section(tiny_run, tmp_path):
    """Bug it guards: cramming.finetune finishing without the run's page showing its scores and matrix."""
    from tiny_export import finetune_cfg, write_csv

    from cramming.finetune import run_finetune

    run, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    rows = [{"text": f"{w} film number {i}", "label": w} for i, w in enumerate(["good", "bad", "dull"] * 12)]
    train, dev = write_csv(tmp_path / "train.csv", rows), write_csv(tmp_path / "dev.csv", rows[:12])
    cfg = finetune_cfg(model=str(copy / "model"), train_file=str(train), validation_file=str(dev), epochs=1)
    cfg["impl"]["threads"] = 1
    run_finetune(cfg)
    page = (copy / "report.html").read_text()
    assert "Own-task fine-tuning (finetuned)" in page and "validation accuracy" in page
    matrix = json.loads((copy / "finetuned" / "validation_confusion.json").read_text())
    assert sum(map(sum, matrix["matrix"])) == 12 and "<b>validation</b>" in page
