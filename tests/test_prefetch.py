"""BatchStream: batches made ahead in a thread are the synchronous loop's batches, in order, and resume exactly."""

import threading
import time

import numpy as np
import pytest
import torch

from cramming.config import ConfigError, check_group
from cramming.config.checks import check_workers
from cramming.data import MLMCollator, SequenceLoader
from cramming.data.prefetch import BatchStream
from cramming.runtime import impl_defaults

SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
VOCAB, SEQ_LEN, BATCH = 100, 16, 3


def make_stream(depth: int, delay_s: float = 0.0) -> BatchStream:
    """A fresh loader (shuffled, 20 sequences: epochs roll over within 12 batches) and masking generator."""
    sequences = np.random.default_rng(0).integers(5, VOCAB, size=(20, SEQ_LEN), dtype=np.int64)
    loader = SequenceLoader(sequences, BATCH, seed=3)
    collator = MLMCollator(VOCAB, SPECIAL, 0.25)
    return BatchStream(loader, collator, torch.Generator().manual_seed(7), depth=depth, delay_s=delay_s)


def take(stream: BatchStream, count: int) -> list[dict]:
    return [next(stream) for _ in range(count)]


def assert_same_batches(mine: list[dict], reference: list[dict]) -> None:
    assert len(mine) == len(reference)
    for index, (a, b) in enumerate(zip(mine, reference, strict=True)):
        assert a.keys() == b.keys() == {"input_ids", "masked_positions", "labels"}
        for name in a:
            assert torch.equal(a[name], b[name]), f"batch {index}: {name} differs"


def wait_until_full(stream: BatchStream) -> None:
    deadline = time.monotonic() + 10
    while not stream._queue.full():
        assert time.monotonic() < deadline, "the producer never filled its queue"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def reference() -> list[dict]:
    """The synchronous loop's first 12 batches."""
    return take(make_stream(0), 12)


@pytest.mark.parametrize("depth", [1, 2])
def test_prefetched_batches_equal_the_synchronous_ones(reference, depth):
    """Catches a producer that reorders, skips or re-masks batches (e.g. draws the RNG out of order)."""
    stream = make_stream(depth)
    try:
        assert_same_batches(take(stream, 12), reference)
    finally:
        stream.stop()


def test_state_saved_mid_stream_is_the_consumed_one(reference):
    """Catches a checkpoint holding the producer's position: the batches waiting in the queue would be lost."""
    stream = make_stream(2)
    first = take(stream, 5)
    wait_until_full(stream)  # the producer is now 2 or 3 batches ahead of the loop
    assert stream.loader.state_dict() != stream.state()[0]
    loader_state, rng_state = stream.state()
    rest_uninterrupted = take(stream, 7)
    stream.stop()
    resumed = make_stream(2)  # a new process: restore, then continue
    resumed.loader.load_state_dict(loader_state)
    resumed.generator.set_state(rng_state)
    try:
        assert_same_batches(first + take(resumed, 7), reference)
    finally:
        resumed.stop()
    assert_same_batches(first + rest_uninterrupted, reference)


def test_stop_rewinds_and_a_reload_restarts_from_the_reloaded_position(reference):
    """The non-finite reload path: catches batches made ahead for the old position being served after it."""
    stream = make_stream(2)
    take(stream, 3)
    saved = stream.state()  # "checkpoint" after batch 3
    take(stream, 4)
    wait_until_full(stream)
    stream.stop()  # what Pretrainer.load_state_dict does first
    assert stream._thread is None
    assert stream.loader.state_dict() == stream.state()[0]  # rewound to the 7 batches consumed
    assert_same_batches(take(stream, 2), reference[7:9])  # stop alone loses nothing
    stream.stop()
    stream.loader.load_state_dict(saved[0])
    stream.generator.set_state(saved[1])
    try:
        assert_same_batches(take(stream, 6), reference[3:9])
    finally:
        stream.stop()


def test_stop_ends_the_thread_and_a_failing_producer_raises_in_the_loop():
    """Catches a producer thread left running after the run, and a loop that hangs when the producer dies."""
    stream = make_stream(2)
    next(stream)
    thread = stream._thread
    stream.stop()
    assert not thread.is_alive()

    def broken(ids, generator=None):
        raise OSError("disk gone")

    failing = BatchStream(stream.loader, broken, stream.generator, depth=2)
    for _ in range(2):  # and again: a second call must not block on an empty queue
        with pytest.raises(RuntimeError, match="producer thread failed") as err:
            next(failing)
        assert isinstance(err.value.__cause__, OSError)
    failing.stop()
    assert not any(t.name == "cramming-batches" for t in threading.enumerate())


def test_a_slow_loader_is_hidden_behind_the_step():
    """With a loader slower than nothing but faster than the step, the loop waits only for the first batch.

    Catches a "prefetch" that still makes each batch on demand (the wait would equal the synchronous one).
    """
    delay, step, count = 0.03, 0.05, 8
    waited = {}
    for depth in (0, 1):
        stream = make_stream(depth, delay_s=delay)
        try:
            for _ in range(count):
                next(stream)
                time.sleep(step)  # the training step (sleeps release the GIL like GPU waits do)
        finally:
            stream.stop()
        waited[depth] = stream.waited
    assert waited[0] >= count * delay
    assert waited[1] < 0.5 * waited[0]


@pytest.mark.parametrize("value", [-1, 1.5, "2", True, None])
def test_bad_worker_counts_are_refused_with_their_value(value):
    """Catches impl.dataloader_workers read nowhere, or a negative / fractional count accepted."""
    with pytest.raises(ValueError, match=r"impl\.dataloader_workers=.*whole number >= 0"):
        check_workers(value)
    with pytest.raises(ConfigError, match=rf"impl\.dataloader_workers={value!r}"):
        check_group("impl", {**impl_defaults(), "dataloader_workers": value})
    check_group("impl", {**impl_defaults(), "dataloader_workers": 0})
