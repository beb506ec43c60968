"""The one AdamW builder: pretraining, fine-tuning and the benchmarks all get their optimizer here.

Parameter groups follow the recipe: weight decay on matrices only, none on norms, biases and
scalars; a tied weight (the decoder sharing the embedding matrix) appears once. The
implementation is the fastest correct one for the device: fused on GPU and on CPU too, where
one fused pass over parameter, gradient and both moments beats the ~10 multi-tensor (foreach)
passes (``benchmarks/bench_optim.py`` measures both; ``tests/test_optim.py`` checks they agree).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

IMPLEMENTATIONS = ("fused", "foreach")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """[matrices with ``weight_decay``, vectors and scalars without]; each parameter once."""
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


def adamw_implementation(device: torch.device) -> str:
    """``fused`` on every device torch has a fused AdamW for (CUDA and CPU), else ``foreach``."""
    return "fused" if torch.device(device).type in ("cuda", "cpu") else "foreach"


def build_adamw(
    model: torch.nn.Module,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    device: torch.device,
    implementation: str | None = None,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups(model)``; ``implementation`` (fused | foreach) defaults per device."""
    implementation = implementation or adamw_implementation(device)
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"AdamW implementation {implementation!r} is not one of {list(IMPLEMENTATIONS)}")
    fused = implementation == "fused"
    return torch.optim.AdamW(
        param_groups(model, float(weight_decay)),
        lr=float(lr),
        betas=(float(betas[0]), float(betas[1])),
        eps=float(eps),
        fused=fused or None,
        foreach=None if fused else True,
    )


def build_optimizer(
    model: torch.nn.Module, train: Mapping, device: torch.device, implementation: str | None = None
) -> torch.optim.AdamW:
    """Pretraining's optimizer from ``cfg.train`` (optimizer, lr, betas, eps, weight_decay)."""
    if train["optimizer"] != "adamw":
        raise ValueError(f"train.optimizer={train['optimizer']!r} is not supported; accepted: ['adamw']")
    return build_adamw(
        model,
        lr=train["lr"],
        betas=tuple(train["betas"]),
        eps=train["eps"],
        weight_decay=train["weight_decay"],
        device=device,
        implementation=implementation,
    )


def implementation_of(optimizer: torch.optim.Optimizer) -> str:
    """Which AdamW implementation an optimizer runs (for benchmark and log records)."""
    group = optimizer.param_groups[0]
    return "fused" if group.get("fused") else "foreach" if group.get("foreach") else "for-loop"
