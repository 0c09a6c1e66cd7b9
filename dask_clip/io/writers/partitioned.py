"""Run an output format over a Dask DataFrame: one task per partition, resumable, manifest-checked.

The Parquet writer (:mod:`dask_clip.writer`) keeps its own driver; the other formats
(:mod:`.laion`, :mod:`.lance`) share this one. A format is a small object with the
:class:`PartitionFormat` interface: it writes one partition's Arrow table to temporary names and
commits it atomically, says which partitions are committed, and reads its output back. This
driver does the rest, as the Parquet writer does:

- the output may not be, contain or lie inside the job's input;
- ``OUTPUT/_dask_clip.json`` records the format, its options and the job: a rerun of another job
  (or another format) into a folder with committed partitions is refused unless ``overwrite``;
- a rerun computes only the partitions not committed (an interrupted run resumes), and a finished
  one computes and writes nothing;
- each partition is written by the task that computes it, so no worker holds a computed
  partition waiting for a writer.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd
import pyarrow as pa

from ...writer import (
    MANIFEST,
    WriteSummary,
    _canonical,
    _input_roots,
    _listing,
    _open,
    _put,
    _read_manifest,
    _run_all,
    _with_embedding,
    arrow_types,
    check_not_input,
    location,
    to_arrow,
)

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = ["PartitionFormat", "check_format_output", "format_tasks", "write_format"]

WRITER = "dask_clip.writer"


class PartitionFormat(Protocol):
    """What an output format provides to :func:`write_format` (a picklable object).

    Attributes
    ----------
    name : str
        ``"laion"``, ``"lance"``: recorded in the manifest.
    options : dict
        JSON-able settings that change the bytes written (e.g. ``{"dtype": "float16"}``); a
        rerun with other options is another job.
    """

    @property
    def name(self) -> str: ...

    @property
    def options(self) -> dict[str, Any]: ...

    def prepare(self, fs: Any, root: str, npartitions: int, overwrite: bool) -> None:
        """On the client, before any task: create folders, remove temporaries a killed run left,
        and with ``overwrite`` remove what this format wrote before."""

    def committed(self, fs: Any, root: str, npartitions: int) -> set[int]:
        """The partitions whose output is complete (one listing; on the client)."""

    def write_partition(self, table: pa.Table, fs: Any, root: str, index: int, npartitions: int) -> dict[str, int]:
        """On a worker: write partition ``index`` to temporary names, then commit it atomically
        (the last rename is the commit marker that :meth:`committed` looks for). Returns counts
        to add to the job's summary (e.g. ``{"dropped": 2}``)."""

    def finish(self, fs: Any, root: str, npartitions: int) -> None:
        """On the client, once every partition is committed (e.g. Lance commits its version).
        Must do nothing when the output is already complete."""


def _manifest(fmt: PartitionFormat, npartitions: int, job: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "npartitions": npartitions,
        "job": _canonical(job),
        "writer": WRITER,
        "format": fmt.name,
        "options": _canonical(fmt.options),
    }


def check_format_output(
    path: str | os.PathLike,
    npartitions: int,
    fmt: PartitionFormat,
    *,
    job: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> list[int]:
    """Check that ``path`` can take this job's output in ``fmt``; return the partitions to write.

    Reads only. Raises ``ValueError`` when ``path`` is, holds or lies inside the input, holds
    files that no dask_clip manifest of this format describes, or holds committed partitions of
    another job (unless ``overwrite``); ``NotADirectoryError`` when it is a file.
    """
    check_not_input(location(path), _input_roots(job))
    fs, root = _open(path, storage_options)
    if fs.exists(root) and not fs.isdir(root):
        raise NotADirectoryError(f"output {os.fspath(path)!r} is a file; give a folder")
    names = [n for n in _listing(fs, root) if not n.startswith(".")]
    manifest = _read_manifest(fs, root) if MANIFEST in names else None
    if names and (manifest is None or manifest.get("writer") != WRITER):
        raise ValueError(
            f"{os.fspath(path)!r} holds files ({names[0]}, ...) that no {MANIFEST} of dask_clip describes; "
            "dask_clip neither mixes them into its output nor removes them. Choose another folder"
        )
    if manifest is not None and manifest.get("format", "parquet") != fmt.name:
        raise ValueError(
            f"{os.fspath(path)!r} holds dask_clip output in format {manifest.get('format', 'parquet')!r}, "
            f"not {fmt.name!r}; choose another folder"
        )
    if overwrite:
        return list(range(npartitions))
    done = fmt.committed(fs, root, npartitions) if names else set()
    if manifest is not None and done:
        theirs = {"npartitions": manifest.get("npartitions"), **(manifest.get("options") or {})}
        theirs.update(manifest.get("job") or {})
        ours = {"npartitions": npartitions, **(_canonical(fmt.options) or {}), **(_canonical(job) or {})}
        differ = {
            k: (theirs.get(k), ours.get(k)) for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)
        }
        if differ:
            details = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in differ.items())
            raise ValueError(
                f"{os.fspath(path)!r} holds the output of a different job ({details}). Pass "
                "overwrite=True (--overwrite) to start over, or choose another folder"
            )
    return [i for i in range(npartitions) if i not in done]


