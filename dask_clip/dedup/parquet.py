"""Parquet in, Parquet out: the function behind ``dask-clip dedup INPUT OUTPUT``.

Built for inputs larger than memory: k-means trains on a bounded sample, every step works on
one partition or one cluster block at a time (:mod:`.budget`), the cluster shuffle goes
through disk (distributed's P2P shuffle spills to disk; without a distributed client Dask
shuffles through partd on disk), and the per-row results (tens of bytes a row) are computed
and kept first, so the input is read once more to attach them and write the output, instead of
being held in memory from the assign step until the results come back.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from fsspec.core import url_to_fs

from ..io.file_metadata import carried, read_file_metadata
from ..io.writers.base import _input_roots, check_not_input, location
from ..io.writers.parquet import write_tasks
from ..validation import check_eps
from . import _frame
from .results import DEFAULT_SUMMARY_EPS, summary_frame, summary_parts
from .workflow import OUTPUT_COLUMNS, attach_results, cluster_results, prepare

__all__ = ["ROW_NUMBER", "SUMMARY_FILE", "check_dedup_paths", "dedup_parquet", "with_row_numbers"]

ROW_NUMBER = "row"
#: The summary of a finished run, next to its part files (read back by a rerun).
SUMMARY_FILE = "_dedup_summary.json"
# How the work is done, not what it gives: a rerun may change these.
_NOT_IN_JOB = ("npartitions", "device", "shuffle_method", "block_size")


def _number_rows(df: pd.DataFrame, offsets: np.ndarray, partition_info: dict | None = None) -> Any:
    start = int(offsets[partition_info["number"]]) if partition_info is not None else 0
    out = df.copy(deep=False)
    out.index = pd.RangeIndex(start, start + len(df), name=ROW_NUMBER)
    return out


def with_row_numbers(ddf: Any) -> Any:
    """``ddf`` with its global row number (0, 1, ... in input order) as the index ``row``.

    Costs one pass over ``ddf`` to count the rows of every partition.
    """
    import dask

    ddf = _frame.settle_partitions(ddf)
    lengths = _frame.partition_lengths(ddf)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    meta = _number_rows(ddf._meta, offsets)
    return ddf.map_partitions(_number_rows, offsets=dask.delayed(offsets, traverse=False), meta=meta)


def persist_and_wait(collection: Any) -> Any:
    """``collection.persist()``, returning once it is computed (also on a distributed cluster)."""
    from distributed import futures_of, wait

    persisted = collection.persist()
    if futures_of(persisted):
        wait(persisted)
    return persisted


def check_dedup_paths(input_path: str | os.PathLike | Sequence[str | os.PathLike], output_path: str) -> None:
    """ValueError when the output folder is, contains or lies inside an input: checked before
    anything runs (a cluster start, the whole dedup), as ``embed`` checks its paths.

    (The writer checks again before it writes or removes anything.)
    """
    inputs = [input_path] if isinstance(input_path, (str, os.PathLike)) else list(input_path)
    check_not_input(location(output_path), _input_roots({"input": [location(p) for p in inputs]}))
    _check_same_model(inputs)


def _check_same_model(inputs: Sequence[str | os.PathLike]) -> None:
    """Refuse to dedup embeddings folders whose manifests record different models or weights
    (their vectors live in different spaces; the similarities between them mean nothing)."""
    import json

    seen: dict[str, tuple[Any, Any]] = {}
    for given in inputs:
        manifest = os.path.join(os.fspath(given), "_dask_clip.json")
        if "://" in os.fspath(given) or not os.path.isfile(manifest):
            continue  # a file, a glob, a remote folder or another writer's: nothing recorded to compare
        try:
            job = json.loads(Path(manifest).read_text(encoding="utf-8")).get("job") or {}
        except (OSError, ValueError, AttributeError):
            continue
        seen[os.fspath(given)] = (job.get("model"), job.get("weights"))
    if len(set(map(json.dumps, seen.values()))) > 1:
        listed = "; ".join(f"{path}: model {m!r}, weights {w}" for path, (m, w) in seen.items())
        raise ValueError(
            f"the inputs were embedded by different models or weights ({listed}): their similarities are "
            "meaningless — embed them again with one model, or dedup each on its own"
        )


def dedup_parquet(
    input_path: str | Sequence[str],
    output_path: str,
    *,
    eps: float = 0.01,
    n_clusters: int = 1000,
    embedding_column: str = "embedding",
    id_column: str | None = None,
    drop_duplicates: bool = False,
    summary_eps: Sequence[float] | None = None,
    storage_options: dict | None = None,
    overwrite: bool = False,
    columns: Sequence[str] | None = None,
    max_memory: int | str | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Read an embeddings Parquet dataset, run :func:`semantic_dedup`, write Parquet.

    Parameters
    ----------
    input_path
        Parquet file(s) or directory with ``embedding_column`` (``list<float32>``), read with
        ``dd.read_parquet(..., dtype_backend="pyarrow")``.
    output_path
        Output folder: one ``part-NNNNN.parquet`` per partition, written atomically with
        metadata that plain ``pd.read_parquet`` reads back (:mod:`dask_clip.io.writers.parquet`).
    eps, n_clusters, embedding_column, id_column
        As in :func:`semantic_dedup`. Without ``id_column``, and where the input has no stored
        index, rows are numbered 0, 1, ... in input order; that number is written as the
        column ``row`` and is what ``duplicate_of`` refers to.
    drop_duplicates
        Write only the kept rows; default: every row, with the dedup columns.
    summary_eps
        eps values of the returned summary; default 0.001, 0.01, 0.05 and ``eps``.
    storage_options, overwrite
        Passed to ``read_parquet`` / ``to_parquet``.
    columns
        Input columns to write next to the dedup columns; default: all of them. Leave the
        embedding column out to write only ids and flags.
    max_memory
        Memory budget of one task (bytes or a string such as ``"4GiB"``), as in
        :func:`semantic_dedup`.
    **kwargs
        Other :func:`semantic_dedup` arguments (``which_to_keep``, ``seed``, ``max_iter``,
        ``max_train_rows``, ``block_size``, ``npartitions``, ``device``, ``shuffle_method``,
        ``border_aware``, ``border_margin``).

    Returns
    -------
    pandas.DataFrame
        :func:`~dask_clip.dedup.dedup_summary` of the run, computed in the same pass as the
        write.
    """
    import dask

    check_dedup_paths(input_path, output_path)
    eps = check_eps(eps)
    summary_eps = sorted({*(summary_eps or DEFAULT_SUMMARY_EPS), eps})
    for e in summary_eps:
        check_eps(e)
    from ..io.outputs import read_output  # Parquet, the LAION layout or Lance

    ddf = read_output(input_path, storage_options)
    meta_index = ddf._meta.index
    if id_column is None and meta_index.name is None and isinstance(meta_index, pd.RangeIndex):
        ddf = with_row_numbers(ddf)
    if columns is not None:
        missing = [c for c in columns if c not in ddf.columns]
        if missing:
            raise ValueError(f"columns {missing} are not in the input; columns are {list(ddf.columns)}")
    plan = prepare(
        ddf,
        embedding_column=embedding_column,
        n_clusters=n_clusters,
        eps=eps,
        id_column=id_column,
        max_memory=max_memory,
        **kwargs,
    )
    # The results first, kept (small); then the input is read again to attach them. One graph
    # for both would hold every input partition from its assign task until its attach task.
    results = persist_and_wait(cluster_results(plan))
    result = attach_results(plan, results)
    if columns is not None:
        result = result[[*columns, *OUTPUT_COLUMNS]]
    out = result[~result["duplicate"]] if drop_duplicates else result
    # What defines the output: a rerun into the same folder must agree, or it is refused.
    inputs = [input_path] if isinstance(input_path, (str, os.PathLike)) else list(input_path)
    job = {
        "command": "dedup",
        "input": [location(p) for p in inputs],
        "eps": eps,
        "n_clusters": n_clusters,
        "embedding_column": embedding_column,
        "id_column": id_column,
        "drop_duplicates": drop_duplicates,
        "summary_eps": summary_eps,
        **{k: v for k, v in kwargs.items() if k not in _NOT_IN_JOB},
    }
    # dask_clip's writer: atomic part files whose metadata plain pandas can read back; a rerun
    # writes only the files still missing (the dedup itself is recomputed: it needs every row).
    writes = write_tasks(
        out,
        output_path,
        overwrite=overwrite,
        job=job,
        storage_options=storage_options,
        # the image and key columns the input recorded, where the output still has them
        file_metadata=carried(read_file_metadata(input_path, storage_options), out.columns),
    )
    fs, root = url_to_fs(os.fspath(output_path), **(storage_options or {}))
    summary_file = f"{root.rstrip('/')}/{SUMMARY_FILE}"
    if not writes and fs.exists(summary_file):
        return pd.read_json(io.StringIO(fs.cat_file(summary_file).decode()), orient="table")
    stats, sizes = summary_parts(result, summary_eps)
    _, stats, sizes = dask.compute(writes, stats, sizes)  # one pass: writes and summary
    summary = summary_frame(stats, sizes, summary_eps)
    with fs.open(summary_file, "w") as f:
        f.write(summary.to_json(orient="table"))
    return summary
