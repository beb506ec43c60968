"""One optimizer step (accumulate, clip, step), shared by pretraining and fine-tuning.

The step reads the device back once: loss, grad norm and the side metrics travel to the host in one
transfer, and the skip-on-non-finite decision and the log line use those Python floats. On a GPU every
other read (``float(t)``, ``bool(t)``, ``t.item()``) would stall the queue of kernels the host has run
ahead with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from cramming import distributed

# Mean over microbatches, reported beside the loss: BERT/RoBERTa's parts, then distillation's.
SIDE_METRICS = ("mlm_loss", "nsp_loss", "nsp_accuracy", "kl_loss", "cosine_loss")


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A collated microbatch on ``device``; pinned host memory first on CUDA (the prefetch thread
    already pins), so the copy is asynchronous."""
    pin = device.type == "cuda"
    return {
        name: (t.pin_memory() if pin and not t.is_pinned() else t).to(device, non_blocking=True)
        for name, t in batch.items()
    }


def optimizer_step(
    model: torch.nn.Module,
    optimizer,
    next_microbatch: Callable[[], Mapping],
    accum: int,
    lr: float | None,
    grad_clip: float,
    runtime,
    stop: Callable[[], bool] | None = None,
    scaler=None,
    inject_nan: bool = False,
    extras: dict | None = None,
) -> tuple[float, float, bool] | None:
    """Accumulate gradients over ``accum`` microbatches and step; returns (mean loss, grad norm, finite).

    ``next_microbatch()`` returns the model's keyword arguments (``input_ids``, ``labels``, and whatever
    else the model takes, e.g. ``class_weights``). ``lr``: set on every param group; None leaves the
    groups' lr alone (a scheduler sets it). ``grad_clip`` <= 0: no clipping (the norm is still measured).
    Under DDP the gradients are all-reduced only on the last microbatch (``no_sync`` for the others),
    and the returned loss is the mean over all ranks. ``scaler``: the fp16 GradScaler or None (a
    disabled one is a pass-through). ``inject_nan`` poisons the first microbatch's loss (a testing aid).
    ``extras`` (optional) receives the mean over microbatches of the model's side metrics (``mlm_loss``,
    ``nsp_loss``, ``nsp_accuracy``, distillation's ``kl_loss``, ``cosine_loss``) as floats.
    The update is skipped when the loss or the gradients are not finite. Returns None when ``stop()``
    turned true between microbatches: the partial step is dropped, so a long accumulation cannot
    overshoot the budget by more than one microbatch.
    """
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    summed = accumulate(model, next_microbatch, accum, runtime, stop, scaler, inject_nan)
    if summed is None:
        optimizer.zero_grad(set_to_none=True)
        return None
    total, side = summed
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = clip_gradients(model, grad_clip)
    # Only a runtime of several ranks averages: GLUE after a torchrun pretraining fine-tunes on rank 0
    # alone (its runtime says world_size=1) while the group is still up; an all-reduce there would hang.
    mean_loss = distributed.mean_across_ranks(total / accum) if runtime.world_size > 1 else total / accum
    loss_value, norm, *values = read_back(mean_loss, grad_norm, *side.values())
    finite = math.isfinite(loss_value) and math.isfinite(norm)
    if finite:
        # Not scaler.step: it would read its inf flag back again; finite gradients mean it found none.
        optimizer.step()
    if scaler is not None:
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if extras is not None:
        extras.update(zip(side, values))
    return loss_value, norm, finite


def accumulate(model, next_microbatch, accum: int, runtime, stop, scaler, inject_nan: bool):
    """Forward and backward over ``accum`` microbatches: (summed loss, side metrics' means), device
    scalars both; None when ``stop()`` turned true between microbatches."""
    total = torch.zeros((), device=runtime.device)
    side: dict[str, torch.Tensor] = {}  # summed on the device; read back with the loss
    for index in range(accum):
        if index > 0 and stop is not None and stop():
            return None
        batch = next_microbatch()  # the model's keyword arguments
        with distributed.sync_context(model, last_microstep=index == accum - 1):
            with runtime.autocast():
                out = model(**batch)
                loss = out["loss"]
            for key in SIDE_METRICS:
                if key in out:
                    side[key] = side.get(key, 0.0) + out[key].detach().float() / accum
            if inject_nan and index == 0:
                loss = loss * float("nan")
            scaled = loss / accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total += loss.detach()
    return total, side


def clip_gradients(model: torch.nn.Module, grad_clip: float) -> torch.Tensor:
    """The total gradient norm (a device scalar), clipped to ``grad_clip`` when > 0; no host read."""
    params = [p for p in model.parameters() if p.grad is not None]
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def read_back(*scalars: torch.Tensor) -> list[float]:
    """Device scalars as Python floats, in one device->host transfer."""
    device = scalars[0].device
    return torch.stack([s.float().reshape(()).to(device) for s in scalars]).tolist()
