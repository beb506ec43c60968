"""DistilBERT-style distillation: the student's shape and initialisation, and the three-part loss.

The student is a crammed-BERT MLM with fewer layers, initialised from the teacher (embeddings, the
chosen blocks, final norm and decoder). ``Distiller`` wraps the student and a frozen teacher; its forward
returns the distillation loss, so the unchanged pretraining loop trains it. The teacher is deliberately
NOT a registered submodule: its weights stay out of the optimizer, the gradients, DDP and checkpoints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tokenizers import Tokenizer

from cramming.export.folder import load_model, read_config, read_tokenizer
from cramming.models import IGNORE_INDEX, BertForMLM, Encoder

SOFT_TARGETS = ("masked", "all")
COSINE_LAYERS = ("last", "aligned")
RECIPES = ("crammed", "distilbert")

# distill.recipe=distilbert: the settings of the released DistilBERT code (transformers' research project
# `distillation`: train.py and distiller.py defaults) where this loop has them. Applied as command-line
# overrides placed before the user's own, so any of them can still be overridden.
DISTILBERT = {
    "distill.soft_targets": "all",  # KL at every non-padding position (no --restrict_ce_to_mask)
    "data.mlm_probability": 0.15,  # mlm_mask_prop, 80/10/10 (word_mask/word_rand/word_keep)
    "train.optimizer": "adamw",
    "train.lr": 5.0e-4,
    "train.betas": [0.9, 0.98],
    "train.eps": 1.0e-6,
    "train.weight_decay": 0.0,
    "train.grad_clip": 5.0,  # max_grad_norm
    "train.schedule": "budget-linear",  # get_linear_schedule_with_warmup
    "train.warmup_fraction": 0.05,  # warmup_prop
    "train.batch_ramp_fraction": 0.0,  # one batch size throughout (train.batch_size), no ramp
}


# -- the teacher ---------------------------------------------------------------------------------------
def check_teacher(path: str | Path) -> dict:
    """The teacher export's config.json; a ValueError naming what was found when it is no MLM export."""
    path = Path(str(path)).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"teacher={str(path)!r} is not a folder; pass a pretrained export folder such as outputs/RUN/model"
        )
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        raise ValueError(f"teacher={str(path)!r} is a run folder; pass its export: teacher={path / 'model'}")
    config = read_config(path)  # names the missing files of a non-export folder
    task = config.get("task", "mlm")
    if task != "mlm":
        found = {
            "classification": f"a fine-tuned classifier ({config.get('num_labels')} labels)",
            "pretraining": "a recipe=bert/roberta BertForPreTraining export",
        }.get(task, f"task={task!r}")
        raise ValueError(
            f"teacher={str(path)!r} is {found}, not a masked-language-model export (task 'mlm'); "
            f"distillation needs the soft MLM targets of a crammed pretraining export (outputs/RUN/model)"
        )
    return config


def load_teacher(path: str | Path, device: str | torch.device = "cpu") -> tuple[BertForMLM, Tokenizer]:
    """The teacher export (checked by ``check_teacher``) in eval mode, frozen, and its tokenizer."""
    check_teacher(path)
    path = Path(str(path)).expanduser()
    teacher = load_model(path, device)
    teacher.requires_grad_(False)
    return teacher.eval(), read_tokenizer(path)


def check_same_vocabulary(teacher_tok: Tokenizer, corpus_tok: Tokenizer, teacher: str) -> None:
    """The student predicts in the teacher's vocabulary: refuse a corpus tokenized any other way."""
    t, c = json.loads(teacher_tok.to_str()), json.loads(corpus_tok.to_str())
    for part, what in (
        ("model", "vocabulary"),
        ("normalizer", "normalizer"),
        ("pre_tokenizer", "pre-tokenizer"),
    ):
        if t.get(part) != c.get(part):
            raise ValueError(
                f"the prepared corpus was tokenized with another tokenizer than the teacher's (its {what} differs; "
                f"{corpus_tok.get_vocab_size()} tokens vs the teacher's {teacher_tok.get_vocab_size()}); the "
                f"student must share the teacher's vocabulary: leave data.tokenizer.path unset (the teacher's "
                f"{teacher}/tokenizer.json is then used) or point it there, and use no readymade corpus of "
                f"another tokenizer"
            )


