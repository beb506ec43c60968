"""Figures: no machine paths in titles, no empty panels (benchmarks/_common.plot and cramming.plots)."""

import importlib.util
import json
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def common():
    spec = importlib.util.spec_from_file_location("bench_common", REPO_ROOT / "benchmarks" / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def saved_figures(monkeypatch):
    """Every figure saved during the test, captured as it is written."""
    figures, real = [], Figure.savefig

    def capture(fig, *args, **kwargs):
        figures.append(fig)
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    return figures


def panels(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def test_titles_lose_machine_paths(common):
    """Catches: a title holding the command line with absolute paths (quality_recipe.png had one)."""
    title = "bench --out /work/main/benchmarks/results/ --data /home/me/corpus.txt ~/x/y.txt H=12 1/2"
    assert common.plot_title(title) == "bench --out results --data corpus.txt y.txt H=12 1/2"


def test_benchmark_plot_draws_no_empty_panel(common, tmp_path, saved_figures):
    """Catches: a PNG written for a setting without a single timing (an empty panel), and a path title."""
    rows = [{"T": 128, "tflops": None, "provider": "triton"}, {"T": 256, "tflops": None, "provider": "sdpa"}]
    assert common.plot(rows, "T", "tflops", "provider", tmp_path / "empty.png", "empty") is None
    assert not (tmp_path / "empty.png").exists() and not saved_figures
    rows[0]["tflops"] = 3.0
    path = common.plot(rows, "T", "tflops", "provider", tmp_path / "one.png", f"run in {tmp_path}")
    assert path.is_file() and len(saved_figures) == 1
    (ax,) = panels(saved_figures[0])
    assert ax.has_data() and "/" not in ax.get_title() and ax.get_title() == f"run in {tmp_path.name}"


def test_run_plot_has_data_in_every_panel_and_a_plain_title(tmp_path, saved_figures):
    """Catches: the run's loss figure titled with its folder's machine path, or a panel without data."""
    from cramming.plots import plot_run

    run = tmp_path / "my-run"
    run.mkdir()
    records = [{"kind": "train", "step": s, "loss": 9 - s, "lr": 1e-3, "batch_size": 64} for s in range(1, 5)]
    records.append({"kind": "valid", "step": 4, "loss": 5.5})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert plot_run(run).is_file()
    axes = panels(saved_figures[0])
    assert all(ax.has_data() for ax in axes) and len(axes) == 3  # loss, lr, batch size (twin axis)
    assert [ax.get_title() for ax in axes if ax.get_title()] == ["my-run"]
