"""AdamW with the recipe's parameter groups: no weight decay on norms, biases and scalars."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    seen: set[int] = set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))  # the tied decoder shares the embedding matrix
        # Vectors and scalars are norm weights, biases and the position scale.
        (no_decay if param.ndim < 2 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: torch.nn.Module, train: Mapping, device: torch.device) -> torch.optim.Optimizer:
    """AdamW from ``cfg.train``; the fused implementation on GPU, foreach on CPU."""
    if train["optimizer"] != "adamw":
        raise ValueError(f"train.optimizer={train['optimizer']!r} is not supported; accepted: ['adamw']")
    fused = device.type == "cuda"
    return torch.optim.AdamW(
        param_groups(model, float(train["weight_decay"])),
        lr=float(train["lr"]),
        betas=tuple(float(b) for b in train["betas"]),
        eps=float(train["eps"]),
        fused=fused or None,
        foreach=None if fused else True,
    )
