"""train.schedule=wsd: warm-up, stable peak, cool-down over the last decay_fraction of the budget."""

import json
import math
from pathlib import Path

import pytest

from cramming.budget import lr_factor, schedule_factor
from cramming.conf import read_yaml
from cramming.config import ConfigError, check_group

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN = read_yaml("train", "bert-o4.yaml")
WSD = {**TRAIN, "schedule": "wsd", "warmup_fraction": 0.1, "decay_fraction": 0.2}


@pytest.mark.parametrize(
    "p, linear, one_minus_sqrt",
    [
        (0.0, 0.0, 0.0),  # warm-up starts at zero
        (0.05, 0.5, 0.5),  # half-way through the warm-up
        (0.1, 1.0, 1.0),  # the peak
        (0.5, 1.0, 1.0),  # stable
        (0.8, 1.0, 1.0),  # the cool-down starts at 1 - decay_fraction
        (0.85, 0.75, 0.5),  # a quarter into the cool-down: 1 - 1/4 and 1 - sqrt(1/4)
        (0.9, 0.5, 1 - math.sqrt(0.5)),
        (1.0, 0.0, 0.0),
        (1.3, 0.0, 0.0),  # the last step's overshoot past the budget
    ],
)
def test_wsd_shape_at_key_points(p, linear, one_minus_sqrt):
    """Catches a cool-down starting at the wrong fraction, the 1-sqrt shape swapped for sqrt (which
    would stay high and drop at the end), or a warm-up that does not start from zero."""
    assert schedule_factor(WSD, p) == pytest.approx(linear, abs=1e-12)
    assert schedule_factor({**WSD, "decay_shape": "1-sqrt"}, p) == pytest.approx(one_minus_sqrt, abs=1e-12)


def test_wsd_without_warmup_starts_at_the_peak_and_a_full_decay_is_a_straight_line():
    """Catches a division by a zero warm-up and a decay_fraction=1 that is not linear from p=0."""
    assert lr_factor("wsd", 0.0, 0.0, 0.2) == 1.0
    assert [lr_factor("wsd", p, 0.0, 1.0) for p in (0.0, 0.25, 0.5)] == pytest.approx([1.0, 0.75, 0.5])


def test_the_default_schedule_is_wsd_and_the_paper_recipe_keeps_budget_triangle2():
    """Catches the default losing its measured schedule (wsd: warm-up 10%, flat, linear cool-down over the
    last 20%), and the triangle2 path of recipe=crammed-paper breaking: min(0.25 + p, 4 - 4p)."""
    assert TRAIN["schedule"] == "wsd"
    for p, want in ((0.0, 0.0), (0.05, 0.5), (0.1, 1.0), (0.5, 1.0), (0.8, 1.0), (0.9, 0.5), (1.0, 0.0)):
        assert schedule_factor(TRAIN, p) == pytest.approx(want, abs=1e-12), p
    paper = {**TRAIN, "schedule": "budget-triangle2"}
    for p in (0.0, 0.3, 0.75, 0.9, 1.0):
        assert schedule_factor(paper, p) == pytest.approx(max(0.0, min(0.25 + p, 4 - 4 * p)), abs=1e-12)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"decay_fraction": 0.0}, r"train.decay_fraction=0.0 must lie in \(0, 1\]"),
        ({"warmup_fraction": 0.9}, r"train.warmup_fraction=0.9 must lie in \[0, 1 - train.decay_fraction\]"),
        ({"decay_shape": "cosine"}, r"train.decay_shape='cosine' is not one of \['linear', '1-sqrt'\]"),
    ],
)
def test_bad_wsd_settings_are_config_errors(change, message):
    """Catches a warm-up overlapping the cool-down (an LR that jumps) or an unknown shape accepted."""
    with pytest.raises(ConfigError, match=message):
        check_group("train", {**WSD, **change})


def test_the_training_loop_follows_the_wsd_keys(tiny_corpus, tmp_path):
    """Catches the loop calling the schedule without decay_fraction/decay_shape (their defaults would run)."""
    from test_resume import overrides, run_in_process

    extra = [
        "train.schedule=wsd",
        "train.warmup_fraction=0.2",
        "train.decay_fraction=0.5",
        "train.decay_shape=1-sqrt",
        "train.log_every=1",
        f"train.lr={TRAIN['lr']}",  # pinned to the peak the expected values use
    ]
    run_in_process(overrides(tiny_corpus, tmp_path, "wsd", *extra, budget="10steps"))
    lines = (tmp_path / "outputs" / "wsd" / "metrics.jsonl").read_text().splitlines()
    logged = [r["lr"] for r in map(json.loads, lines) if r["kind"] == "train"]
    # step n runs at p = (n - 1) / 10: warm-up to p=0.2, peak to 0.5, then 1 - sqrt((p - 0.5) / 0.5)
    expected = [TRAIN["lr"] * lr_factor("wsd", n / 10, 0.2, 0.5, "1-sqrt") for n in range(10)]
    assert logged == pytest.approx(expected, abs=1e-12)
    assert logged[7] == pytest.approx(TRAIN["lr"] * (1 - math.sqrt(0.4)))
