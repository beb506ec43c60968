"""Resume: a stopped or SIGKILLed run, resumed, matches an uninterrupted one step for step.

Step budgets make the runs deterministic (the schedules are functions of steps done, and log lines
are written by step), and ``impl.threads=1`` fixes the summation order of CPU kernels.
"""

import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from cramming.config import CONF_PATH
from cramming.pretrain import pretrain_main

STEPS = 12


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("resume")


def overrides(tiny_corpus, workdir, name, *extra, budget=f"{STEPS}steps"):
    return [
        f"budget={budget}",
        f"name={name}",
        f"base_dir={workdir / 'outputs'}",
        "arch=tiny",
        "train=cpu",
        "train.microbatch_size=4",
        "train.batch_size_start=4",
        "train.batch_size=8",  # accumulation ramps from 1 to 2 microbatches
        "train.batch_ramp_fraction=0.5",
        "train.log_every=1",
        "train.checkpoint_minutes=0",
        "data=local",
        f"data.files=[{tiny_corpus['train']}]",
        "data.vocab_size=2048",
        "data.filters.max_tokens_per_char=0.5",
        "data.seq_len=32",
        f"data.cache_dir={workdir / 'cache'}",
        "impl.kernels=torch",
        "impl.threads=1",
        *extra,
    ]


def run_in_process(args):
    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        cfg = compose("pretrain", overrides=args)
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        return pretrain_main(cfg)
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
                handler.close()


def train_curve(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["lr"]) for r in records if r["kind"] == "train"]


def weights(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tiny_corpus, workdir):
    """The reference: batches made in the loop (no prefetch thread)."""
    summary = run_in_process(overrides(tiny_corpus, workdir, "full", "impl.dataloader_workers=0"))
    assert summary["finished"] and summary["steps"] == STEPS
    return workdir / "outputs" / "full"


