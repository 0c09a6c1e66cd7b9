"""Step 3: add each partition's vectors on the workers, into one shard file per partition.

Each task reads the trained, empty index from ``_build/trained.faiss`` (so every shard shares
its quantiser and the shards merge), adds the partition's usable, L2-normalised embeddings
with their ids (``partition << 40 | row``), and writes, each atomically:

1. ``_build/ids/part-NNNNN.parquet``: the id-table rows of the partition, with the partition's
   row and null counts in the file's metadata; a table holding image bytes is written in row
   groups of IMAGE_ROW_GROUP rows, so that one image is read without its partition's others
   (:meth:`~dask_clip.index.search.SearchIndex.image`);
2. ``_build/shards/shard-NNNNN.faiss``: the shard — written last, it marks the partition done.

A rerun of the same build skips the partitions whose shard exists (resume).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import layout
from .ids import id_part
from .train import embedding_matrix, import_faiss

__all__ = ["PART_STATS_KEY", "add_partition", "add_tasks", "done_partitions", "part_stats"]

PART_STATS_KEY = b"dask_clip.index"
# Rows per Parquet row group of an id part that holds image bytes: reading one image for the
# browse page reads its row group (~2 MB of 30 KB web images), not the whole partition.
IMAGE_ROW_GROUP = 64


def add_partition(
    df: pd.DataFrame,
    partition: int,
    *,
    build_dir: str,
    npartitions: int,
    embedding_column: str,
    columns: Sequence[str],
    arrow_types: Mapping[str, Any],
) -> dict[str, int]:
    """Index one partition: write its id-table part and its shard (see the module docstring).

    Returns
    -------
    dict
        ``rows`` (in the partition), ``vectors`` (added), ``null_embeddings`` and
        ``invalid_embeddings`` (not null, but non-finite or all zero), ``dim``, ``partition``.
    """
    from ..io.writers.arrow import to_arrow

    faiss = import_faiss()
    if hasattr(df, "to_pandas"):  # cuDF partitions: the index is built on the CPU
        df = df.to_pandas()
    root = Path(build_dir)
    x, valid, nulls = embedding_matrix(df[embedding_column])
    index = faiss.read_index(str(root / layout.TRAINED_FILE))
    if x.shape[0] and x.shape[1] != index.d:
        raise ValueError(f"partition {partition} has {x.shape[1]}-d embeddings; the index was trained on {index.d}-d")
    part = id_part(df, partition, valid, columns)
    if x.shape[0]:
        index.add_with_ids(x, part["id"].to_numpy())
    stats = {
        "rows": len(df),
        "vectors": int(x.shape[0]),
        "null_embeddings": nulls,
        "invalid_embeddings": len(df) - nulls - int(x.shape[0]),
    }
    table = to_arrow(part, arrow_types)
    metadata = {**(table.schema.metadata or {}), PART_STATS_KEY: json.dumps(stats).encode()}
    binary = any(pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) for f in table.schema)
    _write_parquet(
        table.replace_schema_metadata(metadata),
        root / "ids" / layout.id_part_name(partition, npartitions),
        row_group_size=IMAGE_ROW_GROUP if binary else None,
    )
    _write_index(faiss, index, root / "shards" / layout.shard_name(partition, npartitions))
    return {**stats, "dim": int(index.d), "partition": partition}


def _write_parquet(table: Any, path: Path, row_group_size: int | None = None) -> None:
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, temp, row_group_size=row_group_size)
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def _write_index(faiss: Any, index: Any, path: Path) -> None:
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        faiss.write_index(index, str(temp))
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def part_stats(path: str | os.PathLike) -> dict[str, int]:
    """The counts :func:`add_partition` stored in an id-table part's metadata (footer only)."""
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata[PART_STATS_KEY])


def done_partitions(build_dir: str | os.PathLike, npartitions: int) -> list[int]:
    """Partitions whose shard and id part both exist in ``build_dir``."""
    root = Path(build_dir)
    return [
        i
        for i in range(npartitions)
        if (root / "shards" / layout.shard_name(i, npartitions)).is_file()
        and (root / "ids" / layout.id_part_name(i, npartitions)).is_file()
    ]


def add_tasks(
    ddf: Any,
    build_dir: str | os.PathLike,
    embedding_column: str,
    columns: Sequence[str],
    todo: Sequence[int],
) -> list[Any]:
    """One lazy :func:`add_partition` per partition in ``todo`` (``dask.delayed``)."""
    import dask

    from ..io.writers.arrow import arrow_types

    root = Path(build_dir)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    (root / "ids").mkdir(parents=True, exist_ok=True)
    for folder in (root / "shards", root / "ids"):  # temporaries of killed tasks
        for leftover in folder.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
    meta = ddf._meta.to_pandas() if hasattr(ddf._meta, "to_pandas") else ddf._meta  # cuDF
    types = arrow_types(meta[list(columns)]) if columns else {}
    parts = ddf.to_delayed()
    n = len(parts)
    add = dask.delayed(add_partition, pure=False)
    stamp = uuid.uuid4().hex  # a unique key per call; the dashboard shows "index_add"
    return [
        add(
            parts[i],
            i,
            build_dir=str(root),
            npartitions=n,
            embedding_column=embedding_column,
            columns=list(columns),
            arrow_types=types,
            dask_key_name=f"index_add-{stamp}-{i}",
        )
        for i in todo
    ]
