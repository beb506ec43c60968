"""The one AdamW builder: pretraining, fine-tuning and the benchmarks all get their optimizer here.

``train.optimizer=muon`` (pretraining only) gives Muon for the hidden matrices and this AdamW for the
rest, stepped as one optimizer (``cramming.muon``); fine-tuning always takes AdamW.

Parameter groups follow the recipe: weight decay on matrices only, none on norms, biases and
scalars; a tied weight (the decoder sharing the embedding matrix) appears once. The
implementation is the fastest correct one for the device: fused on GPU and on CPU too, where
one fused pass over parameter, gradient and both moments beats the ~10 multi-tensor (foreach)
passes (``benchmarks/bench_optim.py`` measures both; ``tests/test_optim.py`` checks they agree).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from cramming.muon import MuonAdamW, build_muon_adamw, muon_settings

IMPLEMENTATIONS = ("fused", "foreach")
OPTIMIZERS = ("adamw", "muon")


def param_groups(model: torch.nn.Module | Iterable[torch.Tensor], weight_decay: float) -> list[dict]:
    """[matrices with ``weight_decay``, vectors and scalars without]; each parameter once.

    ``model``: a module, or the parameters themselves (Muon's recipe gives AdamW only some).
    """
    decay, no_decay = [], []
    seen: set[int] = set()
    params = model.parameters() if isinstance(model, torch.nn.Module) else model
    for param in params:
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
    model: torch.nn.Module | Iterable[torch.Tensor],
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


def check_optimizer(train: Mapping) -> None:
    """A ValueError naming a bad ``train.optimizer`` or ``train.muon.*`` value."""
    if train["optimizer"] not in OPTIMIZERS:
        raise ValueError(
            f"train.optimizer={train['optimizer']!r} is not supported; accepted: {list(OPTIMIZERS)}"
        )
    if train["optimizer"] == "muon":
        muon_settings(train)


def build_optimizer(
    model: torch.nn.Module, train: Mapping, device: torch.device, implementation: str | None = None
) -> torch.optim.AdamW | MuonAdamW:
    """Pretraining's optimizer from ``cfg.train`` (optimizer, lr, betas, eps, weight_decay, muon)."""
    check_optimizer(train)

    def adamw(params) -> torch.optim.AdamW:
        return build_adamw(
            params,
            lr=train["lr"],
            betas=tuple(train["betas"]),
            eps=train["eps"],
            weight_decay=train["weight_decay"],
            device=device,
            implementation=implementation,
        )

    if train["optimizer"] == "muon":
        return build_muon_adamw(model, train, adamw)
    return adamw(model)


def implementation_of(optimizer: torch.optim.Optimizer) -> str:
    """Which AdamW implementation an optimizer runs (for benchmark and log records)."""
    group = optimizer.param_groups[0]
    return "fused" if group.get("fused") else "foreach" if group.get("foreach") else "for-loop"
