"""DDP on CPU (gloo): two ranks with accumulation make the same update as one process on the full batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cramming.conf import read_yaml
from cramming.kernels import dispatch as ops
from cramming.models import build_mlm
from cramming.optim import build_optimizer
from cramming.runtime import Runtime
from cramming.train import optimizer_step

VOCAB, STEPS, ACCUM, WORLD = 64, 2, 2, 2
TRAIN = {"optimizer": "adamw", "lr": 1e-3, "betas": [0.9, 0.98], "eps": 1e-12, "weight_decay": 0.01}


def tiny_arch() -> dict:
    """arch=tiny with the scaled sinusoid: the tolerances below were set on it (with AdamW's eps 1e-12 the
    all-reduce's summation order moves rotary's near-zero updates just past them); rotary has no
    parameter to synchronise, so the arch does not change what this test checks."""
    return {**read_yaml("arch", "tiny.yaml"), "position_embedding": "scaled-sinusoidal"}


def microbatches() -> list:
    """STEPS x (WORLD * ACCUM) fixed microbatches of 2 sequences of 16 tokens."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (STEPS, WORLD * ACCUM, 2, 16), generator=g)
    chosen = torch.rand(ids.shape, generator=g) < 0.3
    return [
        [
            {"input_ids": ids[s, m], "labels": torch.where(chosen[s, m], ids[s, m], -100)}
            for m in range(WORLD * ACCUM)
        ]
        for s in range(STEPS)
    ]


def feeder(batches: list, on_microbatch):
    stream = iter(enumerate(batches))

    def next_microbatch():
        index, batch = next(stream)
        on_microbatch(index)
        return batch

    return next_microbatch


def train(model, step_model, per_step: list, on_microbatch=lambda index: None) -> list[float]:
    torch.manual_seed(0)
    optimizer = build_optimizer(model, TRAIN, torch.device("cpu"))
    # The runtime names the ranks, as make_runtime does under torchrun: the step averages over them.
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    runtime, losses = Runtime(torch.device("cpu"), torch.float32, world_size=world), []
    for batches in per_step:
        next_microbatch = feeder(batches, on_microbatch)
        loss, _, finite = optimizer_step(
            step_model, optimizer, next_microbatch, len(batches), 1e-3, 0.5, runtime
        )
        assert finite
        losses.append(float(loss))
    return losses


def fresh_model():
    ops.configure({"kernels": "torch"})
    torch.manual_seed(0)
    return build_mlm(tiny_arch(), VOCAB)


def worker(rank: int, init_file: str, out: str) -> None:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    model = fresh_model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    current, synced_at = {"index": -1}, []

    def hook(state, bucket):  # records at which microstep gradients were all-reduced
        synced_at.append(current["index"])
        return default_hooks.allreduce_hook(None, bucket)

    ddp.register_comm_hook(None, hook)
    mine = [batches[rank * ACCUM : (rank + 1) * ACCUM] for batches in microbatches()]  # this rank's shard
    losses = train(model, ddp, mine, on_microbatch=lambda index: current.update(index=index))
    if rank == 0:
        torch.save({"state": model.state_dict(), "losses": losses, "synced_at": synced_at}, out)
    dist.barrier()  # leave together, or a rank may abort while gloo tears down
    dist.destroy_process_group()


@pytest.mark.slow  # ~20 s: spawning two Python processes
def test_two_gloo_ranks_match_one_process_on_the_full_batch(tmp_path):
    out = tmp_path / "rank0.pt"
    mp.spawn(worker, args=(str(tmp_path / "init"), str(out)), nprocs=WORLD, join=True)
    ddp = torch.load(out, weights_only=False)
    model = fresh_model()
    losses = train(model, model, microbatches())  # one process, WORLD * ACCUM microbatches per step
    assert ddp["synced_at"] and set(ddp["synced_at"]) == {ACCUM - 1}  # no_sync on earlier microsteps
    torch.testing.assert_close(torch.tensor(ddp["losses"]), torch.tensor(losses), rtol=1e-6, atol=1e-6)
    initial = fresh_model().state_dict()
    for key, value in model.state_dict().items():
        assert not torch.equal(value, initial[key]) or value.ndim == 0 or "position" in key, (
            f"{key} did not move"
        )
        torch.testing.assert_close(ddp["state"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def torchrun(args: list, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "0", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "cramming",
    ]
    result = subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_torchrun_two_ranks_share_one_run_folder_only_rank0_writes_and_resume(tiny_corpus, tmp_path):
    args = [
        "budget=4steps",
        f"base_dir={tmp_path / 'outputs'}",
        "arch=tiny",
        "train=cpu",
        "train.microbatch_size=2",
        "train.batch_size_start=8",  # global: 2 ranks x 2 microbatches of 2
        "train.batch_size=8",
        "train.log_every=1",
        "data=local",
        f"data.files=[{tiny_corpus['train']}]",
        "data.vocab_size=2048",
        "data.filters.max_tokens_per_char=0.5",
        "data.seq_len=32",
        f"data.cache_dir={tmp_path / 'cache'}",
        "impl.kernels=torch",
        "impl.threads=1",
    ]
    torchrun([*args, "train.stop_after_steps=2"], tmp_path)  # no name=: the ranks must agree on one
    runs = list((tmp_path / "outputs").iterdir())
    assert len(runs) == 1, runs
    run = runs[0]
    state = torch.load(run / "checkpoints" / "step_00000002.pt", weights_only=True)
    assert len(state["ranks"]) == 2 and not any(
        k.startswith(("module.", "_orig_mod.")) for k in state["model"]
    )
    assert not torch.equal(state["ranks"][0]["mask_rng"], state["ranks"][1]["mask_rng"])
    cursor = [r["loader"] for r in state["ranks"]]
    assert (
        cursor[0]["rank"] == 0
        and cursor[1]["rank"] == 1
        and cursor[0]["position"] == cursor[1]["position"] == 8
    )

    torchrun([*args, f"name={run.name}", "resume=true"], tmp_path)
    assert list((tmp_path / "outputs").iterdir()) == [run]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["tokens_seen"] == 4 * 8 * 32
    log_text = (run / "log.txt").read_text()
    assert "2 process(es)" in log_text and log_text.count("budget spent") == 1  # rank 1 logs nothing
    assert "resumed from" in log_text and "step_00000002.pt: step 2" in log_text
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # one writer, appended across the resume