def _write_partition(
    df: Any,
    fmt: PartitionFormat,
    fs: Any,
    root: str,
    npartitions: int,
    indices: tuple[int, ...],
    types: Mapping[str, pa.DataType],
    partition_stats: Callable[[Any], Mapping[str, int]] | None,
    file_metadata: Mapping[str, Any] | None,
    partition_info: dict | None = None,
) -> pd.Series:
    index = indices[partition_info["number"] if partition_info is not None else 0]
    table = to_arrow(df, types, file_metadata)
    stats = {"rows": len(df), **fmt.write_partition(table, fs, root, index, npartitions)}
    if partition_stats is not None:
        stats.update({k: int(v) for k, v in partition_stats(df).items()})
    return pd.Series([stats], dtype=object)


def _stats(written: pd.Series) -> dict[str, int]:
    return written.iloc[0]


def format_tasks(
    ddf: dd.DataFrame,
    path: str | os.PathLike,
    fmt: PartitionFormat,
    *,
    overwrite: bool = False,
    job: Mapping[str, Any] | None = None,
    partition_stats: Callable[[Any], Mapping[str, int]] | None = None,
    storage_options: dict | None = None,
    file_metadata: Mapping[str, Any] | None = None,
) -> list[Any]:
    """Prepare ``path`` and return one lazy write per partition not yet committed there
    (each gives ``{"rows": n, ...}``); the counterpart of :func:`dask_clip.writer.write_tasks`."""
    import dask

    fs, root = _open(path, storage_options)
    n = ddf.npartitions
    todo = check_format_output(path, n, fmt, job=job, overwrite=overwrite, storage_options=storage_options)
    fs.makedirs(root, exist_ok=True)
    fmt.prepare(fs, root, n, overwrite)
    if not todo:
        return []
    text = json.dumps(_manifest(fmt, n, job), indent=2, sort_keys=True)
    _put(fs, root, MANIFEST, lambda f: f.write(text), mode="w")
    selected = ddf if len(todo) == n else ddf.partitions[todo]
    written = selected.map_partitions(
        _write_partition,
        fmt,
        fs,
        root,
        n,
        tuple(todo),
        arrow_types(ddf._meta),
        partition_stats,
        _with_embedding(file_metadata, job),
        meta=pd.Series([], dtype=object),
        enforce_metadata=False,
        align_dataframes=False,
        token=f"{fmt.name}_write",  # fused with the step before it: one task per partition
    )
    stats = dask.delayed(_stats, pure=True)
    return [stats(part) for part in written.to_delayed()]


def write_format(
    ddf: dd.DataFrame,
    path: str | os.PathLike,
    fmt: PartitionFormat,
    *,
    overwrite: bool = False,
    job: Mapping[str, Any] | None = None,
    partition_stats: Callable[[Any], Mapping[str, int]] | None = None,
    progress: bool = False,
    client: Any = None,
    retries: int = 0,
    storage_options: dict | None = None,
    file_metadata: Mapping[str, Any] | None = None,
) -> WriteSummary:
    """Write ``ddf`` in ``fmt`` to ``path``, resuming an interrupted run.

    The arguments are those of :func:`dask_clip.writer.write_parquet`, plus the format.

    Returns
    -------
    WriteSummary
    """
    tasks = format_tasks(
        ddf,
        path,
        fmt,
        overwrite=overwrite,
        job=job,
        partition_stats=partition_stats,
        storage_options=storage_options,
        file_metadata=file_metadata,
    )
    n = ddf.npartitions
    fs, root = _open(path, storage_options)
    started = time.perf_counter()
    totals = _run_all(tasks, client, retries, progress, root)
    fmt.finish(fs, root, n)
    rows = totals.pop("rows", 0)
    return WriteSummary(
        path=os.fspath(path),
        partitions=n,
        written=len(tasks),
        skipped=n - len(tasks),
        rows=rows,
        counts=totals,
        seconds=time.perf_counter() - started,
    )
