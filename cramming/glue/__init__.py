"""GLUE: task specs and local/hub loading (``tasks``), fine-tuning and scoring every task (``run``),
submission TSVs (``submission``). ``python -m cramming.glue model=outputs/RUN/model`` runs it."""

from cramming.glue.run import (
    main,
    plan_tasks,
    resolve_settings,
    run_glue,
    run_glue_from_pretraining,
    score_split,
)
from cramming.glue.tasks import glue_average

__all__ = [
    "glue_average",
    "main",
    "plan_tasks",
    "resolve_settings",
    "run_glue",
    "run_glue_from_pretraining",
    "score_split",
]
