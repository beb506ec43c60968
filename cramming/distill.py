"""`python -m cramming.distill teacher=outputs/RUN/model budget=2h name=student`: distil a smaller student.

The pretraining app with two changes: ``arch`` is the teacher's with ``student.num_layers`` layers, and
the trainer is ``DistillTrainer``, the Pretrainer whose model is a ``Distiller`` (student + frozen
teacher) and whose export is the student alone. Budget clock, LR schedule, batch ramp, logging,
checkpoints, ``resume=true`` and DDP are the pretraining loop's own.

Defaults picked from the command line before Hydra composes the config (``distill_overrides``):
``train=`` is the teacher's arch's own recipe, as pretraining picks ``train=${arch}`` (a ``tiny`` teacher gets
``train=tiny``, a ``crammed-bert`` one ``train=crammed-bert``), and ``distill.recipe=distilbert`` expands to
the released DistilBERT's settings (``cramming.distillation.DISTILBERT``); the user's own overrides win.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from cramming.commands import fail, run_app
from cramming.conf import CONF_PATH
from cramming.data.masking import uses_bert_family
from cramming.distillation import (
    DISTILBERT,
    Distiller,
    check_distill_config,
    check_same_vocabulary,
    check_teacher,
    init_student,
    layer_map,
    load_teacher,
    student_arch,
)
from cramming.export.folder import FRAMING, WEIGHTS, pretraining_framing, save_export
from cramming.files import file_sha256
from cramming.models import count_parameters
from cramming.perf import flops_per_token
from cramming.pretrain import pretrain_main
from cramming.train import Pretrainer

log = logging.getLogger("cramming")


class DistillTrainer(Pretrainer):
    """The pretraining loop, training a ``Distiller``; checkpoints hold the student and name the teacher."""

    def __init__(self, cfg: Mapping, run_dir: Path, budget, corpus, runtime):
        self.teacher_path = Path(cfg["teacher"]).expanduser().resolve()
        self.teacher, teacher_tokenizer = load_teacher(self.teacher_path, runtime.device)
        check_same_vocabulary(teacher_tokenizer, corpus.tokenizer, str(self.teacher_path))
        super().__init__(cfg, run_dir, budget, corpus, runtime)
        self.teacher_sha256 = file_sha256(self.teacher_path / WEIGHTS)
        self.identity["teacher_sha256"] = self.teacher_sha256  # resume=true against another teacher: refused
        # MFU counts the teacher's forward too (a third of a training step's FLOPs per token).
        decoded = 1.0 if cfg["distill"]["soft_targets"] == "all" else float(cfg["data"]["mlm_probability"])
        teacher_arch, teacher_vocab = self.teacher.arch, self.teacher.vocab_size
        params = count_parameters(self.teacher)
        self.flops_per_token += (
            flops_per_token(teacher_arch, params, corpus.seq_len, decoded, teacher_vocab) / 3
        )

    def build_model(self) -> Distiller:
        self.vocab_size = self.teacher.vocab_size  # the teacher's embedding rows, whatever their rounding
        student = init_student(self.teacher, self.cfg["arch"])
        pad_id = self.corpus.special_ids.get("pad")
        return Distiller(student, self.teacher, self.cfg["distill"], pad_id=pad_id)

    def teacher_record(self) -> dict:
        """What config.json says about the teacher."""
        return {
            "path": str(self.teacher_path),
            "sha256": self.teacher_sha256,
            "arch": self.teacher.arch.get("name"),
            "num_layers": len(self.teacher.encoder.blocks),
            "parameters": count_parameters(self.teacher),
            "student_layers_from": layer_map(
                len(self.teacher.encoder.blocks), int(self.cfg["arch"]["num_layers"])
            ),
            "distill": dict(self.cfg["distill"]),
        }

    def export(self, summary: dict) -> None:
        save_export(
            self.model.student,
            self.corpus.tokenizer,
            self.run_dir / "model",
            extra={
                "pretraining": summary,
                "teacher": self.teacher_record(),
                FRAMING: pretraining_framing(self.cfg, self.corpus.tokenizer),
            },
        )


def teacher_train_recipe(teacher_config: Mapping) -> str:
    """The ``train=`` preset pretraining picks for the teacher's arch (``train: ${arch}``); a distilled
    student used as a teacher (``tiny-student1L``) counts as its own teacher's arch."""
    name = str(teacher_config["arch"].get("name") or "crammed-bert")
    return re.sub(r"(-student\d+L)+$", "", name)


def distill_overrides(args: Sequence[str]) -> list[str]:
    """``args`` with the distillation defaults put in front of the user's overrides (the user's win).

    No ``train=``: the teacher's recipe (``teacher_train_recipe``). ``distill.recipe=distilbert``: the
    ``DISTILBERT`` settings. A missing or unreadable teacher adds nothing (``resolve_student`` reports it).
    """
    args = list(args)
    values = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    added = []
    if "train" not in values and "teacher" in values:
        try:
            added.append(f"train={teacher_train_recipe(check_teacher(values['teacher']))}")
        except ValueError:
            pass
    if values.get("distill.recipe") == "distilbert":
        added += [f"{key}={value}" for key, value in DISTILBERT.items()]
    first = next((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")), len(args))
    return args[:first] + added + args[first:]


def note_recipe_deviations(cfg: DictConfig) -> None:
    """distill.recipe=distilbert with some of its settings overridden: say which (they are kept)."""
    if cfg.distill.get("recipe") != "distilbert":
        return
    for key, want in DISTILBERT.items():
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        if got != want:
            log.warning(
                "distill.recipe=distilbert with %s=%s (DistilBERT: %s): the override is kept", key, got, want
            )


def resolve_student(cfg: DictConfig) -> None:
    """Fill ``cfg.arch`` (the student's) and default ``data.tokenizer.path`` to the teacher's; ValueError on bad input."""
    if OmegaConf.is_missing(cfg, "teacher"):
        raise ValueError("teacher= is required: a pretrained export folder, e.g. teacher=outputs/RUN/model")
    teacher = Path(str(cfg.teacher)).expanduser()
    config = check_teacher(teacher)
    check_distill_config(cfg.distill)
    note_recipe_deviations(cfg)
    if uses_bert_family(cfg.data):
        raise ValueError(
            f"data.objective={cfg.data.get('objective')!r} / data.masking={cfg.data.get('masking')!r}: "
            f"distillation trains a crammed MLM student; use data.objective=mlm and data.masking=crammed"
        )
    arch = student_arch(config["arch"], cfg.student.num_layers, cfg.student.hidden_size)
    with open_dict(cfg):
        cfg.arch = arch
        if cfg.data.get("readymade") is None and not cfg.data.tokenizer.get("path"):
            cfg.data.tokenizer.path = str((teacher / "tokenizer.json").resolve())


def distill_main(cfg: DictConfig) -> dict:
    try:
        resolve_student(cfg)
    except ValueError as err:
        fail(err)
    return pretrain_main(cfg, DistillTrainer)


@hydra.main(config_path=CONF_PATH, config_name="distill", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    distill_main(cfg)


def main() -> None:
    sys.argv[1:] = distill_overrides(sys.argv[1:])
    run_app(hydra_main)


if __name__ == "__main__":
    main()
