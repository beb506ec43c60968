"""The encoder every model shares: (B, T) token ids -> (B, T, H) hidden states, built from ``cfg.arch``.

Embeddings (learned, scaled-sinusoidal or no absolute positions), rotary positions and QK-norm in the
attention, the GELU-GLU or GELU feed-forward, pre- or post-LayerNorm blocks, and the weight init.
The layers call ``cramming.kernels.dispatch`` for LayerNorm, GELU and attention, so the Triton kernels plug in
without the model knowing which implementation runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from cramming.kernels import dispatch


class LayerNorm(nn.Module):
    def __init__(self, width: int, eps: float, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch.layer_norm(x, self.weight, self.bias, self.eps)

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(LN(x + residual), x + residual), fused into one pass by the Triton kernel."""
        return dispatch.layer_norm_residual(x, residual, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last dimension, in fp32 (QK-norm's per-head norm)."""

    def __init__(self, width: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


class ScaledSinusoidal(nn.Module):
    """Fixed sinusoidal positions times one learned scalar (crammed-BERT)."""

    def __init__(self, width: int, max_len: int):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, width, 2) * (-math.log(10000.0) / width))
        table = torch.zeros(max_len, width)
        table[:, 0::2] = torch.sin(position * div_term)
        table[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("table", table, persistent=False)
        self.scale = nn.Parameter(torch.tensor(1.0 / math.sqrt(width)))

    def forward(self, seq_len: int) -> torch.Tensor:
        return self.table[:seq_len] * self.scale  # (T, H)


class Rotary(nn.Module):
    """Rotary position embeddings (Su et al. 2021) on q and k: the score of a query and a key then
    depends on their offset only. GPT-NeoX/Llama layout: feature i pairs with feature i + D/2.

    The cos/sin tables are non-persistent buffers (rebuilt from the arch, never in a checkpoint),
    sliced to the static sequence length, so the compiled graph has no data-dependent shape.
    """

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary position embeddings need an even head dimension, not {head_dim}")
        inverse = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (D/2,)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inverse)  # (T, D/2)
        angles = torch.cat([angles, angles], dim=-1)  # (T, D)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, T, D) -> the same, each position t rotated by its angles; computed in fp32."""
        T, half = x.shape[-2], x.shape[-1] // 2
        first, second = x.float().split(half, dim=-1)
        rotated = torch.cat([-second, first], dim=-1)  # (B, H, T, D)
        return (x.float() * self.cos[:T] + rotated * self.sin[:T]).to(x.dtype)


class LearnedPositions(nn.Module):
    def __init__(self, width: int, max_len: int):
        super().__init__()
        self.embedding = nn.Embedding(max_len, width)

    def forward(self, seq_len: int) -> torch.Tensor:
        return self.embedding.weight[:seq_len]  # (T, H)


class Embeddings(nn.Module):
    def __init__(self, arch: Mapping, vocab_size: int):
        super().__init__()
        width, max_len = arch["hidden_size"], arch["max_position_embeddings"]
        self.max_len = max_len
        self.word = nn.Embedding(vocab_size, width)
        if arch["position_embedding"] == "scaled-sinusoidal":
            self.position = ScaledSinusoidal(width, max_len)
        elif arch["position_embedding"] == "rotary":
            self.position = None  # positions enter in the attention (SelfAttention.rotary)
        else:
            self.position = LearnedPositions(width, max_len)
        types = arch.get("type_vocab_size", 0)
        self.token_type = nn.Embedding(types, width) if types > 0 else None
        self.norm = LayerNorm(width, arch["norm_eps"], arch["norm_bias"]) if arch["embedding_norm"] else None
        self.dropout = nn.Dropout(arch["dropout"])

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        if seq_len > self.max_len:
            raise ValueError(f"sequence length {seq_len} exceeds max_position_embeddings={self.max_len}")
        x = self.word(input_ids)  # (B, T, H)
        if self.position is not None:
            x = x + self.position(seq_len)
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type(token_type_ids)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


class SelfAttention(nn.Module):
    def __init__(self, arch: Mapping):
        super().__init__()
        width, self.num_heads = arch["hidden_size"], arch["num_heads"]
        if width % self.num_heads:
            raise ValueError(f"hidden_size={width} is not divisible by num_heads={self.num_heads}")
        self.qkv = nn.Linear(width, 3 * width, bias=arch["linear_bias"])
        self.out = nn.Linear(width, width, bias=arch["linear_bias"])
        self.attention_dropout = arch["attention_dropout"]
        head_dim = width // self.num_heads
        # QK-norm: RMSNorm of each head's query and key (weights of size D shared by the heads)
        self.q_norm = RMSNorm(head_dim) if arch.get("qk_norm", False) else None
        self.k_norm = RMSNorm(head_dim) if arch.get("qk_norm", False) else None
        rotary = arch["position_embedding"] == "rotary"
        self.rotary = Rotary(head_dim, arch["max_position_embeddings"]) if rotary else None

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:  # before the attention call, so every kernel sees rotated q, k
            q, k = self.rotary(q), self.rotary(k)
        dropout_p = self.attention_dropout if self.training else 0.0
        y = dispatch.attention(q, k, v, key_padding_mask=key_padding_mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, H*D)
        return self.out(y)


class FeedForward(nn.Module):
    """GELU-GLU (input projection split in two halves) or a plain GELU MLP."""

    def __init__(self, arch: Mapping):
        super().__init__()
        width, inner = arch["hidden_size"], arch["intermediate_size"]
        self.glu = arch["ffn"] == "glu"
        self.approximate = "tanh" if arch["activation"] == "gelu_tanh" else "none"
        self.inp = nn.Linear(width, inner, bias=arch["linear_bias"])
        self.out = nn.Linear(inner // 2 if self.glu else inner, width, bias=arch["linear_bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = dispatch.geglu(h, self.approximate) if self.glu else dispatch.gelu(h, self.approximate)
        return self.out(h)


class Block(nn.Module):
    def __init__(self, arch: Mapping):
        super().__init__()
        width, eps, bias = arch["hidden_size"], arch["norm_eps"], arch["norm_bias"]
        self.pre_norm = arch["norm_position"] == "pre"
        self.norm1 = LayerNorm(width, eps, bias)
        self.norm2 = LayerNorm(width, eps, bias)
        self.attn = SelfAttention(arch)
        self.ffn = FeedForward(arch)
        self.dropout = nn.Dropout(arch["dropout"])

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        if self.pre_norm:
            attended = self.dropout(self.attn(self.norm1(x), key_padding_mask))
            normed, x = self.norm2.add_and_norm(attended, x)  # the residual add fused into the norm
            return x + self.dropout(self.ffn(normed))
        x = self.norm1(x + self.dropout(self.attn(x, key_padding_mask)))
        return self.norm2(x + self.dropout(self.ffn(x)))


class Encoder(nn.Module):
    """Embeddings, the transformer blocks and the optional final norm: (B, T) ids -> (B, T, H)."""

    def __init__(self, arch: Mapping, vocab_size: int):
        super().__init__()
        self.embeddings = Embeddings(arch, vocab_size)
        self.blocks = nn.ModuleList(Block(arch) for _ in range(arch["num_layers"]))
        width = arch["hidden_size"]
        self.final_norm = (
            LayerNorm(width, arch["norm_eps"], arch["norm_bias"]) if arch["final_norm"] else None
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # (B, T), True for real tokens; packed pretraining passes None and attends everywhere
        key_padding_mask = attention_mask.bool() if attention_mask is not None else None
        x = self.embeddings(input_ids, token_type_ids)
        for block in self.blocks:
            x = block(x, key_padding_mask)
        return self.final_norm(x) if self.final_norm is not None else x


def init_weights(module: nn.Module, std: float) -> None:
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, mean=0.0, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, mean=0.0, std=std)


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
