"""Run an output format over a Dask DataFrame: one task per partition, resumable, manifest-checked.

Every output format (:mod:`.parquet`, :mod:`.laion`, :mod:`.lance`) is a small object with the
:class:`PartitionFormat` interface: it writes one partition's Arrow table to temporary names and
commits it atomically, says which partitions are committed and which files in a folder it
would take for its own. This driver does the rest, once for every format:

- the output may not be, contain or lie inside the job's input;
- ``OUTPUT/_dask_clip.json`` records the format, its options and the job. The first partition
  done writes it, before its own commit: a folder with committed partitions always has one, and
  a job that fails before any partition is done (a model that does not load) leaves none to
  refuse the corrected rerun. A manifest with no committed partition beside it blocks nothing;
- a rerun of another job (or another format) into a folder with committed partitions is
  refused unless ``overwrite``; files that no manifest of this format describes are never
  mixed into the output nor removed, even with ``overwrite``;
- a rerun computes only the partitions not committed (an interrupted run resumes), and a
  finished one computes and writes nothing;
- each partition is written by the task that computes it (fused), so no worker holds a
  computed partition waiting for a writer.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd
import pyarrow as pa

from .arrow import arrow_types, to_arrow
from .base import (
    MANIFEST,
    WRITER,
    WriteSummary,
    _canonical,
    _input_roots,
    _listing,
    _open,
    _with_embedding,
    check_not_input,
    location,
    put,
    read_manifest,
    run_all,
)

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = ["PartitionFormat", "check_format_output", "format_tasks", "write_format"]

_MANIFEST_TEMP = re.compile(r"^\._dask_clip\.json\..*\.tmp$")


class PartitionFormat(Protocol):
    """What an output format provides to :func:`write_format` (a picklable object).

    Attributes
    ----------
    name : str
        ``"parquet"``, ``"laion"``, ``"lance"``: recorded in the manifest.
    options : dict
        JSON-able settings that change the bytes written (e.g. ``{"dtype": "float16"}``); a
        rerun with other options is another job.
    """

    @property
    def name(self) -> str: ...

    @property
    def options(self) -> dict[str, Any]: ...

    def foreign(self, fs: Any, root: str, names: list[str], manifest: Mapping[str, Any] | None) -> list[str]:
        """The entries of ``root`` (``names``, hidden ones left out) that this format would
        write or read as its own but that ``manifest`` (None: no dask_clip manifest) does not
        describe: the driver refuses the folder rather than mix them in or remove them."""

    def prepare(self, fs: Any, root: str, npartitions: int, overwrite: bool) -> None:
        """On the client, before any task: create folders, remove temporaries a killed run left,
        and with ``overwrite`` remove what this format wrote before (and only that)."""

    def committed(self, fs: Any, root: str, npartitions: int) -> set[int]:
        """The partitions whose output is complete (one listing; on the client)."""

    def write_partition(self, table: pa.Table, fs: Any, root: str, index: int, npartitions: int) -> dict[str, int]:
        """On a worker: write partition ``index`` to temporary names, then commit it atomically
        (the last rename is the commit marker that :meth:`committed` looks for). Returns counts
        to add to the job's summary (e.g. ``{"dropped": 2}``)."""

    def finish(self, fs: Any, root: str, npartitions: int) -> None:
        """On the client, once every partition is committed (e.g. Lance commits its version).
        Must do nothing when the output is already complete."""


def manifest_text(fmt: PartitionFormat, npartitions: int, job: Mapping[str, Any] | None) -> str:
    """The manifest this job writes (JSON)."""
    record = {
        "npartitions": npartitions,
        "job": _canonical(job),
        "writer": WRITER,
        "format": fmt.name,
        "options": _canonical(fmt.options),
    }
    return json.dumps(record, indent=2, sort_keys=True)


