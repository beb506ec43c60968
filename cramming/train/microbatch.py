"""``train.microbatch_size=auto``: the microbatch chosen before the clock starts, and one retreat after OOM.

On a GPU: the largest candidate whose training step (forward and backward on the real shapes, with
room held for the optimizer's state) fits in memory with a safety margin, tried from large to small,
catching out-of-memory, freeing and retrying. On a CPU: the candidate with the best measured
tokens/s, unless measuring would cost more than it can save (then the CPU recipe's value). The
choice and its reason go to the log and to summary.json; the batch ramp and the accumulation count
follow from it (``accumulation_steps`` divides the ramped batch by it). A run that later hits
out-of-memory (fragmentation) halves it once and continues from its last checkpoint.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from cramming import distributed
from cramming.train.step import to_device

log = logging.getLogger("cramming")

GPU_CANDIDATES = (2048, 1536, 1024, 768, 512, 384, 256, 192, 128, 96, 64, 48, 32, 24, 16, 12, 8, 4, 2, 1)
CPU_CANDIDATES = (8, 16, 32, 64)
CPU_DEFAULT = 16  # conf/train/cpu.yaml's microbatch_size
SAFETY_MARGIN = 0.10  # of the GPU's memory left free for fragmentation and the compiled graphs' workspace
MEASURE_SHARE = 0.05  # measuring on CPU may cost at most this share of a time budget (60 s otherwise)


@dataclass
class MicrobatchChoice:
    """What ``train.microbatch_size`` became and why (summary.json's ``microbatch``)."""

    size: int
    auto: bool
    reason: str
    tried: list = field(default_factory=list)  # [size, outcome] pairs, in the order tried
    halved_after_oom: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def candidates(table: tuple[int, ...], per_rank_batch: int) -> list[int]:
    """Sizes from ``table`` that divide the per-rank final batch (so accumulation keeps it exact), largest
    first; the batch itself when it is smaller than every entry."""
    found = [c for c in table if c <= per_rank_batch and per_rank_batch % c == 0]
    return sorted(found, reverse=True) or [per_rank_batch]


def choose_microbatch(
    setting,
    per_rank_batch: int,
    device_type: str,
    probe: Callable[[int], float],
    total_memory: float | None = None,
    time_budget_s: float | None = None,
) -> MicrobatchChoice:
    """``setting``: train.microbatch_size (a number, kept, or ``auto``). ``probe(size)`` runs one training
    step of ``size`` sequences and returns the peak memory in bytes (GPU) or its seconds (CPU); it raises
    ``torch.OutOfMemoryError`` when the step does not fit. ``total_memory``: the GPU's bytes."""
    if setting != "auto":
        return MicrobatchChoice(int(setting), False, "set by train.microbatch_size")
    if device_type == "cuda":
        return _largest_that_fits(per_rank_batch, probe, total_memory)
    return _fastest_on_cpu(per_rank_batch, probe, time_budget_s)


def _largest_that_fits(per_rank_batch: int, probe, total_memory: float | None) -> MicrobatchChoice:
    limit = (1 - SAFETY_MARGIN) * float(total_memory or torch.cuda.mem_get_info()[1])
    tried = []
    for size in candidates(GPU_CANDIDATES, per_rank_batch):
        try:
            peak = probe(size)
        except torch.OutOfMemoryError:
            tried.append([size, "out of memory"])
            free_memory()
            continue
        if peak > limit:
            tried.append(
                [size, f"fits, but peak {peak / 2**30:.1f} GiB leaves under {SAFETY_MARGIN:.0%} free"]
            )
            continue
        tried.append(
            [size, f"fits: peak {peak / 2**30:.1f} GiB of {limit / (1 - SAFETY_MARGIN) / 2**30:.1f} GiB"]
        )
        reason = (f"largest that fits with {SAFETY_MARGIN:.0%} of GPU memory free (step tried on the real shapes,"
                  f" largest first: {', '.join(f'{s}: {o}' for s, o in tried)})")  # fmt: skip
        return MicrobatchChoice(size, True, reason, tried)
    raise ValueError(
        f"train.microbatch_size=auto: not even a microbatch of {candidates(GPU_CANDIDATES, per_rank_batch)[-1]} "
        f"sequences fits in GPU memory ({tried}); use a smaller arch or a lower precision"
    )


def _fastest_on_cpu(per_rank_batch: int, probe, time_budget_s: float | None) -> MicrobatchChoice:
    """Tokens/s of each candidate (one untimed and two timed steps each), unless that costs too much."""
    sizes = sorted(candidates(CPU_CANDIDATES, per_rank_batch))
    started = time.perf_counter()
    first = probe(sizes[0])  # also the warm-up
    cost = 3 * first * sum(s / sizes[0] for s in sizes)  # steps scale about linearly with the size on CPU
    allowed = MEASURE_SHARE * time_budget_s if time_budget_s else 60.0
    if cost > allowed or len(sizes) == 1:
        size = min(CPU_DEFAULT, per_rank_batch)
        why = "only one candidate" if len(sizes) == 1 else (
            f"measuring {sizes} would take ~{cost:.0f} s, more than the {allowed:.0f} s it may cost "
            f"({MEASURE_SHARE:.0%} of a time budget, else 60 s), so measuring costs more than it can save")  # fmt: skip
        return MicrobatchChoice(
            size, True, f"CPU: the CPU recipe's {size} ({why})", [[sizes[0], f"{first:.2f} s"]]
        )
    tried, speed = [], {}
    for size in sizes:
        try:
            probe(size)  # warm-up at this shape
            speed[size] = size / min(probe(size), probe(size))
        except torch.OutOfMemoryError:
            tried.append([size, "out of memory"])
            free_memory()
            break  # larger ones will not fit either
        tried.append([size, f"{speed[size]:.1f} sequences/s"])
    best = max(speed, key=speed.get)
    reason = (f"CPU: best measured throughput ({', '.join(f'{s}: {o}' for s, o in tried)}; "
              f"measuring took {time.perf_counter() - started:.1f} s before the clock started)")  # fmt: skip
    return MicrobatchChoice(best, True, reason, tried)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- the pretraining loop's side ---------------------------------------------------------------------


def resolve_microbatch(trainer) -> MicrobatchChoice:
    """Turn ``train.microbatch_size`` into a number before the clock starts (written back into the config,
    so the loop, validation and checkpoints see the size in use). Under DDP every rank takes rank 0's."""
    t, rt = trainer.train_cfg, trainer.runtime
    per_rank = max(1, int(t["batch_size"]) // rt.world_size)
    budget = trainer.budget
    choice = choose_microbatch(
        t["microbatch_size"], per_rank, rt.device.type, lambda size: probe_step(trainer, size),
        time_budget_s=budget.amount if budget.kind == "time" else None,
    )  # fmt: skip
    if rt.world_size > 1:
        choice.size = int(distributed.broadcast_floats([float(choice.size)])[0])
    if choice.auto:
        log.info("train.microbatch_size=auto -> %d: %s", choice.size, choice.reason)
    t["microbatch_size"] = choice.size
    return choice


def probe_step(trainer, size: int) -> float:
    """Forward and backward on ``size`` real training sequences, with the optimizer's state held aside in
    memory (AdamW's two fp32 moments); weights, optimizer and random streams are left as they were.
    Returns the peak allocated bytes on a GPU, the step's seconds on a CPU."""
    rt, model = trainer.runtime, trainer.model
    cuda = rt.device.type == "cuda"
    rows = len(trainer.corpus.train)
    ids = torch.as_tensor(trainer.corpus.train[: min(size, rows)].astype("int64"))  # (min(size, N), T)
    ids = ids.repeat(-(-size // len(ids)), 1)[:size]  # (size, T): a small corpus is repeated
    batch = to_device(trainer.collator(ids, generator=torch.Generator().manual_seed(0)), rt.device)
    reserve = None
    if cuda:
        state_bytes = 2 * 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
        reserve = torch.empty(state_bytes, dtype=torch.uint8, device=rt.device)
        torch.cuda.synchronize(rt.device)
        torch.cuda.reset_peak_memory_stats(rt.device)
    check_fake_limit(size)
    started = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[rt.device] if cuda else []):
            with rt.autocast():
                loss = model(**batch)["loss"]
            loss.backward()
        if cuda:
            torch.cuda.synchronize(rt.device)
            return float(torch.cuda.max_memory_allocated(rt.device))
        return time.perf_counter() - started
    finally:
        model.zero_grad(set_to_none=True)
        del batch, reserve


# A testing aid: microbatches above this many sequences raise out-of-memory in probe_step (None = off).
FAKE_LIMIT: int | None = None


def check_fake_limit(size: int) -> None:
    if FAKE_LIMIT is not None and size > FAKE_LIMIT:
        raise torch.OutOfMemoryError(f"simulated: {size} sequences > the fake limit of {FAKE_LIMIT}")


def recover_from_oom(trainer, err: BaseException) -> bool:
    """After out-of-memory in a step of an ``auto`` run: halve the microbatch and go back to the last
    checkpoint, once, with a warning. False (the caller re-raises) when it cannot: a fixed microbatch, a
    second time, a microbatch of 1, several processes (the others would wait forever), or no checkpoint."""
    choice, rt = trainer.microbatch, trainer.runtime
    if not choice.auto or choice.halved_after_oom or choice.size < 2 or rt.world_size > 1:
        return False
    trainer.optimizer.zero_grad(set_to_none=True)
    free_memory()
    found = trainer.checkpoints.find()
    if found is None:
        return False
    old, new = choice.size, choice.size // 2
    log.warning("out of memory at step %d with microbatch %d (%s): halving it to %d and continuing from %s "
                "(step %d); this happens once", trainer.progress.step + 1, old, str(err).splitlines()[0][:200],
                new, found[0], found[1]["step"])  # fmt: skip
    trainer.checkpoints.rewind(found)  # keeps the counts of skips and reloads and the LR scale
    trainer.train_cfg["microbatch_size"] = new
    trainer.loader.batch_size = (
        new  # the loader's cursor counts sequences, so the data stream goes on exactly
    )
    if trainer.clock.ramp is not None:
        trainer.clock.ramp = (new * rt.world_size, *trainer.clock.ramp[1:])
    choice.size, choice.halved_after_oom = new, True
    choice.reason += f"; halved from {old} to {new} after out-of-memory at step {trainer.progress.step + 1}"
    return True
