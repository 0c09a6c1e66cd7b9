"""Parquet, the default output format: one file per partition, written atomically, finished files kept.

Output layout::

    OUTPUT/
      _dask_clip.json          what wrote the folder: format, partitions and the job's settings
      part-00000.parquet       partition 0, complete or absent
      part-00001.parquet
      ...

Each partition is written to a hidden temporary file and renamed into place, so a file named
``part-*.parquet`` is complete: it is the commit marker. Resume, the manifest, the input
overlap check and ``overwrite`` (which removes only the part files the manifest says this
writer made; other files stay, and part files no manifest describes are refused) are the
shared driver's (:mod:`dask_clip.io.writers.partitioned`).

The files read back with ``pd.read_parquet``, ``dd.read_parquet``, pyarrow and DuckDB, with
``list<float32>`` embeddings: the pandas metadata of list columns says ``object``, working
around pandas#57411 (pandas cannot parse the dtype string pyarrow stores for
``list<float32>[pyarrow]`` columns). Pass ``dtype_backend="pyarrow"`` to the pandas and Dask
readers to get the Arrow dtype back instead of object arrays.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from .base import MANIFEST, OutputFormat, WriteSummary, _listing, _open, put, read_manifest
from .partitioned import check_format_output, format_tasks, ours, write_format

if TYPE_CHECKING:
    import dask.dataframe as dd

    from ...embed.embedder import ImageEmbedder

__all__ = [
    "FORMAT",
    "ParquetFormat",
    "check_output",
    "looks_complete",
    "part_name",
    "remove_temporaries",
    "write_parquet",
    "write_tasks",
]

_PART = re.compile(r"^part-(\d+)\.parquet$")
_TEMP = re.compile(r"^\.(part-\d+\.parquet|_dask_clip\.json)\..*\.tmp$")


def part_name(index: int, npartitions: int) -> str:
    """``part-00007.parquet``: zero-padded so that name order is partition order."""
    width = max(5, len(str(max(npartitions - 1, 0))))
    return f"part-{index:0{width}d}.parquet"


def _described(manifest: Mapping[str, Any] | None) -> set[str]:
    """The part files a manifest of this writer describes."""
    if manifest is None or ours(manifest) is None:
        return set()
    n = manifest.get("npartitions")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        return set()
    return {part_name(i, n) for i in range(n)}


@dataclass(frozen=True)
class ParquetFormat:
    """Parquet as a :class:`~dask_clip.io.writers.partitioned.PartitionFormat`: ``part-NNNNN.parquet``."""

    name: str = field(default="parquet", init=False)

    @property
    def options(self) -> dict[str, Any]:
        return {}

    def foreign(self, fs: Any, root: str, names: list[str], manifest: Mapping[str, Any] | None) -> list[str]:
        # other files (notes, a README) may sit beside the output; part files must be ours
        return sorted({n for n in names if _PART.match(n)} - _described(manifest))

    def prepare(self, fs: Any, root: str, npartitions: int, overwrite: bool) -> None:
        names = _listing(fs, root)
        mine = _described(read_manifest(fs, root)) if (overwrite and MANIFEST in names) else set()
        for name in names:
            if _TEMP.match(name) or name in mine:
                fs.rm(f"{root}/{name}")

    def committed(self, fs: Any, root: str, npartitions: int) -> set[int]:
        present = set(_listing(fs, root))
        return {i for i in range(npartitions) if part_name(i, npartitions) in present}

    def write_partition(self, table: pa.Table, fs: Any, root: str, index: int, npartitions: int) -> dict[str, int]:
        import pyarrow.parquet as pq

        put(fs, root, part_name(index, npartitions), lambda f: pq.write_table(table, f))
        return {}

    def finish(self, fs: Any, root: str, npartitions: int) -> None:
        pass


PARQUET = ParquetFormat()


def _build(embedder: ImageEmbedder, options: Mapping[str, Any]) -> ParquetFormat:
    return PARQUET


FORMAT = OutputFormat("parquet", _build, "part-NNNNN.parquet, one file per partition", priority=0)


def check_output(
    path: str | os.PathLike,
    npartitions: int,
    *,
    job: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> list[int]:
    """Check that ``path`` can take this job's Parquet output; return the partitions still to write.

    Reads only; see :func:`~dask_clip.io.writers.partitioned.check_format_output`.
    """
    return check_format_output(
        path, npartitions, PARQUET, job=job, overwrite=overwrite, storage_options=storage_options
    )


def looks_complete(path: str | os.PathLike, storage_options: dict | None = None) -> bool:
    """Whether ``path`` holds a manifest of this writer and every part file it describes.

    A cheap look (one listing, one small read) before anything else runs: the CLI then plans
    the job before starting a cluster, which a finished output does not need. It does not say
    that the output is of the same job: :func:`check_output` does.
    """
    fs, root = _open(path, storage_options)
    names = _listing(fs, root)
    if MANIFEST not in names:
        return False
    described = _described(read_manifest(fs, root))
    return bool(described) and described <= set(names)


def remove_temporaries(path: str | os.PathLike, storage_options: dict | None = None) -> int:
    """Remove the temporary files a killed run left in an output folder; returns how many."""
    fs, root = _open(path, storage_options)
    stale = [n for n in _listing(fs, root) if _TEMP.match(n)]
    for name in stale:
        fs.rm(f"{root}/{name}")
    return len(stale)


def write_tasks(
    ddf: dd.DataFrame,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    job: Mapping[str, Any] | None = None,
    partition_stats: Callable[[pd.DataFrame], Mapping[str, int]] | None = None,
    storage_options: dict | None = None,
    file_metadata: Mapping[str, Any] | None = None,
) -> list[Any]:
    """Prepare ``path`` and return one lazy write per partition still missing there.

    The building block of :func:`write_parquet`, for callers that compute the writes together
    with other results in one pass over the data (``dask.compute(tasks, ...)``). Each partition
    is written by the task that computes it (fused), atomically, as ``part-NNNNN.parquet``; each
    returned task gives ``{"rows": n, **partition_stats(df)}``. ``file_metadata``: as
    :func:`write_parquet`.

    Returns
    -------
    list of dask.delayed.Delayed
    """
    return format_tasks(
        ddf,
        path,
        PARQUET,
        overwrite=overwrite,
        job=job,
        partition_stats=partition_stats,
        storage_options=storage_options,
        file_metadata=file_metadata,
    )


def write_parquet(
    ddf: dd.DataFrame,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    job: Mapping[str, Any] | None = None,
    partition_stats: Callable[[pd.DataFrame], Mapping[str, int]] | None = None,
    progress: bool = False,
    client: Any = None,
    retries: int = 0,
    storage_options: dict | None = None,
    file_metadata: Mapping[str, Any] | None = None,
) -> WriteSummary:
    """Write a Dask DataFrame as one Parquet file per partition, resuming an interrupted run.

    Parameters
    ----------
    ddf
        Any Dask DataFrame with pandas or cuDF partitions (e.g. ``ImageEmbedder(...)(ddf)``). Its
        partitioning must be the same from run to run (it is for the same input read the same
        way) for a resumed run to match.
    path
        Output folder, local or an fsspec URL. Every worker must be able to write there.
    overwrite
        Remove this folder's part files and start over; otherwise keep finished files and
        compute only the missing partitions.
    job
        JSON-able settings that define the output (input, model ...). Recorded in the manifest;
        a later run with other settings is refused instead of mixing outputs.
    partition_stats
        ``df -> {name: int}``, run on each partition as it is written; summed into
        ``WriteSummary.counts`` (e.g. rows whose embedding failed).
    progress
        Show a progress bar (partitions, images, rate, ETA) on stderr.
    client
        A ``distributed.Client``; default: the current one, if any, else Dask's local scheduler.
    retries
        Retries of a failed partition (``client.compute(retries=...)``).
    storage_options
        fsspec options for a remote ``path``.
    file_metadata
        JSON-able entries for each file's ``dask_clip`` key-value metadata
        (:mod:`dask_clip.io.file_metadata`), e.g. ``{"image_column": "path", "key_column": "path"}``.

    Returns
    -------
    WriteSummary
    """
    return write_format(
        ddf,
        path,
        PARQUET,
        overwrite=overwrite,
        job=job,
        partition_stats=partition_stats,
        progress=progress,
        client=client,
        retries=retries,
        storage_options=storage_options,
        file_metadata=file_metadata,
    )
