"""The on-disk cache: keys, atomic writes, shard files, the manifest and its verification, a lock.

A corpus entry ``<cache_dir>/corpora/<key>/`` holds ``tokenizer.json``, shard files
``<split>-<nnnnn>.bin`` (raw uint16/uint32, ``seq_len`` per row), an optional ``order.npy``,
``stats.json`` and, written last, ``manifest.json``. The manifest lists every file with its size and
sha256 and carries a checksum of itself; an entry without a valid manifest is unfinished or damaged.
``verified.json`` remembers the size and mtime of files whose sha256 was checked, so a reused cache is
hashed once, not on every start.
While a preparation runs, ``progress/`` holds the resume state after each finished shard.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from cramming.files import atomic_write, file_sha256, write_json

MANIFEST = "manifest.json"
VERIFIED = "verified.json"  # sha256-checked files with the size and mtime they had then


def config_key(obj: Any, length: int = 16) -> str:
    """A short stable hash of a JSON-able object; a whole float counts as its int (256.0 as 256)."""
    blob = json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _canonical(obj: Any) -> Any:
    """The typed schema turns ``sample_mb: 256`` into 256.0 for the command line but a Python caller passes
    256: one config, one key (and the caches made before the schema keep theirs)."""
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)
    if isinstance(obj, dict):
        return {key: _canonical(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(value) for value in obj]
    return obj


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


@contextmanager
def file_lock(path: Path):
    """An exclusive lock (flock) so concurrent processes (e.g. DDP ranks) build one entry once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class ShardWriter:
    """Appends sequences to ``<split>-<n>.bin`` shard files of ``shard_sequences`` rows each.

    A shard is written to a temporary file and renamed when full (or at ``close``), with its sha256
    computed on the way, so a finished shard on disk is always complete.
    """

    def __init__(
        self, root: Path, split: str, seq_len: int, dtype: np.dtype, shard_sequences: int, shards=None
    ):
        self.root, self.split, self.seq_len = Path(root), split, seq_len
        self.dtype, self.shard_sequences = np.dtype(dtype), shard_sequences
        self.shards: list[dict[str, Any]] = list(shards or [])
        self._file = None
        self._rows = 0
        self._hash = None

    def room(self) -> int:
        return self.shard_sequences - self._rows

    def write(self, seqs: np.ndarray) -> None:
        """Rows must fit the open shard (``len(seqs) <= room()``)."""
        if not len(seqs):
            return
        if self._file is None:
            self._open()
        data = np.ascontiguousarray(seqs, dtype=self.dtype).tobytes()
        self._file.write(data)
        self._hash.update(data)
        self._rows += len(seqs)

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._tmp = self.root / f".{name}.tmp"
        self._name = name
        self._file = open(self._tmp, "wb")
        self._hash = hashlib.sha256()
        self._rows = 0

    def finish_shard(self) -> dict[str, Any] | None:
        """Close and publish the open shard; returns its manifest record (None if nothing was open)."""
        if self._file is None:
            return None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.root / self._name)
        record = {
            "file": self._name,
            "sequences": self._rows,
            "bytes": self._rows * self.seq_len * self.dtype.itemsize,
            "sha256": self._hash.hexdigest(),
        }
        self.shards.append(record)
        self._file, self._rows = None, 0
        return record

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            Path(self._tmp).unlink(missing_ok=True)
            self._file = None


def stamp_files(root: Path, records: list[dict[str, Any]]) -> None:
    """Record files just written (with their sha256 known) as verified."""
    stamps = {}
    for rec in records:
        stat = (Path(root) / rec["file"]).stat()
        stamps[rec["file"]] = [stat.st_size, stat.st_mtime_ns, rec["sha256"]]
    write_json(Path(root) / VERIFIED, stamps)


def manifest_records(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    records = [rec for split in manifest["splits"].values() for rec in split["shards"]]
    return records + [manifest[k] for k in ("tokenizer", "order") if manifest.get(k)]


def manifest_checksum(manifest: dict[str, Any]) -> str:
    return config_key({k: v for k, v in manifest.items() if k != "checksum"}, length=64)


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    manifest = {**manifest, "checksum": manifest_checksum(manifest)}
    write_json(Path(root) / MANIFEST, manifest)


def verify_files(
    root: Path, records: list[dict[str, Any]], full: bool, stamps: dict | None = None
) -> str | None:
    """The first problem with the listed files (missing, wrong size, wrong sha256), or None.

    ``stamps`` (file -> [size, mtime_ns, sha256]) lists files already hashed: one whose size and mtime are
    unchanged is not hashed again; files hashed now are added to it.
    """
    for rec in records:
        path = Path(root) / rec["file"]
        if not path.is_file():
            return f"{rec['file']} is missing"
        stat = path.stat()
        if stat.st_size != rec["bytes"]:
            return f"{rec['file']} has {stat.st_size} bytes, the manifest says {rec['bytes']}"
        if not full:
            continue
        stamp = [stat.st_size, stat.st_mtime_ns, rec["sha256"]]
        if stamps is not None and stamps.get(rec["file"]) == stamp:
            continue
        if file_sha256(path) != rec["sha256"]:
            return f"{rec['file']} does not match its sha256"
        if stamps is not None:
            stamps[rec["file"]] = stamp
    return None


def read_manifest(root: Path, full: bool) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, None) if the entry is finished and intact; (None, reason) if unfinished or damaged."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None, "no manifest (unfinished or absent)"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return None, f"manifest unreadable ({err})"
    if manifest.get("checksum") != manifest_checksum(manifest):
        return None, "manifest checksum mismatch"
    records = manifest_records(manifest)
    # Hashing every shard on every start is slow for big corpora: remember what was verified, by stat.
    stamp_path = Path(root) / VERIFIED
    try:
        stamps = json.loads(stamp_path.read_text()) if stamp_path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        stamps = {}
    before = dict(stamps)
    problem = verify_files(root, records, full, stamps)
    if problem:
        stamp_path.unlink(missing_ok=True)
        return None, problem
    if stamps != before:
        try:
            write_json(stamp_path, stamps)
        except OSError:  # a read-only cache is still usable
            pass
    return manifest, None


def file_record(root: Path, name: str) -> dict[str, Any]:
    path = Path(root) / name
    return {"file": name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
