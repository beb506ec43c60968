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

    key_padding_mask is (B, T) bool, True where the key is real. Query rows whose keys
    are all masked give zeros (SDPA alone would give NaN there).
    """
    attn_mask = None
    if key_padding_mask is not None:
        attn_mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, T)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    if key_padding_mask is not None:
        any_key = key_padding_mask.any(dim=-1)[:, None, None, None]  # (B, 1, 1, 1)
        out = torch.where(any_key, out, torch.zeros_like(out))
    return out
