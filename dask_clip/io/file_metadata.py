"""What a dask_clip Parquet file says about itself, in its own key-value metadata.

Every file ``dask-clip embed`` writes carries one JSON entry under the key ``dask_clip`` in the
Parquet footer's key-value metadata: a dict to which any step may add keys. Recorded today:

- ``image_column``: the column the images were read from (bytes, or paths/URLs);
- ``key_column``: the column naming rows (``key`` for img2dataset and WebDataset inputs, the
  file ``path`` for a folder of images).

``dask-clip index``, ``search``, ``serve``, ``filter`` and ``dedup`` read it, so the README's
commands need no ``--image-column``/``--key-column``; an explicit option always wins. The entry
travels with the file (a copy, a move, a ``filter`` or ``dedup`` output), unlike a side file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["KEY", "carried", "read_file_metadata", "with_file_metadata"]

KEY = b"dask_clip"


def with_file_metadata(metadata: Mapping[bytes, bytes] | None, entries: Mapping[str, Any]) -> dict[bytes, bytes]:
    """Schema metadata with ``entries`` merged into its ``dask_clip`` dict.

    Parameters
    ----------
    metadata
        An Arrow schema's metadata (``schema.metadata``), or None.
    entries
        JSON-able values; None values are left out.

    Returns
    -------
    dict of bytes to bytes
    """
    out = dict(metadata or {})
    record = _decode(out.get(KEY))
    record.update({k: v for k, v in entries.items() if v is not None})
    out[KEY] = json.dumps(record, sort_keys=True).encode()
    return out


def _decode(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def read_file_metadata(path: Any, storage_options: dict | None = None) -> dict[str, Any]:
    """The ``dask_clip`` entry of a Parquet file, or of the first ``*.parquet`` file of a folder
    (of ``metadata/`` in the LAION layout; a Lance dataset's schema metadata).

    Parameters
    ----------
    path
        A Parquet file or folder, local or an fsspec URL; a list (its first item), or anything
        else (a DataFrame: nothing recorded).
    storage_options
        fsspec options for a URL.

    Returns
    -------
    dict
        Empty where nothing is recorded, or where ``path`` is not a readable Parquet file or folder.
    """
    if isinstance(path, (list, tuple)):
        path = path[0] if path else None
    if not isinstance(path, (str, os.PathLike)):
        return {}
    import pyarrow.parquet as pq
    from fsspec.core import url_to_fs

    from .layout import output_format

    fmt = output_format(path, storage_options)
    if fmt == "lance":  # the dataset's schema metadata (dask_clip.io.writers.lance)
        try:
            import lance
        except ImportError:  # reading the dataset says how to install pylance
            return {}
        return _decode((lance.dataset(os.fspath(path)).schema.metadata or {}).get(KEY))
    if fmt == "laion":  # the files of metadata/ (dask_clip.io.writers.laion)
        path = f"{os.fspath(path).rstrip('/')}/metadata"
    try:
        fs, root = url_to_fs(os.fspath(path), **(storage_options or {}))
        if fs.isdir(root):
            names = fs.ls(root, detail=False)
            files = sorted(p for p in names if p.endswith(".parquet") and not os.path.basename(p).startswith("."))
            if not files:
                return {}
            root = files[0]
        with fs.open(root, "rb") as f:
            schema = pq.read_schema(f)
    except (OSError, ValueError):  # a glob, a missing path, a file that is not Parquet
        return {}
    return _decode((schema.metadata or {}).get(KEY))


def carried(recorded: Mapping[str, Any], columns: Any) -> dict[str, Any]:
    """What an input's entry says that still holds for an output with ``columns``: every
    ``*_column`` entry naming a column the output no longer has is left out."""
    names = {str(c) for c in columns}
    return {k: v for k, v in recorded.items() if not (k.endswith("_column") and v not in names)}
