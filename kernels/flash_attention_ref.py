"""Plain PyTorch attention: the test oracle, the CPU fallback and the benchmark baseline."""

import torch
import torch.nn.functional as F


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Bidirectional attention on (B, H, T, D) tensors.

    key_padding_mask is (B, T) bool, True where the key is real. Every query row (padded ones too)
    attends to the real keys of its sequence. Query rows whose keys are all masked give zeros and
    zero gradients (SDPA alone gives NaN there on some backends).
    """
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    any_key = key_padding_mask.any(dim=-1, keepdim=True)  # (B, 1)
    # a sequence without real keys attends to all of them (finite everywhere), then is zeroed below,
    # so no backend sees an all-masked softmax row and the backward stays finite
    safe_mask = key_padding_mask | ~any_key  # (B, T)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=safe_mask[:, None, None, :], dropout_p=dropout_p, scale=scale
    )  # (B, H, T, D)
    return torch.where(any_key[:, :, None, None], out, torch.zeros_like(out))
