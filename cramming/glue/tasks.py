"""GLUE tasks: what each one is, and reading it from a local glue_data folder or the HF hub.

Labels are carried as names (``entailment``, ``acceptable``, ...) from the moment they are
read, whatever the source stores (TSV strings, TSV digits, hub integers with their own
order), and only turned into class indices through ``TaskSpec.labels``. That is how the
MNLI TSV strings and the hub's integer ids end up meaning the same thing.

Local files follow the official ``glue_data/`` layout (``CoLA/train.tsv``,
``MNLI/dev_matched.tsv``, ``diagnostic/diagnostic.tsv``, ...). They are read as
tab-separated text with quoting off; CoLA train/dev have no header; MRPC's header starts
with a UTF-8 BOM; rows with the wrong number of fields (a few in QQP) are skipped.
"""

from __future__ import annotations

import csv
import logging
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
csv.field_size_limit(sys.maxsize)

HUB_DATASET = "nyu-mll/glue"
NO_LABEL = ("", "-")  # rows without a gold label (never in GLUE dev files, but tolerated)


@dataclass(frozen=True)
class TaskSpec:
    name: str  # the CLI name: cola, sst2, ...
    title: str  # GLUE's name: CoLA, SST-2, ... (also the folder under glue_dir)
    text_columns: tuple[str, ...]  # TSV header names of the one or two text fields
    hub_columns: tuple[str, ...]  # the same fields in the hub dataset
    labels: tuple[str, ...] | None  # class names by index; None for regression (STS-B)
    tsv_labels: Mapping[str, str] = field(default_factory=dict)  # raw TSV value -> name (identity if absent)
    submission_labels: Mapping[str, str] = field(default_factory=dict)  # name -> GLUE value (identity)
    label_column: str = "label"
    metrics: tuple[str, ...] = ("accuracy",)  # reported on every dev split, first one is the headline
    dev: Mapping[str, str] = field(default_factory=lambda: {"": "dev"})  # dev split name -> file stem
    hub_dev: Mapping[str, str] = field(default_factory=lambda: {"": "validation"})
    test: Mapping[str, str] = field(default_factory=dict)  # submission name -> file stem
    hub_test: Mapping[str, str] = field(default_factory=dict)  # submission name -> hub split
    headline: Mapping[str, str] = field(default_factory=dict)  # leaderboard column -> metric key
    headerless: tuple[str, ...] = ()  # column names of train/dev files that have no header (CoLA)
    folder: str | None = None  # defaults to title

    @property
    def regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def directory(self) -> str:
        return self.folder or self.title


def _binary(neg: str, pos: str) -> dict:
    return {
        "labels": (neg, pos),
        "tsv_labels": {"0": neg, "1": pos},
        "submission_labels": {neg: "0", pos: "1"},
    }


_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec(
        "cola", "CoLA", ("sentence",), ("sentence",), **_binary("unacceptable", "acceptable"),
        metrics=("matthews", "accuracy"), test={"CoLA": "test"}, hub_test={"CoLA": "test"},
        headline={"CoLA": "matthews"}, headerless=("source", "label", "mark", "sentence"),
    ),
    "sst2": TaskSpec(
        "sst2", "SST-2", ("sentence",), ("sentence",), **_binary("negative", "positive"),
        test={"SST-2": "test"}, hub_test={"SST-2": "test"}, headline={"SST-2": "accuracy"},
    ),
    "mrpc": TaskSpec(
        "mrpc", "MRPC", ("#1 String", "#2 String"), ("sentence1", "sentence2"),
        **_binary("not_equivalent", "equivalent"), label_column="Quality", metrics=("f1", "accuracy"),
        test={"MRPC": "test"}, hub_test={"MRPC": "test"}, headline={"MRPC": "f1"},
    ),
    "stsb": TaskSpec(
        "stsb", "STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2"), None,
        label_column="score", metrics=("pearson", "spearman"),
        test={"STS-B": "test"}, hub_test={"STS-B": "test"}, headline={"STS-B": "pearson"},
    ),
    "qqp": TaskSpec(
        "qqp", "QQP", ("question1", "question2"), ("question1", "question2"),
        **_binary("not_duplicate", "duplicate"), label_column="is_duplicate", metrics=("f1", "accuracy"),
        test={"QQP": "test"}, hub_test={"QQP": "test"}, headline={"QQP": "f1"},
    ),
    "mnli": TaskSpec(
        "mnli", "MNLI", ("sentence1", "sentence2"), ("premise", "hypothesis"), _NLI3,
        label_column="gold_label",
        dev={"matched": "dev_matched", "mismatched": "dev_mismatched"},
        hub_dev={"matched": "validation_matched", "mismatched": "validation_mismatched"},
        test={"MNLI-m": "test_matched", "MNLI-mm": "test_mismatched"},
        hub_test={"MNLI-m": "test_matched", "MNLI-mm": "test_mismatched"},
        headline={"MNLI-m": "accuracy_matched", "MNLI-mm": "accuracy_mismatched"},
    ),
    "qnli": TaskSpec(
        "qnli", "QNLI", ("question", "sentence"), ("question", "sentence"), _NLI2,
        test={"QNLI": "test"}, hub_test={"QNLI": "test"}, headline={"QNLI": "accuracy"},
    ),
    "rte": TaskSpec(
        "rte", "RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2"), _NLI2,
        test={"RTE": "test"}, hub_test={"RTE": "test"}, headline={"RTE": "accuracy"},
    ),
    "wnli": TaskSpec(
        "wnli", "WNLI", ("sentence1", "sentence2"), ("sentence1", "sentence2"),
        labels=("not_entailment", "entailment"), tsv_labels={"0": "not_entailment", "1": "entailment"},
        submission_labels={"not_entailment": "0", "entailment": "1"},
        test={"WNLI": "test"}, hub_test={"WNLI": "test"}, headline={"WNLI": "accuracy"},
    ),
}  # fmt: skip

