"""train.microbatch_size=auto (cramming.train.microbatch) with simulated memory limits, on CPU."""

import json
import logging

import pytest
import torch
from hydra import compose, initialize_config_dir

import cramming.train.loop
import cramming.train.microbatch as microbatch
from cramming.config import CONF_PATH
from cramming.pretrain import pretrain_main
from cramming.train.microbatch import candidates, choose_microbatch

pytestmark = pytest.mark.usefixtures("restore_runtime_globals")
GIB = 2**30


def fake_gpu(limit_gib: float, per_sequence_gib: float, base_gib: float = 2.0):
    """A probe for a GPU of ``limit_gib``: peak = base + per-sequence cost; above the limit, OOM."""
    tried = []

    def probe(size: int) -> float:
        tried.append(size)
        peak = (base_gib + per_sequence_gib * size) * GIB
        if peak > limit_gib * GIB:
            raise torch.OutOfMemoryError(f"simulated: {size} sequences need {peak / GIB:.1f} GiB")
        return peak

    return probe, tried


def test_gpu_picks_the_largest_size_that_fits_with_a_margin():
    """Bug it guards: a size that fits with no room left (an OOM minutes later), or stopping at the
    first OOM instead of retrying smaller, or a size that does not divide the batch."""
    probe, tried = fake_gpu(limit_gib=80, per_sequence_gib=0.25)  # 512 -> 130 GiB OOM; 256 -> 66 GiB fits
    choice = choose_microbatch("auto", 8192, "cuda", probe, total_memory=80 * GIB)
    assert choice.size == 256 and choice.auto
    assert tried[:3] == [2048, 1024, 512] and 1536 not in tried  # 1536 does not divide 8192
    assert [s for s, outcome in choice.tried if outcome == "out of memory"] == [2048, 1024, 512]
    assert "10% of GPU memory free" in choice.reason and "256: fits" in choice.reason
    # 288 of 320 GiB would fit but leave under 10% free: the next size down is taken
    probe, _ = fake_gpu(limit_gib=80, per_sequence_gib=0.3)  # 256 -> 78.8 GiB > 72 GiB
    choice = choose_microbatch("auto", 8192, "cuda", probe, total_memory=80 * GIB)
    assert choice.size == 128 and "leaves under 10% free" in choice.tried[3][1]


def test_gpu_nothing_fits_and_fixed_sizes():
    probe, _ = fake_gpu(limit_gib=1, per_sequence_gib=1)
    with pytest.raises(ValueError, match="microbatch_size=auto: not even a microbatch of 1"):
        choose_microbatch("auto", 64, "cuda", probe, total_memory=GIB)
    fixed = choose_microbatch(96, 8192, "cuda", probe)
    assert (fixed.size, fixed.auto, fixed.reason) == (96, False, "set by train.microbatch_size")
    assert candidates(microbatch.GPU_CANDIDATES, 96) == [96, 48, 32, 24, 16, 12, 8, 4, 2, 1]
    assert candidates(microbatch.GPU_CANDIDATES, 7) == [1]


def test_cpu_measures_or_keeps_the_recipe_value_and_says_why():
    seconds = {8: 0.08, 16: 0.12, 32: 0.30, 64: 0.70}  # 16 is the fastest per sequence
    choice = choose_microbatch("auto", 64, "cpu", lambda s: seconds[s], time_budget_s=3600)
    assert choice.size == 16 and "best measured throughput" in choice.reason
    assert [s for s, _ in choice.tried] == [8, 16, 32, 64]
    slow = {8: 20.0, 16: 40.0, 32: 80.0, 64: 160.0}  # measuring would take ~45 min of a 1 h budget
    choice = choose_microbatch("auto", 64, "cpu", lambda s: slow[s], time_budget_s=3600)
    assert choice.size == microbatch.CPU_DEFAULT and "measuring costs more than it can save" in choice.reason


def tiny_overrides(tmp, tiny_corpus, name, budget="16steps"):
    return [
        f"budget={budget}", f"name={name}", f"base_dir={tmp / 'outputs'}", "arch=tiny", "train=cpu",
        "train.microbatch_size=auto", "train.batch_size_start=32", "train.batch_size=64",
        "train.checkpoint_every_steps=5", "train.log_every=4", "impl.threads=1", "impl.kernels=torch",
        "data=local", f"data.files=[{tiny_corpus['train']}]", "data.vocab_size=2048",
        f"data.cache_dir={tmp / 'cache'}",
    ]  # fmt: skip


def run(overrides):
    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        cfg = compose("pretrain", overrides=overrides)
    return pretrain_main(cfg)


def test_auto_under_a_fake_memory_limit_then_one_oom_halves_it(tmp_path, tiny_corpus, monkeypatch, caplog):
    """A real tiny run: microbatches above 16 sequences 'do not fit' (simulated), so auto picks 16 of the
    candidates 16, 32, 64 and the log says why; at step 8 a simulated out-of-memory (fragmentation) halves it to 8 and the run goes on
    from the step-5 checkpoint to the end of its budget, with the batch ramp kept by accumulation."""
    monkeypatch.setattr(microbatch, "FAKE_LIMIT", 16)
    monkeypatch.setattr(microbatch, "CPU_CANDIDATES", (16, 32, 64))  # 16 alone fits: no timing decides
    real_step, fired = cramming.train.loop.optimizer_step, []

    def flaky_step(model, optimizer, next_microbatch, accum, *args, **kwargs):
        if not fired and flaky_step.calls == 7:  # the 8th optimizer step, once
            fired.append(accum)
            raise torch.OutOfMemoryError("simulated fragmentation")
        flaky_step.calls += 1
        return real_step(model, optimizer, next_microbatch, accum, *args, **kwargs)

    flaky_step.calls = 0
    monkeypatch.setattr(cramming.train.loop, "optimizer_step", flaky_step)
    with caplog.at_level(logging.INFO, logger="cramming"):
        summary = run(tiny_overrides(tmp_path, tiny_corpus, "auto"))
    assert summary["finished"] and summary["steps"] == 16 and fired
    chosen = summary["microbatch"]
    assert chosen["auto"] and chosen["halved_after_oom"] and chosen["size"] == 8
    assert [s for s, outcome in chosen["tried"] if outcome == "out of memory"] == [32]
    assert "train.microbatch_size=auto -> 16: CPU: best measured throughput" in caplog.text
    assert "out of memory at step 8 with microbatch 16" in caplog.text and "halving it to 8" in caplog.text
    records = [
        json.loads(line)
        for line in (tmp_path / "outputs" / "auto" / "metrics.jsonl").read_text().splitlines()
    ]
    assert records[-2]["batch_size"] == 64  # 8 microbatches of 8 at the end of the ramp
    saved = json.loads((tmp_path / "outputs" / "auto" / "summary.json").read_text())
    assert saved["microbatch"] == chosen


def test_a_fixed_microbatch_still_dies_on_oom(tmp_path, tiny_corpus, monkeypatch):
    """Only auto runs retreat: a size the user set is theirs, and an OOM stops the run as before."""

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(cramming.train.loop, "optimizer_step", oom)
    overrides = [o for o in tiny_overrides(tmp_path, tiny_corpus, "fixed") if "microbatch" not in o]
    with pytest.raises(torch.OutOfMemoryError):
        run([*overrides, "train.microbatch_size=16"])
