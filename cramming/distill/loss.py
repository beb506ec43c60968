"""The distillation loss: ``Distiller`` wraps the student and a frozen teacher; its forward returns the loss dict.

So the unchanged pretraining loop trains it (cramming.distill.objective hands it over). The teacher is
deliberately NOT a registered submodule: its weights stay out of the optimizer, the gradients, DDP and
checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from cramming.models import IGNORE_INDEX, BertForMLM, Encoder


# -- the loss ------------------------------------------------------------------------------------------
def encode(encoder: Encoder, input_ids, attention_mask=None, token_type_ids=None, keep_blocks=False):
    """(final hidden states, [each block's output] when ``keep_blocks``): Encoder.forward, keeping the layers."""
    key_padding_mask = attention_mask.bool() if attention_mask is not None else None
    x, blocks = encoder.embeddings(input_ids, token_type_ids), []
    for block in encoder.blocks:
        x = block(x, key_padding_mask)
        if keep_blocks:
            blocks.append(x)
    final = encoder.final_norm(x) if encoder.final_norm is not None else x
    return final, blocks


def soft_target_loss(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), mean over positions (DistilBERT's batchmean)."""
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True)
    return kl / max(1, student_logits.shape[0]) * t * t


def cosine_loss(student_hidden, teacher_hidden) -> torch.Tensor:
    """Mean of 1 - cos between (N, H) rows: CosineEmbeddingLoss with target 1."""
    return (1.0 - F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)).mean()


class Distiller(nn.Module):
    """Student + frozen teacher; forward(input_ids, labels) -> {loss, mlm_loss, kl_loss, cosine_loss}.

    ``soft_targets``: the KL at the masked positions ('masked', the default: the student's decoder then
    runs only where sparse prediction runs it anyway, and those are the positions the teacher's MLM
    head was trained on; at unmasked ones its prediction is mostly a copy of the input token) or at all
    non-padding positions ('all', the released DistilBERT's default; decodes B·T rows of V logits twice).
    ``cosine_layers``: 'last' (the final hidden states) or 'aligned' (also every student block against
    the teacher block it was copied from, averaged). The teacher runs under the caller's autocast.
    """

    def __init__(self, student: BertForMLM, teacher: BertForMLM, cfg: Mapping, pad_id: int | None = None):
        super().__init__()
        self.student = student
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False)  # not a submodule: see the docstring
        self.alpha_ce, self.alpha_mlm = float(cfg["alpha_ce"]), float(cfg["alpha_mlm"])
        self.alpha_cos, self.temperature = float(cfg["alpha_cos"]), float(cfg["temperature"])
        self.soft_targets, self.cosine_layers = cfg["soft_targets"], cfg["cosine_layers"]
        self.pad_id = pad_id
        self.pairs = list(enumerate(getattr(student, "teacher_layers", range(len(student.encoder.blocks)))))

    @property
    def arch(self) -> dict:
        return self.student.arch

    @property
    def vocab_size(self) -> int:
        return self.student.vocab_size

    def forward(
        self, input_ids, labels, masked_positions=None, attention_mask=None, token_type_ids=None
    ) -> dict[str, torch.Tensor]:
        if masked_positions is not None:  # the collator's (B, k) slots: spread back to (B, T) labels
            full = torch.full_like(input_ids, IGNORE_INDEX)
            labels = full.scatter(1, masked_positions, labels)  # spare slots sit on specials, label -100
        aligned = self.cosine_layers == "aligned"
        s_final, s_blocks = encode(self.student.encoder, input_ids, attention_mask, token_type_ids, aligned)
        with torch.no_grad():
            t_final, t_blocks = encode(
                self.teacher.encoder, input_ids, attention_mask, token_type_ids, aligned
            )
        flat_labels = labels.reshape(-1)
        masked = flat_labels != IGNORE_INDEX  # (B*T,) the sparse-prediction positions
        real = self.real_positions(input_ids, attention_mask)  # (B*T,) non-padding
        width = s_final.shape[-1]
        s_flat, t_flat = s_final.reshape(-1, width), t_final.reshape(-1, width)
        where = masked if self.soft_targets == "masked" else real
        s_logits = self.student.decode(s_flat[where])
        with torch.no_grad():
            t_logits = self.teacher.decode(t_flat[where])
        kl = soft_target_loss(s_logits, t_logits, self.temperature)
        mlm_logits = s_logits if self.soft_targets == "masked" else s_logits[masked[where]]
        mlm = F.cross_entropy(mlm_logits.float(), flat_labels[masked])
        cos = cosine_loss(s_flat[real], t_flat[real])
        if aligned:
            terms = [
                cosine_loss(s_blocks[i].reshape(-1, width)[real], t_blocks[j].reshape(-1, width)[real])
                for i, j in self.pairs
            ]
            cos = (cos + sum(terms)) / (1 + len(terms))
        loss = self.alpha_ce * kl + self.alpha_mlm * mlm + self.alpha_cos * cos
        return {"loss": loss, "mlm_loss": mlm.detach(), "kl_loss": kl.detach(), "cosine_loss": cos.detach()}

    def real_positions(self, input_ids, attention_mask) -> torch.Tensor:
        if attention_mask is not None:
            return attention_mask.reshape(-1).bool()
        if self.pad_id is None:
            return torch.ones(input_ids.numel(), dtype=torch.bool, device=input_ids.device)
        return input_ids.reshape(-1) != self.pad_id