# The GLUE diagnostic set: no training data, predicted with the MNLI model.
AX = TaskSpec(
    "ax", "AX", ("sentence1", "sentence2"), ("premise", "hypothesis"), _NLI3,
    dev={}, hub_dev={}, test={"AX": "diagnostic"}, hub_test={"AX": "test"}, folder="diagnostic",
)  # fmt: skip

DEFAULT_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
# The nine numbers of the GLUE average (WNLI is left out, as in BERT and crammedBERT).
AVERAGE_COLUMNS = ("MNLI-m", "MNLI-mm", "QQP", "QNLI", "SST-2", "CoLA", "STS-B", "MRPC", "RTE")


def glue_average(headline: Mapping[str, float]) -> dict:
    """The GLUE average of the headline numbers present (column -> percent; MNLI counts twice as
    MNLI-m and MNLI-mm, WNLI never), labelled with its coverage. The one definition: GLUE's results
    and the leaderboard both use it."""
    covered = [c for c in AVERAGE_COLUMNS if c in headline]
    value = statistics.fmean(headline[c] for c in covered) if covered else None
    shown = "n/a" if value is None else f"{value:.2f}"
    label = f"average over {len(covered)}/{len(AVERAGE_COLUMNS)} ({', '.join(covered) or 'none'}): {shown}"
    return {
        "value": value,
        "covered": covered,
        "count": len(covered),
        "of": len(AVERAGE_COLUMNS),
        "label": label,
    }


def check_task_names(names: Iterable[str]) -> list[str]:
    """Lower-cased task names in order, without repeats; unknown names are a ValueError."""
    if isinstance(names, str):
        names = [n for n in names.replace(",", " ").split() if n]
    result: list[str] = []
    for name in names:
        key = str(name).strip().lower().replace("-", "")
        if key not in TASKS:
            raise ValueError(
                f"unknown GLUE task {name!r}; accepted: {', '.join(TASKS)} "
                f"(e.g. tasks=[cola,sst2]; the default is the eight GLUE tasks without wnli)"
            )
        if key not in result:
            result.append(key)
    if not result:
        raise ValueError(f"tasks is empty; give at least one of {', '.join(TASKS)}")
    return result


@dataclass
class Split:
    """One split of one task: texts, label names (floats for STS-B; None for test) and row ids."""

    texts_a: list[str]
    texts_b: list[str] | None
    labels: list | None
    index: list[str]

    def __len__(self) -> int:
        return len(self.texts_a)

    def label_ids(self, spec: TaskSpec) -> list:
        """Class indices by name (floats for regression)."""
        if self.labels is None:
            raise ValueError(f"{spec.title}: this split has no labels")
        if spec.regression:
            return [float(v) for v in self.labels]
        position = {name: i for i, name in enumerate(spec.labels)}
        return [position[name] for name in self.labels]

    def select(self, indices: Sequence[int]) -> Split:
        pick = lambda values: None if values is None else [values[i] for i in indices]  # noqa: E731
        return Split(pick(self.texts_a), pick(self.texts_b), pick(self.labels), pick(self.index))


@dataclass
class TaskData:
    spec: TaskSpec
    train: Split | None
    dev: dict[str, Split]
    test: dict[str, Split]  # submission name -> split


# ---------------------------------------------------------------------------------------------
# local glue_data folder


