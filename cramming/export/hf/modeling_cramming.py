"""crammed-BERT for Hugging Face ``transformers`` (remote code), in plain PyTorch.

Copied next to the weights by ``python -m cramming.export``; it imports nothing from
``cramming``, so ``AutoModel.from_pretrained(path, trust_remote_code=True)`` works without
the package. The module and parameter names match cramming's, so the weights load as they
are: pre-LayerNorm blocks without linear biases, a GELU-GLU feed-forward, scaled sinusoidal
positions, a final LayerNorm, and a decoder tied to the word embeddings (crammed-BERT), or any other
``arch`` cramming builds (post-LN, learned positions, biases, BERT's prediction head). A recipe=bert /
roberta model adds the decoder's output bias (``config.decoder_bias``) and, when trained with NSP,
BERT's pooler and next-sentence head (``config.nsp``): ``CrammingForPreTraining`` gives both logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput
from transformers.utils import ModelOutput

from .configuration_cramming import CrammingConfig

_TRANSFORMERS_V5 = int(transformers.__version__.split(".")[0]) >= 5


class LayerNorm(nn.Module):
    def __init__(self, width: int, eps: float, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last dimension, in fp32 (QK-norm's per-head norm)."""

    def __init__(self, width: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


class Rotary(nn.Module):
    """Rotary position embeddings on q and k (GPT-NeoX layout: feature i pairs with i + D/2), fp32."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        self.head_dim, self.max_len, self.base = head_dim, max_len, base
        cos, sin = self.tables()
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (T, D); recomputed by _init_weights (transformers may build on meta)."""
        inverse = self.base ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim)
        angles = torch.outer(torch.arange(self.max_len, dtype=torch.float64), inverse)  # (T, D/2)
        angles = torch.cat([angles, angles], dim=-1)  # (T, D)
        return angles.cos().float(), angles.sin().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, half = x.shape[-2], x.shape[-1] // 2
        first, second = x.float().split(half, dim=-1)
        rotated = torch.cat([-second, first], dim=-1)  # (B, H, T, D)
        return (x.float() * self.cos[:T] + rotated * self.sin[:T]).to(x.dtype)


def sinusoid_table(width: int, max_len: int) -> torch.Tensor:
    position = torch.arange(max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, width, 2) * (-math.log(10000.0) / width))
    table = torch.zeros(max_len, width)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)
    return table  # (T, H)


class ScaledSinusoidal(nn.Module):
    """Fixed sinusoidal positions times one learned scalar."""

    def __init__(self, width: int, max_len: int):
        super().__init__()
        self.register_buffer("table", sinusoid_table(width, max_len), persistent=False)
        self.scale = nn.Parameter(torch.tensor(1.0 / math.sqrt(width)))

    def forward(self, seq_len: int) -> torch.Tensor:
        return self.table[:seq_len] * self.scale  # (T, H)


class LearnedPositions(nn.Module):
    def __init__(self, width: int, max_len: int):
        super().__init__()
        self.embedding = nn.Embedding(max_len, width)

    def forward(self, seq_len: int) -> torch.Tensor:
        return self.embedding.weight[:seq_len]  # (T, H)


class Embeddings(nn.Module):
    def __init__(self, arch: dict, vocab_size: int):
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

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
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
    def __init__(self, arch: dict):
        super().__init__()
        width, self.num_heads = arch["hidden_size"], arch["num_heads"]
        self.qkv = nn.Linear(width, 3 * width, bias=arch["linear_bias"])
        self.out = nn.Linear(width, width, bias=arch["linear_bias"])
        self.attention_dropout = arch["attention_dropout"]
        head_dim = width // self.num_heads
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
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        mask = key_padding_mask[:, None, None, :] if key_padding_mask is not None else None  # (B, 1, 1, T)
        dropout_p = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        if key_padding_mask is not None:
            # Rows with no real key at all give zeros (SDPA alone gives NaN there).
            y = torch.where(key_padding_mask.any(-1)[:, None, None, None], y, torch.zeros_like(y))
        return self.out(y.transpose(1, 2).reshape(B, T, C))  # (B, T, H*D) -> (B, T, C)


