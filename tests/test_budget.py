import math

import pytest

from cramming.budget import (
    BudgetClock,
    accumulation_steps,
    batch_size_at,
    lr_factor,
    parse_budget,
)


@pytest.mark.parametrize(
    "text, kind, amount",
    [
        ("24h", "time", 24 * 3600),
        ("90m", "time", 90 * 60),
        ("1.5h", "time", 5400),
        ("45s", "time", 45),
        ("1h30m", "time", 5400),
        ("24", "time", 24 * 3600),
        (24, "time", 24 * 3600),
        (1.5, "time", 5400),
        ("500steps", "steps", 500),
        ("2e9tokens", "tokens", 2e9),
        ("10000tokens", "tokens", 10000),
    ],
)
def test_parse_budget_accepts(text, kind, amount):
    budget = parse_budget(text)
    assert budget.kind == kind
    assert budget.amount == pytest.approx(amount)


@pytest.mark.parametrize("text", ["abc", "-1h", "0h", "", "h", "10x", "1.5steps", "nan", "inf", "-3", "0"])
def test_parse_budget_rejects_with_named_value(text):
    with pytest.raises(ValueError) as err:
        parse_budget(text)
    message = str(err.value)
    assert repr(text) in message or repr(str(text)) in message
    assert "24h" in message and "500steps" in message


@pytest.mark.parametrize(
    "p, expected", [(0.0, 0.25), (0.5, 0.75), (0.75, 1.0), (1.0, 0.0), (0.875, 0.5), (1.3, 0.0)]
)
def test_triangle2(p, expected):
    assert lr_factor("budget-triangle2", p) == pytest.approx(expected)


@pytest.mark.parametrize(
    "p, expected",
    [
        (0.0, 0.0),
        (0.05, 0.5),
        (0.1, 1.0),
        (0.55, 0.5),
        (0.75, 0.5 * (1 + math.cos(math.pi * 0.65 / 0.9))),
        (1.0, 0.0),
    ],
)
def test_cosine(p, expected):
    assert lr_factor("budget-cosine", p, warmup_fraction=0.1) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("p", [0.0, 0.5, 0.75, 1.0])
def test_constant(p):
    assert lr_factor("constant", p) == 1.0


def test_unknown_schedule():
    with pytest.raises(ValueError, match="budget-triangle2"):
        lr_factor("linear", 0.5)


def test_batch_ramp():
    assert batch_size_at(0.0, 128, 8192, 0.6) == 128
    assert batch_size_at(0.3, 128, 8192, 0.6) == 128 + (8192 - 128) // 2
    assert batch_size_at(0.6, 128, 8192, 0.6) == 8192
    assert batch_size_at(0.9, 128, 8192, 0.6) == 8192
    assert accumulation_steps(0.0, 128, 128, 8192, 0.6) == 1
    assert accumulation_steps(1.0, 128, 128, 8192, 0.6) == 64
    # Microbatch size changes only how a step is split, not the batch size.
    assert accumulation_steps(1.0, 64, 128, 8192, 0.6) * 64 == 8192


def test_step_budget_progress_and_resume_state():
    clock = BudgetClock(parse_budget("10steps"))
    clock.start()
    clock.update(steps=5, tokens=100)
    assert clock.progress() == pytest.approx(0.5)
    assert not clock.exhausted()
    state = clock.state_dict()
    resumed = BudgetClock(parse_budget("10steps"))
    resumed.load_state_dict(state)
    resumed.update(steps=10, tokens=200)
    assert resumed.exhausted()


def test_time_budget_counts_time_spent_before_resume():
    clock = BudgetClock(parse_budget("100s"), spent_seconds=50.0)
    clock.start()
    assert 0.5 <= clock.progress() < 0.6


def test_setup_time_is_charged_and_a_rewind_keeps_the_time_spent(monkeypatch):
    """charge(): data preparation counts when start_clock_after_data=false; rewind(): a reload after
    non-finite steps goes back to the checkpoint's counts but must not give back wall-clock time
    (a bug here would let a diverging run train past its budget)."""
    now = [1000.0]
    monkeypatch.setattr("cramming.budget.time.monotonic", lambda: now[0])
    clock = BudgetClock(parse_budget("100s"))
    clock.charge(10.0)
    clock.start()
    now[0] += 20.0
    clock.update(steps=3, tokens=30)
    checkpoint = clock.state_dict()
    assert checkpoint == {"elapsed": 30.0, "steps": 3, "tokens": 30}
    now[0] += 40.0
    clock.update(steps=7, tokens=70)
    clock.rewind(checkpoint)
    assert (clock.steps, clock.tokens) == (3, 30)
    assert clock.elapsed() == 70.0 and clock.progress() == pytest.approx(0.7)
    now[0] += 5.0
    assert clock.elapsed() == 75.0  # still running
    resumed = BudgetClock(parse_budget("100s"))  # a resume, by contrast, continues from the checkpoint's time
    resumed.load_state_dict(checkpoint)
    resumed.start()
    assert resumed.elapsed() == 30.0


def test_model_vocab_rounds_the_tokenizer_size_up_to_64():
    from cramming.train import model_vocab_size

    assert model_vocab_size(19545) == 19584
    assert model_vocab_size(32768) == 32768
    assert model_vocab_size(30522) == 30528
