"""`python -m cramming.distill teacher=outputs/RUN/model budget=2h name=student`: distil a smaller student.

The pretraining app with two changes: ``arch`` is the teacher's with ``student.num_layers`` layers, and
the loop is handed the ``distill_objective`` (cramming.distill.objective): its model is a ``Distiller``
(student + frozen teacher, cramming.distill.loss) and its export is the student alone. Budget clock, LR
schedule, batch ramp, logging, checkpoints, ``resume=true`` and DDP are the pretraining loop's own.
Package layout: model.py (teacher checks, student shape and init), loss.py (the loss), objective.py
(what the loop gets), __main__.py (``python -m cramming.distill``).

Defaults picked from the command line before Hydra composes the config (``distill_overrides``):
``train=`` is the teacher's arch's own recipe, as pretraining picks ``train=${arch}`` (a ``tiny`` teacher gets
``train=tiny``, a ``crammed-bert`` one ``train=crammed-bert``), and ``distill.recipe=distilbert`` expands to
the released DistilBERT's settings (``DISTILBERT`` below); the user's own overrides win.
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
from cramming.config import CONF_PATH
from cramming.config.checks import check_distill_config
from cramming.data.masking import uses_bert_family
from cramming.distill.model import check_teacher, student_arch
from cramming.pretrain import pretrain_main

log = logging.getLogger("cramming")

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
        fail(err, "cramming.distill")
    from cramming.distill.objective import distill_objective

    return pretrain_main(cfg, distill_objective)


@hydra.main(config_path=CONF_PATH, config_name="distill", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    distill_main(cfg)


def main() -> None:
    sys.argv[1:] = distill_overrides(sys.argv[1:])
    run_app(hydra_main)
