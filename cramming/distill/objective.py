"""What distillation hands the pretraining loop: a ``Distiller`` builder, the student's export, the teacher's hash.

Budget clock, LR schedule, batch ramp, logging, checkpoints, ``resume=true`` and DDP stay the loop's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cramming.distill.loss import Distiller
from cramming.distill.model import check_same_vocabulary, init_student, layer_map, load_teacher
from cramming.export.folder import FRAMING, WEIGHTS, pretraining_framing, save_export
from cramming.files import file_sha256
from cramming.models import count_parameters
from cramming.perf import flops_per_token
from cramming.train import Objective


def distill_objective(cfg: Mapping, corpus, runtime) -> Objective:
    """Load the frozen teacher, check the corpus shares its vocabulary, and describe the student's training."""
    teacher_path = Path(cfg["teacher"]).expanduser().resolve()
    teacher, teacher_tokenizer = load_teacher(teacher_path, runtime.device)
    check_same_vocabulary(teacher_tokenizer, corpus.tokenizer, str(teacher_path))
    sha256 = file_sha256(teacher_path / WEIGHTS)
    # MFU counts the teacher's forward too (a third of a training step's FLOPs per token).
    decoded = 1.0 if cfg["distill"]["soft_targets"] == "all" else float(cfg["data"]["mlm_probability"])
    teacher_flops = flops_per_token(
        teacher.arch, count_parameters(teacher), corpus.seq_len, decoded, teacher.vocab_size
    )

    def build() -> Distiller:
        student = init_student(teacher, cfg["arch"])
        return Distiller(student, teacher, cfg["distill"], pad_id=corpus.special_ids.get("pad"))

    def export(model: Distiller, summary: dict, folder: Path) -> None:
        """The student alone; config.json names its teacher."""
        extra = {
            "pretraining": summary,
            "teacher": teacher_record(teacher, teacher_path, sha256, cfg),
            FRAMING: pretraining_framing(cfg, corpus.tokenizer),
        }
        save_export(model.student, corpus.tokenizer, folder, extra=extra)

    return Objective(
        build_model=build,
        vocab_size=teacher.vocab_size,  # the teacher's embedding rows, whatever their rounding
        export=export,
        identity={"teacher_sha256": sha256},  # resume=true against another teacher: refused
        extra_flops_per_token=teacher_flops / 3,
    )


def teacher_record(teacher, path: Path, sha256: str, cfg: Mapping) -> dict:
    """What config.json says about the teacher."""
    layers = len(teacher.encoder.blocks)
    return {
        "path": str(path),
        "sha256": sha256,
        "arch": teacher.arch.get("name"),
        "num_layers": layers,
        "parameters": count_parameters(teacher),
        "student_layers_from": layer_map(layers, int(cfg["arch"]["num_layers"])),
        "distill": dict(cfg["distill"]),
    }
