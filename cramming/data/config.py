"""The data sub-config as the pipeline uses it: defaults (from conf/data/local.yaml), a plain dict, and the
checks of the files it names.

The values are checked by the schema (``cramming.config.schema.DataConfig`` runs
``cramming.config.data_checks``); ``validate_data_config`` adds the files, in well under a second even for
large corpora: every path matches files, and only a prefix of each file is read (UTF-8, gzip header,
JSON/Parquet schema).
"""

from __future__ import annotations

import glob
import gzip
import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

EXTENSIONS = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".parquet")
PREFIX_BYTES = 1 << 16
PACKAGE_PREFIX = "pkg://"  # data.files entries inside an installed package (see package_path)


def defaults() -> dict[str, Any]:
    """Every data key's default: ``conf/data/local.yaml``, the file Hydra composes too (one source)."""
    from cramming.conf import read_yaml

    return read_yaml("data", "local.yaml")


def as_dict(data_cfg: Any) -> dict[str, Any]:
    """A plain dict of the data config (DictConfig or mapping), missing keys filled from ``defaults()``."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(data_cfg, DictConfig):
            data_cfg = OmegaConf.to_container(data_cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        pass
    if not isinstance(data_cfg, Mapping):
        raise ValueError(f"data config must be a mapping, got {type(data_cfg).__name__}")
    cfg = defaults()
    for key, value in data_cfg.items():
        if isinstance(value, Mapping) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **dict(value)}
        else:
            cfg[key] = value
    for key in ("files", "validation_files"):
        if isinstance(cfg[key], (str, Path)):
            cfg[key] = [cfg[key]]
        cfg[key] = [str(p) for p in (cfg[key] or [])]
    return cfg


def file_extension(path: str | Path) -> str | None:
    """The accepted extension that ``path`` ends with, or None."""
    name = str(path).lower()
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return None


def package_path(pattern: str) -> Path:
    """``pkg://PACKAGE/PATH`` is PATH inside an installed package (data=sample's corpus ships in
    cramming.data); any other string is a path as given."""
    if not pattern.startswith(PACKAGE_PREFIX):
        return Path(pattern).expanduser()
    package, _, rest = pattern[len(PACKAGE_PREFIX) :].partition("/")
    try:
        from importlib.resources import files

        return Path(str(files(package))) / rest
    except (ImportError, TypeError) as err:
        raise ValueError(
            f"{pattern!r} names the package {package!r}, which cannot be imported ({err})."
        ) from err


def expand_paths(patterns: list[str], key: str) -> list[Path]:
    """Every file matched by the paths/globs, in the given order (globs sorted); each must match ≥1 file."""
    out: list[Path] = []
    for pattern in patterns:
        expanded = str(package_path(pattern))
        matches = sorted(glob.glob(expanded, recursive=True)) if glob.has_magic(expanded) else [expanded]
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            raise ValueError(
                f"data.{key} entry {pattern!r} matches no file. Give existing file paths or globs "
                f"(e.g. 'corpus/*.txt.gz') of {', '.join(EXTENSIONS)} files."
            )
        out.extend(Path(m) for m in matches)
    return out


def validate_data_config(data_cfg: Any) -> None:
    """Fast checks of the data config; raises ValueError naming the bad value and what is accepted."""
    from cramming.config import check_group

    cfg = as_dict(data_cfg)
    check_group("data", cfg)  # the schema's types and check_values
    check_files(cfg)


def check_files(data_cfg: Any) -> None:
    """Every ``data.files``/``data.validation_files`` path matches files with a readable prefix (local source)."""
    cfg = as_dict(data_cfg)
    if cfg["source"] != "local":
        return
    for key in ("files", "validation_files"):
        for path in expand_paths(cfg[key], key):
            check_file(path, cfg["text_column"], key)


def check_file(path: Path, text_column: str, key: str = "files") -> None:
    """Non-empty, known extension, a readable prefix (gzip header, UTF-8, JSON/Parquet with the column)."""
    ext = file_extension(path)
    where = f"data.{key} file {str(path)!r}"
    if ext is None:
        raise ValueError(
            f"{where} has an unknown extension; accepted extensions are {', '.join(EXTENSIONS)}."
        )
    if path.stat().st_size == 0:
        raise ValueError(f"{where} is empty; every corpus file must hold text.")
    if ext == ".parquet":
        _check_parquet(path, text_column, where)
        return
    try:
        if ext.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                prefix = f.read(PREFIX_BYTES)
        else:
            with open(path, "rb") as f:
                prefix = f.read(PREFIX_BYTES)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(
            f"{where} is not a readable gzip file ({err}); expected gzip-compressed UTF-8."
        ) from err
    if not prefix.strip():
        raise ValueError(f"{where} holds no text; every corpus file must hold text.")
    try:
        text = prefix.decode("utf-8") if len(prefix) < PREFIX_BYTES else _decode_prefix(prefix)
    except UnicodeDecodeError as err:
        raise ValueError(f"{where} is not UTF-8 text ({err}); accepted encoding is UTF-8.") from err
    if ext.startswith(".jsonl"):
        _check_jsonl_line(text.lstrip().split("\n", 1)[0], text_column, where)


def _decode_prefix(prefix: bytes) -> str:
    import codecs

    return codecs.getincrementaldecoder("utf-8")().decode(prefix, final=False)


def _check_jsonl_line(line: str, text_column: str, where: str) -> None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{where}: first line is not JSON ({err}); expected one JSON object per line."
        ) from err
    if not isinstance(row, dict) or text_column not in row:
        raise ValueError(f"{where}: first record has no field {text_column!r} (data.text_column).")


def _check_parquet(path: Path, text_column: str, where: str) -> None:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as err:  # pyarrow raises several error types for corrupt files
        raise ValueError(f"{where} is not a readable Parquet file ({err}).") from err
    if text_column not in schema.names:
        raise ValueError(
            f"{where} has no column {text_column!r} (data.text_column); columns: {schema.names}."
        )
