"""The index folder: a finished index is whatever ``index.json`` names, and nothing else.

Layout::

    INDEX_DIR/
      index.json                the manifest, written last by an atomic rename: its presence
                                marks a finished index, and it names the folder that holds it
      v-<build id>/
        index.faiss             the merged faiss index
        index.ivfdata           its inverted lists, for on-disk indexes only
        ids/part-00000.parquet  the id table: one file per input partition (faiss id -> row)
      _build/                   a build in progress (resumable): build.json, trained.faiss,
                                shards/shard-00000.faiss, ids/part-00000.parquet

A build works in ``_build/``; when every shard is merged, ``_build`` is renamed to a new
``v-<id>`` folder and ``index.json`` is replaced (``os.replace``) to point at it; only then is
the previous version removed. A killed build therefore never leaves a half-built index that
loads: readers see the previous finished index, or none.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

__all__ = [
    "BUILD_DIR",
    "FORMAT",
    "MANIFEST",
    "IndexNotFoundError",
    "atomic_write_bytes",
    "atomic_write_json",
    "finish",
    "id_part_name",
    "read_manifest",
    "shard_name",
    "version_dir",
]

MANIFEST = "index.json"
BUILD_DIR = "_build"
FORMAT = "dask_clip.index/1"
INDEX_FILE = "index.faiss"
IVFDATA_FILE = "index.ivfdata"
TRAINED_FILE = "trained.faiss"
BUILD_JOB = "build.json"


class IndexNotFoundError(FileNotFoundError):
    """The folder holds no finished index (never built, or a build is still under way)."""


def _width(npartitions: int) -> int:
    return max(5, len(str(max(npartitions - 1, 0))))


def shard_name(partition: int, npartitions: int) -> str:
    """``shard-00007.faiss``: zero-padded so that name order is partition order."""
    return f"shard-{partition:0{_width(npartitions)}d}.faiss"


def id_part_name(partition: int, npartitions: int) -> str:
    """``part-00007.parquet``: zero-padded so that name order is partition order."""
    return f"part-{partition:0{_width(npartitions)}d}.parquet"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a hidden temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    """JSON (sorted keys, indented) written atomically."""
    atomic_write_bytes(path, json.dumps(value, indent=2, sort_keys=True, default=str).encode())


def read_manifest(index_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the finished index in ``index_dir``.

    Raises
    ------
    IndexNotFoundError
        No ``index.json`` (no finished index: a build may be under way or was interrupted;
        running it again resumes it), or it names a version folder that is missing.
    ValueError
        ``index.json`` is not a dask_clip index manifest.
    """
    root = Path(index_dir)
    path = root / MANIFEST
    if not path.is_file():
        building = (root / BUILD_DIR).is_dir()
        hint = (
            " A build is under way there or was interrupted: run it again to resume it."
            if building
            else " Build one with dask_clip.index.build (dask-clip index)."
        )
        raise IndexNotFoundError(f"{os.fspath(index_dir)!r} holds no finished index ({MANIFEST} is missing).{hint}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a dask_clip index manifest (format {manifest.get('format')!r})")
    if not (root / manifest["version"]).is_dir():
        raise IndexNotFoundError(f"{path} names {manifest['version']!r}, which is missing")
    return manifest


def version_dir(index_dir: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """The folder holding the index files that ``manifest`` describes."""
    return Path(index_dir) / manifest["version"]


def finish(index_dir: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Publish ``_build`` as a new version: rename it, point ``index.json`` at it, drop the old.

    ``manifest`` gets its ``version`` and ``format`` set here.

    Returns
    -------
    Path
        The new version folder.
    """
    root = Path(index_dir)
    version = f"v-{uuid.uuid4().hex[:12]}"
    os.replace(root / BUILD_DIR, root / version)
    manifest = {**manifest, "format": FORMAT, "version": version}
    atomic_write_json(root / MANIFEST, manifest)  # the commit point
    # The previous version, and any orphan of a build killed between its rename and its manifest.
    for entry in root.iterdir():
        if entry.is_dir() and entry.name.startswith("v-") and entry.name != version:
            shutil.rmtree(entry, ignore_errors=True)
    return root / version