def ours(manifest: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """``manifest`` if dask_clip wrote it, else None."""
    return manifest if manifest is not None and manifest.get("writer") == WRITER else None


def manifest_format(manifest: Mapping[str, Any]) -> str:
    return str(manifest.get("format", "parquet"))  # Parquet's manifests before formats had none


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

    Reads only: nothing is created or removed.

    Raises
    ------
    ValueError
        The folder is, contains or lies inside the job's input (``job["input"]``); it holds
        another format's output; it holds committed partitions of another job (other partition
        count, options or settings: pass ``overwrite=True``); or it holds files of this format
        that no dask_clip manifest describes (never removed, even with ``overwrite=True``).
    NotADirectoryError
        ``path`` is a file.
    """
    check_not_input(location(path), _input_roots(job))
    fs, root = _open(path, storage_options)
    if fs.exists(root) and not fs.isdir(root):
        raise NotADirectoryError(f"output {os.fspath(path)!r} is a file; give a folder")
    names = [n for n in _listing(fs, root) if not n.startswith(".")]
    manifest = read_manifest(fs, root) if MANIFEST in names else None
    mine = ours(manifest)
    if mine is not None and manifest_format(mine) != fmt.name:
        raise ValueError(
            f"{os.fspath(path)!r} holds dask_clip output in format {manifest_format(mine)!r}, "
            f"not {fmt.name!r}; choose another folder"
        )
    foreign = fmt.foreign(fs, root, [n for n in names if n != MANIFEST], mine)
    if foreign:
        described = f"{MANIFEST} describes" if mine is not None else f"no {MANIFEST} describes"
        raise ValueError(
            f"{os.fspath(path)!r} holds {len(foreign)} files ({foreign[0]}, ...) that {described}; "
            "dask_clip neither mixes them into its output nor removes them, even with --overwrite. "
            "Choose another folder, or move them away"
        )
    if overwrite:
        return list(range(npartitions))
    done = fmt.committed(fs, root, npartitions) if names else set()
    if mine is not None and done:
        theirs = {"npartitions": mine.get("npartitions"), **(mine.get("options") or {}), **(mine.get("job") or {})}
        now = {"npartitions": npartitions, **(_canonical(fmt.options) or {}), **(_canonical(job) or {})}
        differ = {k: (theirs.get(k), now.get(k)) for k in sorted(set(theirs) | set(now)) if theirs.get(k) != now.get(k)}
        if differ:
            details = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in differ.items())
            raise ValueError(
                f"{os.fspath(path)!r} holds the output of a different job ({details}). Pass "
                "overwrite=True (--overwrite) to start over, or choose another folder"
            )
    return [i for i in range(npartitions) if i not in done]


def _prepare(fs: Any, root: str, fmt: PartitionFormat, npartitions: int, overwrite: bool) -> None:
    """Create the folder, let the format clear what it must, drop stale manifest temporaries,
    and drop a manifest that describes no committed partition (or all of them, on overwrite):
    the first partition of this job writes its own."""
    fs.makedirs(root, exist_ok=True)
    fmt.prepare(fs, root, npartitions, overwrite)
    names = _listing(fs, root)
    for name in names:
        if _MANIFEST_TEMP.match(name):
            fs.rm(f"{root}/{name}")
    if MANIFEST in names:
        stale = overwrite or ours(read_manifest(fs, root)) is None or not fmt.committed(fs, root, npartitions)
        if stale:
            fs.rm(f"{root}/{MANIFEST}")


def _write_partition(
    df: Any,
    fmt: PartitionFormat,
    fs: Any,
    root: str,
    npartitions: int,
    indices: tuple[int, ...],
    types: Mapping[str, pa.DataType],
    partition_stats: Callable[[Any], Mapping[str, int]] | None,
    manifest: str,
    file_metadata: Mapping[str, Any] | None,
    partition_info: dict | None = None,
) -> pd.Series:
    """Write one partition (its number picks its index); a one-element object Series of its stats."""
    index = indices[partition_info["number"] if partition_info is not None else 0]
    table = to_arrow(df, types, file_metadata)
    if not fs.exists(f"{root}/{MANIFEST}"):  # the first partition done: before any commit
        put(fs, root, MANIFEST, lambda f: f.write(manifest), mode="w")
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
    """Prepare ``path`` and return one lazy write per partition not yet committed there.

    For callers that compute the writes together with other results in one pass over the data
    (``dask.compute(tasks, ...)``). Each returned task gives ``{"rows": n, **counts}``.

    Returns
    -------
    list of dask.delayed.Delayed
    """
    import dask

    fs, root = _open(path, storage_options)
    n = ddf.npartitions
    todo = check_format_output(path, n, fmt, job=job, overwrite=overwrite, storage_options=storage_options)
    _prepare(fs, root, fmt, n, overwrite)
    if not todo:
        return []
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
        manifest_text(fmt, n, job),
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
    gpu_share: float | None = None,
) -> WriteSummary:
    """Write ``ddf`` in ``fmt`` to ``path``, resuming an interrupted run.

    The arguments are those of :func:`dask_clip.io.writers.parquet.write_parquet`, plus the
    format and ``gpu_share``: each task's GPU share, asked for as a ``GPU`` resource on a
    cluster whose workers declare one (:mod:`dask_clip.resources`).

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
    totals = run_all(tasks, client, retries, progress, root, gpu_share)
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
