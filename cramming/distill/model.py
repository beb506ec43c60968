"""DistilBERT-style distillation: the teacher export, the student's shape and its initialisation.

The student is a crammed-BERT MLM with fewer layers, initialised from the teacher (embeddings, the
chosen blocks, final norm and decoder).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from tokenizers import Tokenizer

from cramming.export.folder import load_model, read_config, read_tokenizer
from cramming.models import BertForMLM


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
