"""GLUE leaderboard submission files: one ``NAME.tsv`` per test set, zipped together.

Each file has the header ``index<TAB>prediction`` and one row per test example, with labels
in GLUE's own format: 0/1 for CoLA, SST-2, MRPC, QQP and WNLI; ``entailment`` /
``not_entailment`` for QNLI and RTE; ``entailment`` / ``neutral`` / ``contradiction`` for
MNLI and AX; a float clipped to [0, 5] for STS-B.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cramming.glue.tasks import TaskSpec

# The names GLUE expects, in its own order.
SUBMISSION_FILES = (
    "CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI-m", "MNLI-mm", "QNLI", "RTE", "WNLI", "AX",
)  # fmt: skip


def format_predictions(spec: TaskSpec, logits: np.ndarray) -> list[str]:
    """Logits (N, num_labels) -> GLUE submission values, mapping class index -> name -> GLUE value."""
    if spec.regression:
        return [f"{v:.3f}" for v in np.clip(logits[:, 0], 0.0, 5.0)]
    names = [spec.labels[i] for i in logits.argmax(axis=-1)]
    return [spec.submission_labels.get(name, name) for name in names]


def write_tsv(path: Path, index: Sequence[str], predictions: Sequence[str]) -> Path:
    if len(index) != len(predictions):
        raise ValueError(f"{path.name}: {len(index)} ids but {len(predictions)} predictions")
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["index\tprediction"] + [f"{i}\t{p}" for i, p in zip(index, predictions)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_submission(
    out_dir: Path, name: str, spec: TaskSpec, index: Sequence[str], logits: np.ndarray
) -> Path:
    """Write ``out_dir/<name>.tsv`` (name is one of SUBMISSION_FILES)."""
    if name not in SUBMISSION_FILES:
        raise ValueError(f"submission name {name!r} is not one of {list(SUBMISSION_FILES)}")
    return write_tsv(Path(out_dir) / f"{name}.tsv", index, format_predictions(spec, logits))


def zip_submission(out_dir: Path, zip_path: Path | None = None) -> Path | None:
    """Zip every submission TSV in ``out_dir`` (flat, as GLUE wants); None when there are none."""
    out_dir = Path(out_dir)
    files = [out_dir / f"{name}.tsv" for name in SUBMISSION_FILES if (out_dir / f"{name}.tsv").is_file()]
    if not files:
        return None
    zip_path = Path(zip_path or out_dir / "submission.zip")
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            zf.write(path, arcname=path.name)
    return zip_path