def read_tsv(path: Path, columns: Sequence[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a GLUE TSV; ``columns`` names the fields of a file without a header."""
    with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig drops MRPC's BOM
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = list(columns) if columns else next(reader, [])
        rows, bad = [], 0
        for row in reader:
            if len(row) == len(header):
                rows.append(row)
            elif any(cell.strip() for cell in row):
                bad += 1
    if bad:
        log.warning("%s: skipped %d malformed rows (expected %d fields)", path, bad, len(header))
    return header, rows


def split_path(glue_dir: Path, spec: TaskSpec, stem: str) -> Path:
    return Path(glue_dir) / spec.directory / f"{stem}.tsv"


def required_files(glue_dir: Path, spec: TaskSpec) -> list[Path]:
    """train + every dev file: what fine-tuning and scoring a task needs."""
    return [split_path(glue_dir, spec, s) for s in ("train", *spec.dev.values())]


def missing_files(glue_dir: Path, spec: TaskSpec) -> list[Path]:
    return [p for p in required_files(glue_dir, spec) if not p.is_file()]


def _column(header: list[str], name: str, path: Path) -> int:
    if name not in header:
        raise ValueError(f"{path}: no column {name!r} in header {header}")
    return header.index(name)


def _tsv_label(spec: TaskSpec, raw: str, path: Path):
    raw = raw.strip()
    if spec.regression:
        return float(raw)
    name = spec.tsv_labels.get(raw, raw)
    if name not in spec.labels:
        raise ValueError(
            f"{path}: label {raw!r} is not one of {sorted(spec.tsv_labels) or list(spec.labels)}"
        )
    return name


def read_local_split(glue_dir: Path, spec: TaskSpec, stem: str, labelled: bool) -> Split:
    path = split_path(glue_dir, spec, stem)
    headerless = spec.headerless if stem in ("train", "dev") else None
    header, rows = read_tsv(path, headerless or None)
    text_idx = [_column(header, c, path) for c in spec.text_columns]
    index_col = next((c for c in ("index", "id") if c in header), None)
    label_idx = _column(header, spec.label_column, path) if labelled else None
    if label_idx is not None:
        kept = [r for r in rows if r[label_idx].strip() not in NO_LABEL]
        if len(kept) < len(rows):
            log.warning("%s: skipped %d rows without a gold label", path, len(rows) - len(kept))
        rows = kept
    return Split(
        [r[text_idx[0]] for r in rows],
        [r[text_idx[1]] for r in rows] if len(text_idx) > 1 else None,
        [_tsv_label(spec, r[label_idx], path) for r in rows] if label_idx is not None else None,
        [r[header.index(index_col)] for r in rows] if index_col else [str(i) for i in range(len(rows))],
    )


def load_local(glue_dir: Path, spec: TaskSpec) -> TaskData:
    """Train, dev splits and whichever test files exist; call only when ``missing_files`` is empty."""
    train = read_local_split(glue_dir, spec, "train", labelled=True) if spec.dev else None
    dev = {name: read_local_split(glue_dir, spec, stem, labelled=True) for name, stem in spec.dev.items()}
    test = {
        name: read_local_split(glue_dir, spec, stem, labelled=False)
        for name, stem in spec.test.items()
        if split_path(glue_dir, spec, stem).is_file()
    }
    return TaskData(spec, train, dev, test)


# ---------------------------------------------------------------------------------------------
# HF hub (nyu-mll/glue, Parquet): records are dicts with the hub columns, `label` and `idx`


def hub_records_to_split(
    spec: TaskSpec, records: Iterable[Mapping], label_names: Sequence[str] | None
) -> Split:
    """Convert hub rows to a Split. ``label_names`` is the hub's ClassLabel names (its own order).

    Test rows carry label -1 and give a split without labels.
    """
    records = list(records)
    labels = [r.get("label", -1) for r in records]
    unlabelled = all(v is None or (not spec.regression and int(v) < 0) for v in labels)
    if not unlabelled and not spec.regression:
        if label_names is None:
            raise ValueError(f"{spec.title}: hub labels are integers, but no label names were given")
        names = [label_names[int(v)] for v in labels]
        unknown = sorted(set(names) - set(spec.labels))
        if unknown:
            raise ValueError(f"{spec.title}: hub label names {unknown} are not among {list(spec.labels)}")
        labels = names
    elif not unlabelled:
        labels = [float(v) for v in labels]
    columns = spec.hub_columns
    return Split(
        [r[columns[0]] for r in records],
        [r[columns[1]] for r in records] if len(columns) > 1 else None,
        None if unlabelled else labels,
        [str(r.get("idx", i)) for i, r in enumerate(records)],
    )


def load_hub(spec: TaskSpec, cache_dir: str | None = None) -> TaskData:
    """Download (or read from the HF cache) one task of ``nyu-mll/glue``."""
    import datasets

    config = spec.name
    ds = datasets.load_dataset(HUB_DATASET, config, cache_dir=cache_dir)
    feature = ds[next(iter(ds))].features.get("label")
    label_names = getattr(feature, "names", None)

    def convert(split: str) -> Split:
        return hub_records_to_split(spec, ds[split], label_names)

    train = convert("train") if "train" in ds else None
    dev = {name: convert(split) for name, split in spec.hub_dev.items()}
    test = {name: convert(split) for name, split in spec.hub_test.items() if split in ds}
    return TaskData(spec, train, dev, test)
