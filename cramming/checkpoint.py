"""Training checkpoints: everything a resumed run needs, written atomically."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cramming.export import _unwrap, atomic_write

log = logging.getLogger("cramming")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: Path, state: dict, keep: int = 2) -> Path:
    """Write checkpoints/step_<N>.pt atomically and keep the newest ``keep``."""
    folder = checkpoint_dir(run_dir)
    path = folder / f"step_{state['step']:08d}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    for old in sorted(folder.glob("step_*.pt"))[:-keep]:
        old.unlink()
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(checkpoint_dir(run_dir).glob("step_*.pt"))
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"checkpoint {path} cannot be read ({err}); it may be truncated or corrupt") from err


def model_state(model: torch.nn.Module) -> dict:
    """State dict of the unwrapped module: no `_orig_mod.` or `module.` prefixes."""
    return _unwrap(model).state_dict()