def assert_same_run(run_dir, reference):
    assert train_curve(run_dir) == train_curve(reference)  # every step once, same losses and LRs
    assert [step for step, _, _ in train_curve(run_dir)] == list(range(1, STEPS + 1))
    mine, theirs = weights(run_dir), weights(reference)
    assert mine.keys() == theirs.keys()
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=0, msg=key)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (
        summary["steps"] == STEPS
        and summary["tokens_seen"] == json.loads((reference / "summary.json").read_text())["tokens_seen"]
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_stopped_then_resumed_matches_uninterrupted(uninterrupted, tiny_corpus, workdir, workers):
    """workers=2: catches prefetched batches lost or used twice across the checkpoint, or masked differently."""
    args = overrides(tiny_corpus, workdir, f"part-{workers}", f"impl.dataloader_workers={workers}")
    stopped = run_in_process([*args, "train.stop_after_steps=6"])
    assert not stopped["finished"] and stopped["steps"] == 6
    run_dir = workdir / "outputs" / f"part-{workers}"
    assert not (run_dir / "model").exists()
    run_in_process([*args, "train.stop_after_steps=6", "resume=true"])  # the same overrides + resume=true
    assert_same_run(run_dir, uninterrupted)
    assert "resumed from" in (run_dir / "log.txt").read_text()
    assert "step_00000006.pt: step 6" in (run_dir / "log.txt").read_text()
    assert not any(t.name == "cramming-batches" for t in threading.enumerate())  # producer stopped


def test_resume_from_a_checkpoint_taken_while_batches_wait(uninterrupted, tiny_corpus, workdir):
    """The step-4 checkpoint is written inside the loop while the producer is batches ahead.

    Catches a checkpoint holding the producer's data position instead of the loop's (batches skipped).
    """
    args = overrides(
        tiny_corpus, workdir, "mid", "impl.dataloader_workers=2", "train.checkpoint_every_steps=4"
    )
    run_in_process([*args, "train.stop_after_steps=6"])
    run_dir = workdir / "outputs" / "mid"
    for path in (run_dir / "checkpoints").glob("step_00000006.*"):  # as if killed before step 6's save
        path.unlink()
    run_in_process([*args, "resume=true"])  # to the end
    assert "step_00000004.pt: step 4" in (run_dir / "log.txt").read_text()
    assert_same_run(run_dir, uninterrupted)


def test_data_wait_is_logged_and_summarised(tiny_corpus, workdir):
    """A loader slower than the tiny model's step, made in the loop: most of the time is data wait.

    Catches a data_wait that is not measured (0), measured against the wrong window, or left out of
    the log line, metrics.jsonl or summary.json.
    """
    args = overrides(
        tiny_corpus,
        workdir,
        "slow-data",
        "impl.dataloader_workers=0",
        "train.debug_data_delay_s=0.4",
        budget="3steps",
    )
    summary = run_in_process(args)
    run_dir = workdir / "outputs" / "slow-data"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    waits = [r["data_wait"] for r in records if r["kind"] == "train"]
    # ~0.01 without the delay; > 0.3 leaves room for a busy machine slowing the step itself
    assert len(waits) == 3 and all(0.3 < w <= 1.0 for w in waits), waits
    assert 0.3 < summary["data_wait"] <= 1.0
    assert "| data wait " in (run_dir / "log.txt").read_text()


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume(uninterrupted, tiny_corpus, workdir):
    args = overrides(tiny_corpus, workdir, "killed", "train.checkpoint_every_steps=1")
    run_dir = workdir / "outputs" / "killed"
    env = {**os.environ, "TRITON_INTERPRET": "0", "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cramming", *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # A random moment: after the checkpoint of a random step, plus a random fraction of a step.
        target, deadline = random.randint(1, STEPS - 3), time.monotonic() + 240
        while (
            max((int(p.stem[5:]) for p in (run_dir / "checkpoints").glob("step_*.json")), default=0) < target
        ):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        time.sleep(random.uniform(0.0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill; shorten the delay"
    assert not (run_dir / "summary.json").exists()
    run_in_process([*args, "resume=true"])
    assert_same_run(run_dir, uninterrupted)  # continues without a jump, redone steps logged once


def test_damaged_newest_checkpoint_falls_back_and_other_arch_is_refused(tiny_corpus, workdir, capsys):
    run_dir = workdir / "outputs" / "fallback"
    args = overrides(tiny_corpus, workdir, "fallback", "train.checkpoint_every_steps=2", budget="4steps")
    run_in_process([*args, "train.stop_after_steps=4"])
    newest = run_dir / "checkpoints" / "step_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    summary = run_in_process([*args, "resume=true"])
    assert summary["steps"] == 4
    log_text = (run_dir / "log.txt").read_text()
    assert "step_00000004.pt is truncated" in log_text
    assert "falling back to the previous good checkpoint" in log_text
    assert "resumed from" in log_text and "step_00000002.pt: step 2" in log_text
    with pytest.raises(SystemExit) as exit_info:  # every checkpoint is for another architecture
        run_in_process([*args, "resume=true", "arch.hidden_size=64", "arch.intermediate_size=256"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "another architecture" in err and "step_00000004.pt" in err and "none of the 2" in err


def test_resume_without_checkpoints_starts_over_with_clean_metrics(tiny_corpus, workdir):
    run_dir = workdir / "outputs" / "early-kill"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 9.0}\n')  # killed at step 1
    summary = run_in_process(overrides(tiny_corpus, workdir, "early-kill", "resume=true", budget="2steps"))
    assert summary["steps"] == 2
    assert [step for step, _, _ in train_curve(run_dir)] == [1, 2]
    assert "holds no checkpoint; starting from scratch" in (run_dir / "log.txt").read_text()


def test_injected_nan_is_skipped_and_counted(tiny_corpus, workdir):
    args = overrides(tiny_corpus, workdir, "nan-skip", "train.debug_nan_steps=[3]", budget="5steps")
    summary = run_in_process(args)
    assert summary["steps"] == 5 and summary["skipped_steps"] == 1 and summary["nonfinite_restores"] == 0
    state = weights(workdir / "outputs" / "nan-skip")
    assert all(torch.isfinite(t).all() for t in state.values())
    assert (
        "step 3: non-finite loss or gradient, update skipped"
        in (workdir / "outputs" / "nan-skip" / "log.txt").read_text()
    )


def test_nonfinite_streak_restores_last_checkpoint_with_lower_lr(tiny_corpus, workdir):
    args = overrides(
        tiny_corpus,
        workdir,
        "nan-restore",
        "train.checkpoint_every_steps=2",
        "train.debug_nan_steps=[3,4]",
        "train.max_nonfinite_steps=2",
        "train.nonfinite_lr_factor=0.5",
        "train.schedule=constant",
        "train.lr=1e-3",  # pinned: the halving below is checked against it
        budget="6steps",
    )
    summary = run_in_process(args)
    run_dir = workdir / "outputs" / "nan-restore"
    assert summary["steps"] == 6 and summary["skipped_steps"] == 2 and summary["nonfinite_restores"] == 1
    assert "reloaded" in (run_dir / "log.txt").read_text()
    assert "step_00000002.pt (step 2)" in (run_dir / "log.txt").read_text()
    curve = train_curve(run_dir)
    # Step 3 is logged as skipped (nan); step 4 triggers the reload of step 2, then 3-6 are redone.
    assert [step for step, _, _ in curve] == [1, 2, 3, 3, 4, 5, 6]
    assert math.isnan(curve[2][1]) and all(math.isfinite(loss) for _, loss, _ in curve[3:])
    assert {lr for step, _, lr in curve[:3]} == {1e-3} and {lr for _, _, lr in curve[3:]} == {5e-4}
    assert all(torch.isfinite(t).all() for t in weights(run_dir).values())


def test_nonfinite_streak_can_stop_the_run(tiny_corpus, workdir, capsys):
    args = overrides(
        tiny_corpus,
        workdir,
        "nan-stop",
        "train.debug_nan_steps=[2,3]",
        "train.max_nonfinite_steps=2",
        "train.on_nonfinite=stop",
        budget="6steps",
    )
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(args)
    assert exit_info.value.code == 1
    assert "2 non-finite steps in a row at step 3" in capsys.readouterr().err
    assert not (workdir / "outputs" / "nan-stop" / "model").exists()
