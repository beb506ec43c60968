"""Plain PyTorch LayerNorm: the test oracle, the CPU fallback and the benchmark baseline."""

import torch
import torch.nn.functional as F


def layer_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, eps: float = 1e-12
) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def layer_norm_residual_ref(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    eps: float = 1e-12,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (LN(x + residual), x + residual)."""
    summed = x + residual
    return layer_norm_ref(summed, weight, bias, eps), summed
