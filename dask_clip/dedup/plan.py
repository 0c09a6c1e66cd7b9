"""Dedup as curation pipelines run it: exact bytes, then perceptual hash, then semantic, in order.

Each step sees only the rows the steps before it kept; what a step flags goes into one removal
list, ``(id, duplicate_of, step, similarity)``, the shape NeMo Curator's dedup writes (its
``id`` column is the ``id_column`` here), and :func:`drop_duplicates` is the join that applies
it. Each finished step's removals are written to ``checkpoint/steps/STEP.parquet``: a rerun
reads them back instead of running the step again (resume).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["REMOVAL_COLUMNS", "STEPS", "dedup_steps", "drop_duplicates", "removal_list"]

STEPS = ("exact", "phash", "semantic")
REMOVAL_COLUMNS = ("id", "duplicate_of", "step", "similarity")

# each step's output columns: (flag, partner, similarity or None for identical bytes)
_STEP_COLUMNS = {
    "exact": ("exact_duplicate", "exact_duplicate_of", None),
    "phash": ("duplicate", "duplicate_of", "max_similarity"),
    "semantic": ("duplicate", "duplicate_of", "max_similarity"),
}


def _ids(df: pd.DataFrame, id_column: str | None) -> pd.Series:
    return df[id_column] if id_column is not None else df.index.to_series(index=df.index)


def removal_list(out: Any, step: str, id_column: str | None = None) -> pd.DataFrame:
    """The rows a step flagged, computed: ``id``, ``duplicate_of``, ``step``, ``similarity``.

    Parameters
    ----------
    out
        Output of :func:`~dask_clip.dedup.exact_duplicates`,
        :func:`~dask_clip.dedup.phash.phash_duplicates` or
        :func:`~dask_clip.dedup.semantic_dedup` (Dask or pandas).
    step
        ``"exact"``, ``"phash"`` or ``"semantic"``.
    id_column
        Column holding the ids; ``None``: the index labels.

    Returns
    -------
    pandas.DataFrame
        One row per flagged row; ``similarity`` float32 (1 for identical bytes, ``1 - d / 64``
        for hashes, the cosine for embeddings).
    """
    flag, partner, sim = _STEP_COLUMNS[step]

    def pick(df: Any) -> pd.DataFrame:
        hit = df[df[flag].fillna(False).astype(bool)]
        return pd.DataFrame(
            {
                "id": _ids(hit, id_column).to_numpy(),
                "duplicate_of": hit[partner].to_numpy(),
                "step": step,
                "similarity": np.ones(len(hit), np.float32) if sim is None else hit[sim].to_numpy(np.float32),
            }
        )

    if hasattr(out, "map_partitions"):
        meta = pick(out._meta)
        return out.map_partitions(pick, meta=meta).compute().reset_index(drop=True)
    return pick(out)


def drop_duplicates(ddf: Any, removal: pd.DataFrame, id_column: str | None = None) -> Any:
    """The rows of ``ddf`` whose id is not in ``removal["id"]`` (lazily, order kept).

    Parameters
    ----------
    ddf
        Dask DataFrame (or pandas DataFrame).
    removal
        A removal list (:func:`removal_list`, ``duplicates.parquet``): its ``id`` column.
        From NeMo Curator, pass its removal ids as a frame with an ``id`` column.
    id_column
        Column of ``ddf`` holding the ids; ``None``: the index labels.
    """
    import dask

    ids = pd.Index(pd.Series(removal["id"]).dropna().unique())

    def keep(df: pd.DataFrame, drop: pd.Index) -> pd.DataFrame:
        return df[~_ids(df, id_column).isin(drop).to_numpy()]

    if not hasattr(ddf, "map_partitions"):
        return keep(ddf, ids)
    if id_column is not None and id_column not in ddf.columns:
        raise ValueError(f"no id column {id_column!r}; columns: {list(ddf.columns)}")
    return ddf.map_partitions(keep, dask.delayed(ids, traverse=False), meta=ddf._meta)


def _run_step(
    step: str,
    ddf: Any,
    *,
    id_column: str | None,
    image_column: str,
    hash_column: str,
    embedding_column: str,
    k: int,
    semantic: Mapping[str, Any],
) -> pd.DataFrame:
    from .exact import exact_duplicates
    from .phash import image_hashes, phash_duplicates
    from .workflow import semantic_dedup

    if step == "exact":
        out = exact_duplicates(ddf, image_column, id_column=id_column)
    elif step == "phash":
        if hash_column not in ddf.columns:
            ddf = image_hashes(ddf, image_column=image_column, kinds=(hash_column,))
        out = phash_duplicates(ddf, hash_column=hash_column, k=k, id_column=id_column)
    else:
        out = semantic_dedup(ddf, embedding_column=embedding_column, id_column=id_column, **semantic)
    return removal_list(out, step, id_column)


def dedup_steps(
    ddf: Any,
    steps: Sequence[str] = STEPS,
    *,
    id_column: str | None = None,
    image_column: str = "image",
    hash_column: str = "phash",
    embedding_column: str = "embedding",
    k: int = 6,
    checkpoint: str | os.PathLike | None = None,
    **semantic: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run dedup steps in order, each on the rows the earlier ones kept.

    Parameters
    ----------
    ddf
        Dask DataFrame with the columns the steps read: ``image_column`` (encoded bytes) for
        ``"exact"`` (and for ``"phash"`` when ``hash_column`` is absent), ``hash_column``
        (``uint64``, e.g. from ``dask-clip embed --phash``) for ``"phash"``,
        ``embedding_column`` for ``"semantic"``. Persist it (or read it from Parquet) first: every
        step reads it again.
    steps
        Names among :data:`STEPS`, in the order to run.
    id_column
        Column naming rows in the removal list; ``None``: index labels (unique ones).
    k
        Hamming threshold of the ``"phash"`` step.
    checkpoint
        Folder: each finished step's removals go to ``steps/STEP.parquet`` there, and a rerun
        reads them instead of running the step again.
    **semantic
        Passed to :func:`~dask_clip.dedup.semantic_dedup` (``eps``, ``n_clusters``, ...).

    Returns
    -------
    removal : pandas.DataFrame
        :data:`REMOVAL_COLUMNS`, every step's flagged rows.
    summary : pandas.DataFrame
        One row per step: ``step``, ``rows_in``, ``duplicates``, ``seconds`` (``resumed`` where
        read back from the checkpoint).
    """
    steps = list(steps)
    for s in steps:
        if s not in STEPS:
            raise ValueError(f"steps must be among {STEPS}, not {s!r}")
    if len(set(steps)) != len(steps):
        raise ValueError(f"a step is named twice in {steps}")
    removals: list[pd.DataFrame] = []
    rows: list[dict[str, Any]] = []
    for step in steps:
        path = None if checkpoint is None else os.path.join(os.fspath(checkpoint), "steps", f"{step}.parquet")
        current = drop_duplicates(ddf, pd.concat(removals), id_column) if removals else ddf
        start = time.perf_counter()
        if path is not None and os.path.exists(path):
            import pyarrow.parquet as pq

            removal = pd.read_parquet(path)
            rows_in = int((pq.read_schema(path).metadata or {}).get(b"rows_in", b"-1"))
            resumed = True
        else:
            rows_in = int(current.map_partitions(len).compute().sum())
            removal = _run_step(
                step,
                current,
                id_column=id_column,
                image_column=image_column,
                hash_column=hash_column,
                embedding_column=embedding_column,
                k=k,
                semantic=semantic,
            )
            resumed = False
            if path is not None:
                _write_atomic(removal, path, rows_in)
        removals.append(removal)
        rows.append(
            {
                "step": step,
                "rows_in": rows_in,
                "duplicates": len(removal),
                "seconds": round(time.perf_counter() - start, 3),
                "resumed": resumed,
            }
        )
    removal = pd.concat(removals, ignore_index=True) if removals else pd.DataFrame(columns=list(REMOVAL_COLUMNS))
    return removal, pd.DataFrame(rows)


def _write_atomic(removal: pd.DataFrame, path: str, rows_in: int) -> None:
    """``removal`` to ``path`` through a temporary file and a rename, with ``rows_in`` in its metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.dirname(path), exist_ok=True)
    table = pa.Table.from_pandas(removal, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"rows_in": str(rows_in).encode()})
    tmp = f"{path}.tmp-{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, path)