class FeedForward(nn.Module):
    """GELU-GLU (input projection split in two halves) or a plain GELU MLP."""

    def __init__(self, arch: dict):
        super().__init__()
        width, inner = arch["hidden_size"], arch["intermediate_size"]
        self.glu = arch["ffn"] == "glu"
        self.approximate = "tanh" if arch["activation"] == "gelu_tanh" else "none"
        self.inp = nn.Linear(width, inner, bias=arch["linear_bias"])
        self.out = nn.Linear(inner // 2 if self.glu else inner, width, bias=arch["linear_bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        if self.glu:
            a, b = h.chunk(2, dim=-1)
            h = F.gelu(a, approximate=self.approximate) * b
        else:
            h = F.gelu(h, approximate=self.approximate)
        return self.out(h)


class Block(nn.Module):
    def __init__(self, arch: dict):
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
            x = x + self.dropout(self.attn(self.norm1(x), key_padding_mask))
            return x + self.dropout(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.dropout(self.attn(x, key_padding_mask)))
        return self.norm2(x + self.dropout(self.ffn(x)))


class CrammingPreTrainedModel(PreTrainedModel):
    config_class = CrammingConfig
    base_model_prefix = "encoder"

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.arch["init_std"]
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, ScaledSinusoidal):
            module.table.copy_(sinusoid_table(*module.table.shape[::-1]))
            nn.init.constant_(module.scale, 1.0 / math.sqrt(module.table.shape[1]))
        elif isinstance(module, Rotary):
            cos, sin = module.tables()
            module.cos.copy_(cos)
            module.sin.copy_(sin)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class CrammingModel(CrammingPreTrainedModel):
    """The encoder: (B, T) token ids -> (B, T, H) hidden states."""

    def __init__(self, config: CrammingConfig):
        super().__init__(config)
        arch = config.arch
        self.embeddings = Embeddings(arch, config.vocab_size)
        self.blocks = nn.ModuleList(Block(arch) for _ in range(arch["num_layers"]))
        width = arch["hidden_size"]
        self.final_norm = (
            LayerNorm(width, arch["norm_eps"], arch["norm_bias"]) if arch["final_norm"] else None
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput | tuple:
        key_padding_mask = attention_mask.bool() if attention_mask is not None else None  # (B, T)
        x = self.embeddings(input_ids, token_type_ids)
        for block in self.blocks:
            x = block(x, key_padding_mask)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if return_dict is False:
            return (x,)
        return BaseModelOutput(last_hidden_state=x)


class PredictionHead(nn.Module):
    """BERT's dense + GELU + norm transform before the decoder (bert-base shape only)."""

    def __init__(self, arch: dict):
        super().__init__()
        width = arch["hidden_size"]
        self.dense = nn.Linear(width, width, bias=arch["linear_bias"])
        self.norm = LayerNorm(width, arch["norm_eps"], arch["norm_bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(x)))


class CrammingForMaskedLM(CrammingPreTrainedModel):
    """The encoder plus the MLM decoder: (B, T) ids -> (B, T, V) logits.

    With ``config.decoder_bias`` (recipe=bert / roberta) the decoder adds its own output bias; with
    ``config.nsp`` the pooler and next-sentence head are held too (their weights load, and
    ``CrammingForPreTraining`` uses them), so no weight of the export is left behind.
    """

    if _TRANSFORMERS_V5:
        _tied_weights_keys = {"decoder.weight": "encoder.embeddings.word.weight"}
    else:
        _tied_weights_keys = ["decoder.weight"]

    def __init__(self, config: CrammingConfig):
        super().__init__(config)
        width = config.arch["hidden_size"]
        self.encoder = CrammingModel(config)
        self.head = PredictionHead(config.arch) if config.arch["prediction_head"] else None
        self.decoder = nn.Linear(width, config.vocab_size, bias=False)
        self.decoder_bias = nn.Parameter(torch.zeros(config.vocab_size)) if config.decoder_bias else None
        self.pooler = nn.Linear(width, width) if config.nsp else None
        self.nsp_head = nn.Linear(width, 2) if config.nsp else None
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.decoder = value

    def decode(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.head is not None:
            hidden = self.head(hidden)
        logits = self.decoder(hidden)  # (B, T, V)
        return logits + self.decoder_bias if self.decoder_bias is not None else logits

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MaskedLMOutput | tuple:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, H)
        logits = self.decode(hidden)  # (B, T, V)
        loss = None
        if labels is not None:  # -100 marks positions without a target
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1))
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=None)


@dataclass
class CrammingForPreTrainingOutput(ModelOutput):
    """transformers' BertForPreTraining names: MLM ``prediction_logits`` (B, T, V), NSP
    ``seq_relationship_logits`` (B, 2) (None without an NSP head); ``logits`` is the MLM logits again."""

    loss: torch.Tensor | None = None
    prediction_logits: torch.Tensor | None = None
    seq_relationship_logits: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class CrammingForPreTraining(CrammingForMaskedLM):
    """MLM logits and, for a model trained with NSP, BERT's next-sentence logits (pooler on the first token)."""

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CrammingForPreTrainingOutput | tuple:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, H)
        logits = self.decode(hidden)  # (B, T, V)
        nsp = self.nsp_head(torch.tanh(self.pooler(hidden[:, 0]))) if self.nsp_head is not None else None
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1))
            if nsp is not None and next_sentence_label is not None:
                loss = loss + F.cross_entropy(nsp.float(), next_sentence_label.view(-1))
        if return_dict is False:
            return tuple(t for t in (loss, logits, nsp) if t is not None)
        return CrammingForPreTrainingOutput(
            loss=loss, prediction_logits=logits, seq_relationship_logits=nsp, logits=logits
        )


class CrammingForSequenceClassification(CrammingPreTrainedModel):
    """The encoder plus a head on the first token's vector; regression when num_labels == 1.

    ``arch["classifier_head"]``: ``crammed`` Linear(H, 1024) -> tanh -> dropout -> Linear (the
    reference's), ``bert`` the same with width H (BERT's pooler), ``gelu`` dropout -> Linear(H, H) ->
    GELU -> dropout -> Linear (exports from before the key existed, which lack it).
    """

    def __init__(self, config: CrammingConfig):
        super().__init__(config)
        width = config.arch["hidden_size"]
        self.num_labels = config.num_labels
        self.head = config.arch.get("classifier_head", "gelu")
        if self.head not in ("crammed", "bert", "gelu"):
            raise ValueError(f"classifier_head={self.head!r} is not one of ['crammed', 'bert', 'gelu']")
        inner = 1024 if self.head == "crammed" else width
        self.encoder = CrammingModel(config)
        self.pooler = nn.Linear(width, inner)
        self.dropout = nn.Dropout(config.arch["dropout"])
        self.classifier = nn.Linear(inner, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, H)
        first = hidden[:, 0]  # the first token's vector
        if self.head == "gelu":
            pooled = self.dropout(F.gelu(self.pooler(self.dropout(first))))
        else:
            pooled = self.dropout(torch.tanh(self.pooler(first)))
        logits = self.classifier(pooled)  # (B, num_labels)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels.view(-1))
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return SequenceClassifierOutput(loss=loss, logits=logits)