# -- the student's shape and initialisation ---------------------------------------------------------------
def student_arch(teacher_arch: Mapping, num_layers: int | None, hidden_size: int | None) -> dict:
    """The teacher's arch with fewer layers (default half, at least 1); the width must stay the teacher's."""
    depth = int(teacher_arch["num_layers"])
    layers = max(1, depth // 2) if num_layers is None else num_layers
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers < depth:
        raise ValueError(
            f"student.num_layers={layers!r} must be a whole number from 1 to {depth - 1} "
            f"(fewer than the teacher's {depth} layers)"
        )
    width = int(teacher_arch["hidden_size"])
    if hidden_size is not None and hidden_size != width:
        raise ValueError(
            f"student.hidden_size={hidden_size!r} differs from the teacher's hidden_size={width}; the DistilBERT "
            f"initialisation copies the teacher's layers and the cosine loss compares hidden states, so the width "
            f"must match (no projection is implemented); leave student.hidden_size unset or set it to {width}"
        )
    name = f"{teacher_arch.get('name', 'teacher')}-student{layers}L"
    return {**dict(teacher_arch), "num_layers": layers, "name": name}


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Which teacher block initialises each student block: evenly spaced, first and last included.

    round(i * (L_t - 1) / (L_s - 1)), halves rounded up. For 12 -> 6 this is [0, 2, 4, 7, 9, 11], the
    layers of the released DistilBERT; for an odd depth, e.g. 5 -> 2, it is [0, 4]; 3 -> 2 gives [0, 2].
    A one-layer student takes block 0 (every other layer, starting at the first).
    """
    if not 1 <= student_layers < teacher_layers:
        raise ValueError(
            f"a student of {student_layers} layers cannot come from a {teacher_layers}-layer teacher"
        )
    if student_layers == 1:
        return [0]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [math.floor(i * step + 0.5) for i in range(student_layers)]


def init_student(teacher: BertForMLM, arch: Mapping) -> BertForMLM:
    """A student of ``arch`` holding copies of the teacher's embeddings, chosen blocks, final norm and head."""
    student = BertForMLM(arch, teacher.vocab_size)
    chosen = layer_map(len(teacher.encoder.blocks), int(arch["num_layers"]))
    src, dst = teacher.encoder, student.encoder
    dst.embeddings.load_state_dict(src.embeddings.state_dict())
    for i, j in enumerate(chosen):
        dst.blocks[i].load_state_dict(src.blocks[j].state_dict())
    if src.final_norm is not None:
        dst.final_norm.load_state_dict(src.final_norm.state_dict())
    if teacher.head is not None:
        student.head.load_state_dict(teacher.head.state_dict())
    if not arch["tie_embeddings"]:  # a tied decoder already shares the copied embedding matrix
        student.decoder.load_state_dict(teacher.decoder.state_dict())
    student.teacher_layers = chosen
    return student


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
        check_distill_config(cfg)
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


def check_distill_config(cfg: Mapping) -> None:
    """``cfg.distill``: non-negative weights (not all zero), a positive temperature, known modes."""
    weights = {k: cfg[k] for k in ("alpha_ce", "alpha_mlm", "alpha_cos")}
    for key, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"distill.{key}={value!r} must be a number >= 0")
    if not any(weights.values()):
        raise ValueError("distill.alpha_ce, alpha_mlm and alpha_cos are all 0: nothing would be learned")
    t = cfg["temperature"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
        raise ValueError(f"distill.temperature={t!r} must be a number > 0")
    if cfg["soft_targets"] not in SOFT_TARGETS:
        raise ValueError(f"distill.soft_targets={cfg['soft_targets']!r} is not one of {list(SOFT_TARGETS)}")
    if cfg.get("recipe", "crammed") not in RECIPES:
        raise ValueError(f"distill.recipe={cfg['recipe']!r} is not one of {list(RECIPES)}")
    if cfg["cosine_layers"] not in COSINE_LAYERS:
        raise ValueError(
            f"distill.cosine_layers={cfg['cosine_layers']!r} is not one of {list(COSINE_LAYERS)}"
        )
