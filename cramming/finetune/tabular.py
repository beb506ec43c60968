"""Read and write small tables (CSV, TSV, JSON lines, Parquet, plain text) as columns of Python values.

The format is chosen by the file extension. Every problem is reported as a ``ValueError``
that names the file, the line and what would be accepted: a file that is not the format its
extension says, an empty file, a missing column. Rows that are broken on their own (a CSV row
with the wrong number of fields, a JSON line that does not parse) are skipped and counted with
``bad_rows="skip"`` or raise with ``bad_rows="error"``.

Conventions: CSV uses standard double-quote quoting; TSV has no quoting at all (tab-separated
fields never contain tabs, and GLUE-style files hold unbalanced quotes); text is UTF-8, a BOM is
ignored; ``.txt`` holds one text per line in a column named ``text``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "txt",
}
WRITE_FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
BAD_ROWS = ("skip", "error")
PARQUET_MAGIC = b"PAR1"


@dataclass
class Table:
    """Columns of equal length; ``lines[i]`` is where row ``i`` came from (1-based, header = line 1)."""

    path: str
    columns: dict[str, list] = field(default_factory=dict)
    lines: list[int] = field(default_factory=list)
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.lines)

    def column(self, name: str) -> list:
        if name not in self.columns:
            raise ValueError(
                f"{self.path} has no column {name!r}; its columns are {list(self.columns)} "
                "(set text_column=/text_pair_column=/label_column= to one of them)"
            )
        return self.columns[name]


def file_format(path: str | Path, allowed: Iterable[str] | None = None) -> str:
    """The format named by ``path``'s extension; a ValueError listing the accepted extensions otherwise."""
    suffix = Path(path).suffix.lower()
    fmt = FORMATS.get(suffix)
    allowed = tuple(allowed) if allowed is not None else tuple(set(FORMATS.values()))
    if fmt is None or fmt not in allowed:
        accepted = sorted(ext for ext, f in FORMATS.items() if f in allowed)
        raise ValueError(f"{path}: unsupported file extension {suffix!r}; accepted: {', '.join(accepted)}")
    return fmt


def check_bad_rows(bad_rows: str) -> str:
    if bad_rows not in BAD_ROWS:
        raise ValueError(f"bad_rows={bad_rows!r} is not one of {list(BAD_ROWS)}")
    return bad_rows


