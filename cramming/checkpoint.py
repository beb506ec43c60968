"""Training checkpoints: everything a resumed run needs, written atomically and checked on load.

A checkpoint is two files in ``RUN/checkpoints/``: ``step_<N>.pt`` (the ``torch.save`` payload) and
``step_<N>.json``, written after the payload, holding its size, sha256, step, architecture, tokenizer
hash and the run config. A payload without its JSON (killed in between), with another size or hash
(truncated, bit-flipped), or made for another architecture or tokenizer is refused with an error
naming the file, and :func:`load_latest` falls back to the previous good one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from cramming.export import _unwrap, atomic_write

log = logging.getLogger("cramming")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and why."""


def validate_train_resilience(train: Mapping) -> None:
    """Check the checkpoint and non-finite keys of ``cfg.train``; ValueError naming the bad value."""
    if train.get("on_nonfinite", "restore") not in ("restore", "stop"):
        raise ValueError(f"train.on_nonfinite={train['on_nonfinite']!r} is not one of ['restore', 'stop']")
    factor = float(train.get("nonfinite_lr_factor", 0.5))
    if not 0.0 < factor <= 1.0:
        raise ValueError(f"train.nonfinite_lr_factor={factor!r} must lie in (0, 1]")
    for key, low in [
        ("keep_checkpoints", 1),
        ("max_nonfinite_steps", 1),
        ("checkpoint_every_steps", 0),
        ("max_nonfinite_restores", 0),
        ("stop_after_steps", 0),
    ]:
        value = train.get(key, low)
        if int(value) != value or int(value) < low:
            raise ValueError(f"train.{key}={value!r} must be a whole number >= {low}")
    if float(train.get("checkpoint_minutes", 0)) < 0:
        raise ValueError(f"train.checkpoint_minutes={train['checkpoint_minutes']!r} must be >= 0 (0 = off)")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def sidecar(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def identity(arch: Mapping, vocab_size: int, tokenizer_json: str) -> dict:
    """What a checkpoint must share with the config that loads it."""
    return {
        "arch": dict(arch),
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


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


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
        return torch.load(path, map_location="cpu", weights_only=False)
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
    """True when every floating tensor in a (model) state dict is finite: never save NaN weights."""
    return all(
        bool(torch.isfinite(t).all()) for t in state.values() if torch.is_tensor(t) and t.is_floating_point()
    )


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
        elif a != b and key not in ("stop_after_steps", "debug_nan_steps"):
            drift.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return drift
