"""``BatchStream``: training batches read, masked and pinned ahead of the loop in a background thread.

One producer thread, not several. It alone draws from the loader and the masking generator, in order,
so the batches are exactly those of the synchronous loop (``depth=0``) and the masking RNG stream is
unchanged; its work per microbatch (a memory-mapped gather, a sort over 128 positions, a pin) takes
milliseconds against a GPU step of a few hundred, so one thread keeps up, and more producers would need
per-batch derived seeds that change the masking of every existing run. ``depth`` (``impl.dataloader_workers``)
is how many batches wait ready in a bounded queue: ``0`` makes each batch inside the loop.

Each batch travels with the data state *after* it (loader cursor, mask RNG state). ``state()`` is the
state as of the last batch the loop consumed, not the producer's, so a checkpoint taken while batches
wait in the queue resumes at the next batch the loop would have used: none lost, none used twice.
``stop()`` ends the thread, drops what it made ahead and rewinds the loader and generator to ``state()``;
the next ``next()`` restarts the producer from there (after a reload, from the reloaded position).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import torch

from cramming.config.checks import check_workers


class BatchStream:
    """Endless, ordered batches ``collate(next(loader), generator=generator)``; see the module docstring.

    ``pin`` pins each batch's tensors (in the producer) so the loop's ``.to(cuda, non_blocking=True)``
    is asynchronous. ``delay_s`` sleeps before each batch: a testing aid standing in for a slow disk.
    ``waited`` counts the seconds ``next()`` spent blocked (with ``depth=0``: making the batch).
    """

    def __init__(
        self,
        loader,
        collate: Callable,
        generator: torch.Generator,
        depth: int = 0,
        pin: bool = False,
        delay_s: float = 0.0,
    ):
        self.loader, self.collate, self.generator = loader, collate, generator
        self.depth, self.pin, self.delay_s = check_workers(depth), pin, float(delay_s)
        self.waited = 0.0
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._halt = threading.Event()
        self._consumed: tuple[dict, torch.Tensor] | None = None  # set while the producer runs

    def make(self) -> dict[str, torch.Tensor]:
        """One batch from the live loader and generator."""
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        batch = self.collate(next(self.loader), generator=self.generator)
        return {name: t.pin_memory() if self.pin else t for name, t in batch.items()}

    def snapshot(self) -> tuple[dict, torch.Tensor]:
        """The live loader cursor and generator state (copies)."""
        return self.loader.state_dict(), self.generator.get_state()

    def state(self) -> tuple[dict, torch.Tensor]:
        """(loader state, mask RNG state) as of the last batch ``next()`` returned."""
        return self._consumed if self._thread is not None else self.snapshot()

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        if self.depth == 0:
            batch = self.make()
        else:
            if self._thread is None:
                self._start()
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._queue.put(item)  # the producer is gone: later calls fail the same way
                raise RuntimeError("the batch producer thread failed") from item
            batch, self._consumed = item
        self.waited += time.perf_counter() - start
        return batch

    def _start(self) -> None:
        self._consumed = self.snapshot()
        self._queue = queue.Queue(maxsize=self.depth)
        self._halt.clear()
        self._thread = threading.Thread(target=self._produce, name="cramming-batches", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._halt.is_set():
                item = (self.make(), self.snapshot())
                while not self._halt.is_set():
                    try:
                        self._queue.put(item, timeout=0.05)  # a timeout, so stop() is never stuck
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # handed to the loop, which raises it
            self._queue.put(err)

    def stop(self) -> None:
        """End the producer, drop the batches made ahead, rewind loader and generator to ``state()``."""
        if self._thread is None:
            return
        self._halt.set()
        while self._thread.is_alive():
            try:  # room for a failing producer's last put
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)
        loader_state, rng_state = self._consumed
        self.loader.load_state_dict(loader_state)
        self.generator.set_state(rng_state)
        self._thread = self._queue = self._consumed = None

    close = stop
