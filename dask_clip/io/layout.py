"""Which dask_clip output format a folder holds, from one listing (no dask_clip imports: the
Parquet writer's modules use it too)."""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["output_format"]


def output_format(path: Any, storage_options: dict | None = None) -> str:
    """``"laion"``, ``"lance"`` or ``"parquet"`` (also for a file, a glob, a list or a URL
    that cannot be listed)."""
    if not isinstance(path, (str, os.PathLike)):
        return "parquet"
    from fsspec.core import url_to_fs

    try:
        fs, root = url_to_fs(os.fspath(path), **(storage_options or {}))
        if not fs.isdir(root):
            return "parquet"
        names = {os.path.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)}
        if "_dask_clip.json" in names:
            manifest = json.loads(fs.cat_file(f"{root.rstrip('/')}/_dask_clip.json"))
            if isinstance(manifest, dict) and manifest.get("format") in ("laion", "lance"):
                return str(manifest["format"])
    except (OSError, ValueError):
        return "parquet"
    if {"img_emb", "metadata"} <= names:
        return "laion"
    if "_versions" in names:
        return "lance"
    return "parquet"
