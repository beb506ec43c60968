"""Plain PyTorch GELU family: the test oracle, the CPU fallback and the benchmark baseline."""

import torch
import torch.nn.functional as F


def gelu_ref(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    return F.gelu(x, approximate=approximate)


def bias_gelu_ref(x: torch.Tensor, bias: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    return F.gelu(x + bias, approximate=approximate)


def geglu_ref(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """gelu(a) * b, where a and b are the first and second halves of the last dimension."""
    a, b = x.chunk(2, dim=-1)
    return F.gelu(a, approximate=approximate) * b
