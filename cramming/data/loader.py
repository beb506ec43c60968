"""``SequenceLoader``: an endless, seeded, rank-sharded stream of packed-sequence batches with a resumable cursor."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class SequenceLoader:
    """Infinite iterator of LongTensor batches ``(batch_size, seq_len)``.

    Every epoch is a seeded permutation of all sequences, or the stored order when ``shuffle`` is off:
    by default off exactly for ordered sequences (``data.ordering`` a curriculum, ``sequences.ordered``),
    so a curriculum is served as sorted, every epoch; rank ``r`` of ``W`` takes positions ``r, r+W, r+2W, ...`` of it, so the
    ranks cover each sequence exactly once per epoch. Batches run on across epoch boundaries (a batch may
    end one epoch and start the next), so every rank yields the same number of batches forever.
    ``state_dict()`` is the cursor (epoch, position in this rank's share); ``load_state_dict`` makes the
    next batch exactly the one a never-interrupted run would have produced. ``batch_size`` may be
    changed between batches (the cursor counts sequences, not batches).
    """

    def __init__(
        self,
        sequences,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        shuffle: bool | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank!r} must be in [0, world_size={world_size})")
        if len(sequences) < world_size:
            raise ValueError(f"{len(sequences)} sequences cannot be shared by world_size={world_size} ranks")
        self.sequences, self.batch_size = sequences, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device = torch.device(device)
        self.shuffle = (not getattr(sequences, "ordered", False)) if shuffle is None else shuffle
        self.epoch, self.position = 0, 0
        self._share_epoch, self._share = -1, None

    def share(self, epoch: int) -> np.ndarray:
        """This rank's sequence indices for ``epoch``, in visiting order."""
        if self._share_epoch != epoch:
            n = len(self.sequences)
            dtype = np.int32 if n < 2**31 else np.int64
            order = np.arange(n, dtype=dtype)
            if self.shuffle:
                np.random.default_rng([self.seed, epoch]).shuffle(order)
            self._share, self._share_epoch = order[self.rank :: self.world_size], epoch
        return self._share

    @property
    def batches_per_epoch(self) -> float:
        return len(self.share(self.epoch)) / self.batch_size

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        parts, need = [], self.batch_size
        while need:
            share = self.share(self.epoch)
            take = min(need, len(share) - self.position)
            parts.append(share[self.position : self.position + take])
            self.position += take
            need -= take
            if self.position == len(share):
                self.epoch, self.position = self.epoch + 1, 0
        index = np.concatenate(parts) if len(parts) > 1 else parts[0]
        batch = torch.from_numpy(self.sequences[index])  # (B, T) int64
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_sequences": len(self.sequences),
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the cursor; the data, seed and shuffle must match the run that saved it."""
        for key, mine in (
            ("num_sequences", len(self.sequences)),
            ("seed", self.seed),
            ("shuffle", self.shuffle),
        ):
            if state[key] != mine:
                raise ValueError(
                    f"loader state has {key}={state[key]!r}, this loader has {mine!r}; cannot resume"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if state["world_size"] != self.world_size:
            # A different number of ranks: continue from the same global point in the epoch (approximate).
            consumed = self.position * state["world_size"]
            self.position = min(consumed // self.world_size, len(self.share(self.epoch)) - 1)