def read_table(path: str | Path, bad_rows: str = "error") -> Table:
    """Read a whole table; see the module docstring for the formats and error handling."""
    check_bad_rows(bad_rows)
    path = Path(path)
    fmt = file_format(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty: expected {_expected(fmt)}")
    if fmt == "parquet":
        table = _read_parquet(path)
    else:
        text = _read_text(path, fmt)
        reader = {"csv": _read_delimited, "tsv": _read_delimited, "jsonl": _read_jsonl, "txt": _read_txt}
        table = _read_json(path, text, bad_rows) if fmt == "json" else None
        if table is None:
            table = reader["jsonl" if fmt == "json" else fmt](path, text, fmt, bad_rows)
    if not table.columns:
        raise ValueError(f"{path} has no columns: expected {_expected(fmt)}")
    if len(table) == 0:
        raise ValueError(f"{path} has no data rows (columns: {list(table.columns)})")
    if table.skipped:
        log.warning("%s: skipped %d malformed row(s) (bad_rows=skip)", path, table.skipped)
    return table


def _expected(fmt: str) -> str:
    return {
        "csv": "a header row naming the columns, then one comma-separated row per example",
        "tsv": "a header row naming the columns, then one tab-separated row per example",
        "jsonl": 'one JSON object per line, e.g. {"text": "...", "label": "pos"}',
        "json": "a JSON array of objects or one JSON object per line",
        "parquet": "a Parquet file with one row per example",
        "txt": "one text per line",
    }[fmt]


def _read_text(path: Path, fmt: str) -> str:
    raw = path.read_bytes()
    if raw.startswith(PARQUET_MAGIC):
        raise ValueError(f"{path} is a Parquet file, not {fmt.upper()}; rename it to .parquet")
    if b"\x00" in raw[:4096]:
        raise ValueError(f"{path} is binary, not {fmt.upper()} text: expected {_expected(fmt)}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {err.start}): expected {_expected(fmt)}; "
            "re-save it as UTF-8 (Excel: 'CSV UTF-8')"
        ) from err


def bad_row(path: str | Path, line: int, reason: str, bad_rows: str, skipped_so_far: int) -> None:
    """Raise for ``bad_rows="error"``; otherwise log the first few (the caller counts them)."""
    if bad_rows == "error":
        raise ValueError(f"{path} line {line}: {reason} (pass bad_rows=skip to skip such rows)")
    if skipped_so_far < 5:
        log.warning("%s line %d: %s; skipped", path, line, reason)


def _bad(path: Path, line: int, reason: str, bad_rows: str, table: Table | Examples) -> None:
    bad_row(path, line, reason, bad_rows, table.skipped)
    table.skipped += 1


def _read_delimited(path: Path, text: str, fmt: str, bad_rows: str) -> Table:
    csv.field_size_limit(2**31 - 1)
    if fmt == "tsv":
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
    table = Table(str(path))
    try:
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise ValueError(f"{path} has no header row: expected {_expected(fmt)}")
        header = [h.strip() for h in header]
        if fmt == "csv" and header[0].startswith(("{", "[")):
            raise ValueError(f"{path} looks like JSON, not CSV; rename it to .jsonl (or .json)")
        if fmt == "csv" and len(header) == 1 and "\t" in header[0]:
            raise ValueError(f"{path} looks tab-separated, not comma-separated; rename it to .tsv")
        _check_header(path, header)
        table.columns = {name: [] for name in header}
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != len(header):
                _bad(path, line, f"{len(row)} fields where the header has {len(header)}", bad_rows, table)
                continue
            for name, value in zip(header, row):
                table.columns[name].append(value)
            table.lines.append(line)
    except csv.Error as err:
        raise ValueError(f"{path} line {reader.line_num}: not valid {fmt.upper()}: {err}") from err
    return table


def _check_header(path: Path, header: Sequence[str]) -> None:
    seen = set()
    for name in header:
        if name in seen:
            raise ValueError(f"{path}: column {name!r} appears twice in the header {list(header)}")
        seen.add(name)


def _add_records(table: Table, records: Iterable[tuple[int, dict]]) -> Table:
    """Rows as dicts -> columns (union of keys in order of first appearance; a missing key is None)."""
    rows = list(records)
    names: dict[str, None] = {}
    for _, record in rows:
        names.update(dict.fromkeys(record))
    table.columns = {name: [record.get(name) for _, record in rows] for name in names}
    table.lines = [line for line, _ in rows]
    return table


def _read_jsonl(path: Path, text: str, fmt: str, bad_rows: str) -> Table:
    table = Table(str(path))
    records = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if not records and not table.skipped:
                # The very first line does not parse: the file is not JSON lines at all.
                raise ValueError(
                    f"{path} line {line_no} is not JSON ({err.msg}): expected {_expected('jsonl')}"
                ) from err
            _bad(path, line_no, f"not valid JSON ({err.msg})", bad_rows, table)
            continue
        if not isinstance(record, dict):
            if not records and not table.skipped:
                raise ValueError(
                    f"{path} line {line_no} holds a JSON {type(record).__name__}, not an object: "
                    f"expected {_expected('jsonl')}"
                )
            _bad(path, line_no, f"a JSON {type(record).__name__}, not an object", bad_rows, table)
            continue
        records.append((line_no, record))
    return _add_records(table, records)


def _read_json(path: Path, text: str, bad_rows: str) -> Table | None:
    """A JSON array of objects, or None to fall back to JSON lines."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, list):
        if isinstance(data, dict):
            return None  # a single-line JSON-lines file
        raise ValueError(f"{path} holds a JSON {type(data).__name__}: expected {_expected('json')}")
    table = Table(str(path))
    records = []
    for i, record in enumerate(data, start=1):
        if isinstance(record, dict):
            records.append((i, record))
        else:
            _bad(path, i, f"item {i} is a JSON {type(record).__name__}, not an object", bad_rows, table)
    return _add_records(table, records)


def _read_txt(path: Path, text: str, fmt: str, bad_rows: str) -> Table:
    lines = text.splitlines()
    return Table(str(path), {"text": lines}, list(range(1, len(lines) + 1)))


def _read_parquet(path: Path) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != PARQUET_MAGIC:
        raise ValueError(
            f"{path} is not a Parquet file (no PAR1 magic bytes); if it is text, use the extension "
            "that matches its content (.csv, .tsv, .jsonl)"
        )
    try:
        data = pq.read_table(path).to_pydict()
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path} is not a readable Parquet file: {err}") from err
    n = len(next(iter(data.values()))) if data else 0
    return Table(str(path), {str(k): v for k, v in data.items()}, list(range(1, n + 1)))


def is_missing(value: object) -> bool:
    """None, NaN, or a string that is empty after stripping."""
    if value is None:
        return True
    if isinstance(value, float) and value != value:
        return True
    return isinstance(value, str) and not value.strip()


@dataclass
class Examples:
    """Texts (and optional pair texts and raw label values) of the usable rows of one file."""

    path: str
    texts: list[str]
    pairs: list[str] | None
    labels: list | None
    lines: list[int]
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.texts)

    def keep(self, mask: Sequence[bool]) -> Examples:
        """The rows where ``mask`` is True (``skipped`` counts the rest too)."""
        pick = [i for i, m in enumerate(mask) if m]
        return Examples(
            self.path,
            [self.texts[i] for i in pick],
            None if self.pairs is None else [self.pairs[i] for i in pick],
            None if self.labels is None else [self.labels[i] for i in pick],
            [self.lines[i] for i in pick],
            self.skipped + len(mask) - len(pick),
        )


def _text(value: object) -> str | None:
    """A cell as text: strings as they are, numbers via str(); None for containers."""
    if isinstance(value, (dict, list, tuple, bytes)):
        return None
    return value if isinstance(value, str) else str(value)


def load_examples(
    path: str | Path,
    text_column: str,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    bad_rows: str = "skip",
    labels_required: bool = True,
) -> Examples:
    """Read ``path`` and pull out its text, pair and label columns, checking every row (see below)."""
    if bad_rows not in BAD_ROWS + ("keep",):
        raise ValueError(f"bad_rows={bad_rows!r} is not one of {list(BAD_ROWS)}")
    table = read_table(path, "error" if bad_rows == "error" else "skip")
    return examples_from_table(table, text_column, text_pair_column, label_column, bad_rows, labels_required)


def _row_problem(texts: dict[str, object], allow_empty: bool) -> str | None:
    for column, value in texts.items():
        if is_missing(value) and not allow_empty:
            return f"empty text in column {column!r}"
        if _text(value) is None:
            return f"column {column!r} holds a {type(value).__name__}, not text"
    return None


def examples_from_table(
    table: Table,
    text_column: str,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    bad_rows: str = "skip",
    labels_required: bool = True,
) -> Examples:
    """The text, pair and label columns of ``table``, checking every row.

    A row with an empty text, pair or (required) label is skipped and counted with
    ``bad_rows="skip"``, raises with ``"error"``, and with ``"keep"`` (prediction only) is
    kept with empty text. A missing label column is an error when ``labels_required``; otherwise
    the examples come without labels.
    """
    if bad_rows not in BAD_ROWS + ("keep",):
        raise ValueError(f"bad_rows={bad_rows!r} is not one of {list(BAD_ROWS) + ['keep']}")
    path = table.path
    texts = table.column(text_column)
    pairs = table.column(text_pair_column) if text_pair_column else None
    labels = None
    if label_column and (labels_required or label_column in table.columns):
        labels = table.column(label_column)
    examples = Examples(
        str(path), [], [] if pairs is not None else None, [] if labels is not None else None, []
    )
    examples.skipped = table.skipped
    for i, line in enumerate(table.lines):
        row = {text_column: texts[i]}
        if pairs is not None:
            row[text_pair_column] = pairs[i]
        problem = _row_problem(row, bad_rows == "keep")
        if problem is None and labels is not None and is_missing(labels[i]):
            problem = f"no label in column {label_column!r}"
        if problem is not None:
            _bad(Path(path), line, problem, bad_rows, examples)
            continue
        examples.texts.append(_text(texts[i]) if not is_missing(texts[i]) else "")
        if pairs is not None:
            examples.pairs.append(_text(pairs[i]) if not is_missing(pairs[i]) else "")
        if labels is not None:
            examples.labels.append(labels[i])
        examples.lines.append(line)
    if examples.skipped:
        log.warning(
            "%s: skipped %d bad row(s) of %d (bad_rows=skip)",
            path,
            examples.skipped,
            len(table) + table.skipped,
        )
    if not examples.texts:
        raise ValueError(f"{path}: no usable rows left after skipping {examples.skipped} bad row(s)")
    return examples


def write_table(columns: dict[str, Sequence], path: str | Path | None, fmt: str | None = None) -> None:
    """Write columns to ``path`` (format by extension) or, when ``path`` is None or ``-``, to stdout."""
    to_stdout = path is None or str(path) == "-"
    if fmt is None:
        fmt = "csv" if to_stdout else file_format(path, WRITE_FORMATS)
    if fmt not in WRITE_FORMATS:
        raise ValueError(f"output format {fmt!r} is not one of {list(WRITE_FORMATS)}")
    names = list(columns)
    rows = list(zip(*(columns[n] for n in names)))
    if fmt == "parquet":
        if to_stdout:
            raise ValueError("Parquet cannot be written to stdout; pass output=FILE.parquet")
        import pyarrow as pa
        import pyarrow.parquet as pq

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({n: list(columns[n]) for n in names}), path)
        return
    stream = sys.stdout if to_stdout else io.StringIO()
    if fmt == "json":
        json.dump([dict(zip(names, row)) for row in rows], stream, ensure_ascii=False, indent=1)
        stream.write("\n")
    elif fmt == "jsonl":
        for row in rows:
            stream.write(json.dumps(dict(zip(names, row)), ensure_ascii=False) + "\n")
    else:
        delimiter, quoting = ("\t", csv.QUOTE_NONE) if fmt == "tsv" else (",", csv.QUOTE_MINIMAL)
        writer = csv.writer(
            stream, delimiter=delimiter, quoting=quoting, escapechar="\\", lineterminator="\n"
        )
        writer.writerow(names)
        writer.writerows(rows)
    if not to_stdout:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(stream.getvalue(), encoding="utf-8")
