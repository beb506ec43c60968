"""Training checkpoints: everything a resumed run needs, written atomically and checked on load.

A checkpoint is two files in ``RUN/checkpoints/``: ``step_<N>.pt`` (the ``torch.save`` payload) and
``step_<N>.json``, written after the payload, holding its size, sha256, step, architecture, tokenizer
hash and the run config. A payload without its JSON (killed in between), with another size or hash
(truncated, bit-flipped), or made for another architecture or tokenizer is refused with an error
naming the file, and :func:`load_latest` falls back to the previous good one.

The payload holds only tensors and plain Python values (numbers, strings, lists, dicts) and is read
with ``torch.load(weights_only=True)``: a checkpoint holding any other pickled object is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cramming import distributed
from cramming.export.folder import _unwrap
from cramming.files import atomic_write, file_sha256

log = logging.getLogger("cramming")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and why."""


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def sidecar(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# Arch keys added after checkpoints existed, with the value that builds the model made before them: left
# out of the identity at that value, so a run checkpointed before the key existed still resumes.
LATER_ARCH_KEYS = {"qk_norm": False}


def identity(arch: Mapping, vocab_size: int, tokenizer_json: str) -> dict:
    """What a checkpoint must share with the config that loads it."""
    missing = object()
    return {
        "arch": {key: value for key, value in arch.items() if LATER_ARCH_KEYS.get(key, missing) != value},
        "vocab_size": int(vocab_size),
        "tokenizer_sha256": text_sha256(tokenizer_json),
    }


def save_checkpoint(run_dir: Path, state: dict, keep: int = 2, meta: Mapping | None = None) -> Path:
    """Write ``step_<N>.pt`` then its ``.json`` (size, sha256, ``meta``) atomically; keep the newest ``keep``."""
    folder = checkpoint_dir(run_dir)
    path = folder / f"step_{state['step']:08d}.pt"
    for stale in folder.glob(".step_*.tmp"):  # left by a process killed while writing
        stale.unlink(missing_ok=True)
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    info = {
        "file": path.name,
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "step": state["step"],
    }
    info.update(meta or {})
    atomic_write(sidecar(path), lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1) + "\n"))
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        sidecar(old).unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint payloads, oldest first."""
    return sorted(checkpoint_dir(run_dir).glob("step_*.pt"))


def verify_checkpoint(path: Path, expect: Mapping | None = None) -> dict:
    """Check size, sha256 and (if given) the identity fields of ``expect``; returns the sidecar info."""
    path = Path(path)
    try:
        info = json.loads(sidecar(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {path} has no {sidecar(path).name} (its writer was stopped before finishing)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {path}: {sidecar(path).name} is unreadable ({err})") from err
    size = path.stat().st_size
    if size != info.get("bytes"):
        raise CheckpointError(
            f"checkpoint {path} is truncated or damaged: {size} bytes, expected {info.get('bytes')}"
        )
    if file_sha256(path) != info.get("sha256"):
        raise CheckpointError(
            f"checkpoint {path} is damaged: its sha256 differs from the one in {sidecar(path).name}"
        )
    for key, wanted in (expect or {}).items():
        if info.get(key) != wanted:
            what = {"arch": "architecture", "tokenizer_sha256": "tokenizer", "vocab_size": "vocabulary size"}
            raise CheckpointError(
                f"checkpoint {path} was made for another {what.get(key, key)} than this config "
                f"({key}: checkpoint {info.get(key)!r}, config {wanted!r})"
            )
    return info


def load_checkpoint(path: Path, expect: Mapping | None = None) -> dict:
    """Verify, then load the payload on the CPU. Raises CheckpointError naming the file."""
    verify_checkpoint(path, expect)
    try:
        # weights_only: tensors and plain Python values only, so a checkpoint from elsewhere cannot run code.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = next((line for line in str(err).splitlines() if "global" in line.lower()), "no details")
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain Python values ({found.strip()}); "
            "refusing to unpickle them, since that could run code. Checkpoints written by cramming never do."
        ) from None
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({err}); it may be truncated or corrupt"
        ) from err


def load_latest(run_dir: Path, expect: Mapping | None = None) -> tuple[Path, dict] | None:
    """The newest checkpoint that passes :func:`load_checkpoint`, falling back to older ones.

    None when there are no checkpoints at all; CheckpointError listing every refusal when there are
    some but none is usable (a resume must not silently start from scratch).
    """
    found = list_checkpoints(run_dir)
    refusals = []
    for path in reversed(found):
        try:
            state = load_checkpoint(path, expect)
        except CheckpointError as err:
            refusals.append(str(err))
            log.warning("refusing %s; trying the previous checkpoint", err)
            continue
        if refusals:
            log.warning("falling back to the previous good checkpoint %s", path)
            set_aside(found[found.index(path) + 1 :])
        return path, state
    if found:
        raise CheckpointError(
            f"none of the {len(found)} checkpoints in {checkpoint_dir(run_dir)} is usable:\n  "
            + "\n  ".join(refusals)
        )
    return None


def set_aside(paths: list[Path]) -> None:
    """Rename refused checkpoints to ``*.refused`` so new ones at the same steps are not confused with them."""
    for path in paths:
        for file in (path, sidecar(path)):
            if file.exists():
                file.replace(file.with_name(file.name + ".refused"))
        log.warning("set aside %s as %s.refused", path, path.name)


def model_state(model: torch.nn.Module) -> dict:
    """State dict of the unwrapped module: no `_orig_mod.` or `module.` prefixes."""
    return _unwrap(model).state_dict()


def all_finite(state: Mapping) -> bool:
    """True when every floating tensor in a (model) state dict is finite: never save NaN weights.

    One read of the device for the whole state (the checks are stacked first)."""
    checks = [torch.isfinite(t).all() for t in state.values() if torch.is_tensor(t) and t.is_floating_point()]
    if not checks:
        return True
    device = checks[0].device
    return bool(torch.stack([c.to(device) for c in checks]).all())


# -- resume helpers ---------------------------------------------------------------------------
def trim_metrics(path: Path, step: int) -> int:
    """Drop records logged after ``step`` (work lost with a killed run, about to be redone); returns how many."""
    if not path.exists():
        return 0
    lines = path.read_text(errors="replace").splitlines()
    kept = [line for line in lines if _record_step(line) <= step]
    if len(kept) < len(lines):
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in kept)))
    return len(lines) - len(kept)


def _record_step(line: str) -> float:
    """The step of one metrics record; a line a kill cut in half counts as lost (infinitely late)."""
    try:
        record = json.loads(line)
        return float(record.get("step", 0)) if isinstance(record, dict) else float("inf")
    except ValueError:
        return float("inf")


def config_drift(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    """Keys whose values differ between two nested configs (budget, seed, train, data), as dotted names."""
    keys = ("budget", "seed", "train", "data") if not prefix else sorted(set(old) | set(new))
    drift = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            drift += config_drift(a, b, f"{prefix}{key}.")
        elif a != b and key not in ("stop_after_steps", "debug_nan_steps", "debug_data_delay_s"):
            drift.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return drift


# -- a run's checkpoint: finding it on every rank, the per-rank state --------------------------
def find_checkpoint(run_dir: Path, expect: Mapping, rank: int) -> tuple[Path, dict] | None:
    """Rank 0 picks the newest good checkpoint (falling back to older ones); every rank loads it."""
    found, answer = None, None
    if rank == 0:
        try:
            found = load_latest(run_dir, expect)
            answer = str(found[0]) if found else None
        except CheckpointError as err:
            answer = err
    answer = distributed.broadcast_object(answer)
    if isinstance(answer, Exception):
        raise answer
    if answer is None or found is not None:
        return found
    return Path(answer), load_checkpoint(Path(answer), expect)


def find_resume_point(run_dir: Path, expect: Mapping, config: Mapping, rank: int) -> tuple[Path, dict] | None:
    """The checkpoint ``resume=true`` continues from, warning of settings changed since; None: none at all."""
    found = find_checkpoint(run_dir, expect, rank)
    if found is None:
        log.warning("resume=true but %s holds no checkpoint; starting from scratch", checkpoint_dir(run_dir))
        return None
    for change in config_drift(found[1]["config"], config):
        log.warning(
            "resuming with a changed setting (results will differ from an uninterrupted run): %s", change
        )
    return found


def rank_state(loader_state: dict, mask_rng: torch.Tensor, device: torch.device) -> dict:
    """What differs between ranks: the data cursor and the random streams (all tensors or plain values).

    ``loader_state`` and ``mask_rng`` are those as of the last batch the loop used (batches made ahead
    by the prefetch thread are made again after a resume).
    """
    return {
        "loader": loader_state,
        "mask_rng": mask_rng,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def load_rank_state(
    ranks: list, rank: int, world_size: int, loader, mask_generator: torch.Generator, device: torch.device
) -> None:
    """Restore this rank's cursor and random streams from the gathered ``ranks`` of a checkpoint."""
    if len(ranks) != world_size:
        log.warning(
            "checkpoint was made by %d ranks, resuming with %d: the data position is approximate "
            "and masking continues from rank 0's random stream",
            len(ranks),
            world_size,
        )
    mine = ranks[rank] if rank < len(ranks) else ranks[0]
    loader.load_state_dict(mine["loader"])
    mask_generator.set_state(mine["mask_rng"])
    torch.set_rng_state(mine["torch_rng"])
    if mine["cuda_rng"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda_rng"], device)


def plain(config: Mapping) -> dict:
    """A copy of ``config`` holding only JSON types (so the safe loader reads it); tuples become lists."""
    return json.loads(json.dumps(config))


# -- the pretraining loop's checkpoints ---------------------------------------------------------
@dataclass
class Progress:
    """What the loop has done so far; saved in checkpoints."""

    step: int = 0
    tokens: int = 0
    skipped_steps: int = 0
    nonfinite_streak: int = 0
    restores: int = 0  # reloads of the last good checkpoint after non-finite steps
    lr_scale: float = 1.0  # multiplied by train.nonfinite_lr_factor at each such reload
    # Training losses since the last log line: saved so a resumed run's next log line averages the same steps.
    losses: list = field(default_factory=list)

    def restore(self, saved: Mapping) -> None:
        """Take a checkpoint's values in place (the loop and this manager share one Progress)."""
        for key, value in vars(Progress(**saved)).items():
            setattr(self, key, value)


@dataclass
class CheckpointManager:
    """Saves the whole run's state, resumes it, and reloads the last good one after non-finite steps."""

    run_dir: Path
    cfg: Mapping  # the whole run config (saved, and compared on resume)
    budget_text: str
    runtime: object  # cramming.runtime.Runtime
    identity: dict  # what a checkpoint must share with this run (arch, vocabulary, tokenizer, teacher)
    tokenizer_json: str
    model: torch.nn.Module
    optimizer: object
    scaler: torch.amp.GradScaler
    clock: object  # cramming.budget.BudgetClock
    batches: object  # cramming.data.prefetch.BatchStream
    loader: object  # its SequenceLoader (the data cursor)
    mask_generator: torch.Generator
    progress: Progress
    saved_step: int = -1
    last_save: float = field(default_factory=time.monotonic)

    def state_dict(self) -> dict:
        """The whole run's state; a collective under DDP (every rank's cursor and RNGs are gathered).

        Tensors and plain Python values only, so ``torch.load(weights_only=True)`` reads it back.
        """
        progress = dict(vars(self.progress), losses=list(self.progress.losses))
        loader_state, mask_rng = self.batches.state()  # as of the last batch used, not the producer's
        rank = rank_state(loader_state, mask_rng, self.runtime.device)
        return {
            "step": self.progress.step,
            "progress": progress,
            "model": model_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "clock": self.clock.state_dict(),
            "ranks": distributed.gather_objects(rank),
            "arch": dict(self.cfg["arch"]),
            "vocab_size": self.identity["vocab_size"],
            "tokenizer": self.tokenizer_json,
            "budget": self.budget_text,
            "config": plain(self.cfg),
        }

    def load_state_dict(self, state: dict, rewind: bool = False) -> None:
        """Continue from ``state``; ``rewind``: a reload within this run (time spent is not given back)."""
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler.is_enabled() and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if rewind:
            self.clock.rewind(state["clock"])
        else:
            self.clock.load_state_dict(state["clock"])
        rt = self.runtime
        self.batches.stop()  # batches made ahead belong to the old position
        load_rank_state(state["ranks"], rt.rank, rt.world_size, self.loader, self.mask_generator, rt.device)
        self.progress.restore(state["progress"])

    def find(self) -> tuple[Path, dict] | None:
        """This run's newest good checkpoint, loaded on every rank (None: none yet)."""
        return find_checkpoint(self.run_dir, self.identity, self.runtime.rank)

    def rewind(self, found: tuple[Path, dict]) -> None:
        """Go back to ``found`` within this run, keeping the counts of skips and reloads and the LR scale."""
        prog = self.progress
        kept = prog.skipped_steps, prog.restores, prog.lr_scale
        self.load_state_dict(found[1], rewind=True)
        prog.skipped_steps, prog.restores, prog.lr_scale = kept
        self.saved_step = prog.step

    def resume(self, metrics_path: Path) -> bool:
        """Continue from the newest good checkpoint; False (a fresh start) when there is none at all."""
        found = find_resume_point(self.run_dir, self.identity, self.cfg, self.runtime.rank)
        prog = self.progress
        if found is not None:
            self.load_state_dict(found[1])
            self.saved_step = prog.step
            log.info("resumed from %s: step %d, %s tokens, %.1f s of budget already spent",
                     found[0], prog.step, f"{prog.tokens:,}", self.clock.elapsed())  # fmt: skip
        if self.runtime.rank == 0:  # metrics of steps about to be redone would be logged twice
            dropped = trim_metrics(metrics_path, prog.step)
            if dropped:
                log.info("dropped %d metrics records after step %d (redone now)", dropped, prog.step)
        return found is not None

    def restore_last_good(self, train_cfg: Mapping) -> None:
        """After too many non-finite steps in a row: reload the last good checkpoint with a lower LR."""
        prog = self.progress
        what = f"{prog.nonfinite_streak} non-finite steps in a row at step {prog.step}"
        if prog.restores >= int(train_cfg["max_nonfinite_restores"]):
            raise FloatingPointError(
                f"{what}, after {prog.restores} reloads (train.max_nonfinite_restores="
                f"{train_cfg['max_nonfinite_restores']}); stopping. Lower train.lr and resume."
            )
        found = self.find()
        if found is None:
            raise FloatingPointError(
                f"{what} and no checkpoint to go back to yet; stopping so no NaN weights are saved. "
                "Lower train.lr and start again."
            )
        self.rewind(found)
        prog.restores += 1
        prog.lr_scale *= float(train_cfg["nonfinite_lr_factor"])
        log.warning("reloaded %s (step %d) after non-finite steps; learning rate now x%g of the schedule",
                    found[0], prog.step, prog.lr_scale)  # fmt: skip

    def save(self, keep: int) -> Path | None:
        """A collective under DDP (rank states are gathered); only rank 0 writes. Never saves NaN weights."""
        step = self.progress.step
        if not all_finite(self.model.state_dict()):
            log.error(
                "step %d: the weights are not finite; checkpoint NOT saved (earlier ones are kept)", step
            )
            return None
        state, path = self.state_dict(), None
        if self.runtime.rank == 0:
            meta = {**self.identity, "budget": self.budget_text, "world_size": self.runtime.world_size}
            path = save_checkpoint(self.run_dir, state, keep=keep, meta={**meta, "config": self.cfg})
            log.info("checkpoint saved: %s (step %d)", path, step)
        distributed.barrier()  # the other ranks may read it at once (reload after non-finite steps)
        self.saved_step, self.last_save = step, time.monotonic()
        return path
