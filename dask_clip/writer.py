"""A resumable Parquet writer: one file per partition, written atomically, finished files kept.

Output layout::

    OUTPUT/
      _dask_clip.json          what wrote the folder: partitions and the job's settings
      part-00000.parquet       partition 0, complete or absent
      part-00001.parquet
      ...

Each partition is written to a hidden temporary file and renamed into place, so a file named
``part-*.parquet`` is complete: it is the commit marker. The write is part of the partition's
own task (fused with what computes the partition), so a file lands as soon as its partition is
done and no worker holds a computed partition waiting to be written. Running the same job again
computes only the partitions whose file is missing (an interrupted run resumes);
``overwrite=True`` starts over, removing only the files the manifest says this writer made.

The manifest is written by the first partition to finish, before its file is renamed into
place: a folder with part files always has one, and a job that fails before any partition is
done (a model that does not load) leaves no manifest to refuse the corrected rerun. A manifest
with no part file beside it describes nothing and never blocks another job.

The output folder may not be, contain or lie inside an input of the job (``job["input"]``):
``overwrite=True`` would delete the input, and a rerun would read the output as input. On
object stores (no rename) the file is written in place: an object only appears once its upload
is complete.

The files read back with ``pd.read_parquet``, ``dd.read_parquet``, pyarrow and DuckDB, with
``list<float32>`` embeddings: the pandas metadata of list columns says ``object``, working
around pandas#57411 (pandas cannot parse the dtype string pyarrow stores for
``list<float32>[pyarrow]`` columns). Pass ``dtype_backend="pyarrow"`` to the pandas and Dask
readers to get the Arrow dtype back instead of object arrays.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .file_metadata import with_file_metadata
from .progress import Progress

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = [
    "MANIFEST",
    "WriteSummary",
    "check_output",
    "count_nonnull",
    "location",
    "looks_complete",
    "part_name",
    "remove_temporaries",
    "to_arrow",
    "write_parquet",
    "write_tasks",
]

MANIFEST = "_dask_clip.json"
WRITER = "dask_clip.writer"
_PART = re.compile(r"^part-(\d+)\.parquet$")
_TEMP = re.compile(r"^\.(part-\d+\.parquet|_dask_clip\.json)\..*\.tmp$")
_GLOB = re.compile(r"[*?\[{]")


def location(path: str | os.PathLike) -> str:
    """Local paths made absolute (a resumed run may start elsewhere); URLs kept."""
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(path)


def part_name(index: int, npartitions: int) -> str:
    """``part-00007.parquet``: zero-padded so that name order is partition order."""
    width = max(5, len(str(max(npartitions - 1, 0))))
    return f"part-{index:0{width}d}.parquet"


@dataclass
class WriteSummary:
    """What one :func:`write_parquet` call did.

    Attributes
    ----------
    path : str
        The output folder.
    partitions, written, skipped : int
        Partitions in the frame; written by this call; already there and left untouched.
    rows : int
        Rows written by this call.
    counts : dict of str to int
        Sums of the ``partition_stats`` values over the partitions written (e.g. errors).
    seconds : float
        Wall time of the computation.
    """

    path: str
    partitions: int
    written: int
    skipped: int
    rows: int
    counts: dict[str, int]
    seconds: float

    @property
    def rows_per_second(self) -> float:
        """Rows written per second of wall time."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        return {**asdict(self), "rows_per_second": self.rows_per_second}


def _count_nonnull(df: pd.DataFrame, column: str, name: str) -> dict[str, int]:
    return {name: int(df[column].notna().sum()) if column in df.columns else 0}


def count_nonnull(column: str, name: str) -> Callable[[pd.DataFrame], dict[str, int]]:
    """A ``partition_stats`` function: ``{name: non-null values of column}`` (e.g. errors)."""
    import functools

    return functools.partial(_count_nonnull, column=column, name=name)


# -- Arrow conversion, on the workers ---------------------------------------------------------


def _fix_pandas_metadata(schema: pa.Schema) -> pa.Schema:
    """Mark columns whose stored pandas dtype pandas cannot parse back as ``object``."""
    raw = (schema.metadata or {}).get(b"pandas")
    if raw is None:
        return schema
    meta = json.loads(raw)
    changed = False
    for column in meta.get("columns", []):
        try:
            pd.api.types.pandas_dtype(column["numpy_type"])
        except (TypeError, ValueError):  # e.g. "list<item: float>[pyarrow]" (pandas#57411)
            column["numpy_type"] = "object"
            changed = True
    if not changed:
        return schema
    return schema.with_metadata({**schema.metadata, b"pandas": json.dumps(meta).encode()})


def _dask_dispatch() -> tuple[Any, Any]:
    """Dask's own pandas/cuDF -> Arrow dispatch functions (cuDF's registered by dask_cudf).

    cuDF refuses ``pa.Table.from_pandas`` (no implicit device-to-host conversion); through
    these, a cuDF partition goes through ``cudf.DataFrame.to_arrow`` and a pandas one through
    ``pa.Table.from_pandas``, as before.
    """
    from dask.dataframe.dispatch import pyarrow_schema_dispatch, to_pyarrow_table_dispatch

    # dask registers dask_cudf lazily for to_pyarrow_table_dispatch, not for this one
    pyarrow_schema_dispatch.register_lazy("cudf", _register_dask_cudf)
    return pyarrow_schema_dispatch, to_pyarrow_table_dispatch


def _register_dask_cudf() -> None:
    import dask_cudf  # noqa: F401 - registers cuDF's implementations on dask's dispatch functions


def arrow_types(meta: Any) -> dict[str, pa.DataType]:
    """Arrow types of the columns whose dtype says it (object columns are inferred per file)."""
    schema_of, _ = _dask_dispatch()
    types: dict[str, pa.DataType] = {}
    for name, dtype in meta.dtypes.items():
        if pd.api.types.is_object_dtype(dtype):
            continue
        types[str(name)] = schema_of(meta[[name]], preserve_index=False).field(str(name)).type
    return types


def to_arrow(
    df: Any,
    types: Mapping[str, pa.DataType] | None = None,
    file_metadata: Mapping[str, Any] | None = None,
) -> pa.Table:
    """A partition as an Arrow table with the output's column types and readable pandas metadata.

    Parameters
    ----------
    df
        A pandas or cuDF partition (Dask's ``to_pyarrow_table_dispatch``: one device-to-host
        copy for cuDF).
    types
        Column types from the frame's meta (:func:`arrow_types`), so every file has the same
        schema; other columns are inferred, all-null ones as ``string``.
    file_metadata
        What the job records in each file's ``dask_clip`` metadata entry (image and key
        columns: :mod:`dask_clip.file_metadata`).
    """
    # A named index is data (e.g. dedup's `row` numbers): store it as a column. An unnamed
    # RangeIndex stays metadata only; Dask's reader cannot handle a named one stored that way.
    named = any(name is not None for name in df.index.names)
    table = _dask_dispatch()[1](df, preserve_index=True if named else None)
    schema = table.schema
    for i, field in enumerate(schema):
        target = (types or {}).get(field.name)
        if target is None and pa.types.is_null(field.type):
            target = pa.string()
        if target is not None and target != field.type:
            schema = schema.set(i, field.with_type(target))
    if schema != table.schema:
        table = table.cast(schema)
    metadata = _fix_pandas_metadata(table.schema).metadata
    if file_metadata:
        metadata = with_file_metadata(metadata, file_metadata)
    return table.replace_schema_metadata(metadata)


def _put(fs: Any, root: str, name: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``root/name`` so that the name only ever holds a complete file: through a hidden
    temporary file and a rename where the filesystem has one, in place on object stores."""
    final = f"{root}/{name}"
    if not _is_local(fs):
        with fs.open(final, mode) as f:
            write(f)
        return
    temp = f"{root}/.{name}.{uuid.uuid4().hex}.tmp"  # hidden: readers skip it if left over
    try:
        with open(temp, mode) as f:
            write(f)
        os.replace(temp, final)  # atomic
    finally:
        if os.path.exists(temp):
            os.remove(temp)


#: The entry of each part file's ``dask_clip`` metadata (:mod:`dask_clip.file_metadata`) that
#: names the model and weights fingerprint that made its embeddings (``{"model": ...,
#: "weights": ...}``), so that a file moved out of its folder still says so
#: (:mod:`dask_clip.weights_id`).
EMBEDDING_METADATA = "embedding"


def _embedding_metadata(job: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not job or ("model" not in job and "weights" not in job):
        return None
    return {"model": _canonical(job.get("model")), "weights": job.get("weights")}


def _with_embedding(file_metadata: Mapping[str, Any] | None, job: Mapping[str, Any] | None) -> dict | None:
    """The job's ``dask_clip`` file metadata: what the caller records plus the embedding's model."""
    record = {**(file_metadata or {})}
    embedding = _embedding_metadata(job)
    if embedding is not None:
        record[EMBEDDING_METADATA] = embedding
    return record or None


def _manifest_text(npartitions: int, job: Mapping[str, Any] | None) -> str:
    return json.dumps({"npartitions": npartitions, "job": _canonical(job), "writer": WRITER}, indent=2, sort_keys=True)


def _write_partition(
    df: pd.DataFrame,
    fs: Any,
    root: str,
    names: tuple[str, ...],
    types: Mapping[str, pa.DataType],
    partition_stats: Callable[[pd.DataFrame], Mapping[str, int]] | None,
    manifest: str,
    file_metadata: Mapping[str, Any] | None = None,
    partition_info: dict | None = None,
) -> pd.Series:
    """Write one partition as ``names[its number]``; a one-element object Series of its stats."""
    name = names[partition_info["number"] if partition_info is not None else 0]
    table = to_arrow(df, types, file_metadata)
    if not fs.exists(f"{root}/{MANIFEST}"):  # the first partition done: before any part file
        _put(fs, root, MANIFEST, lambda f: f.write(manifest), mode="w")
    _put(fs, root, name, lambda f: pq.write_table(table, f))
    stats = {"rows": len(df)}
    if partition_stats is not None:
        stats.update({k: int(v) for k, v in partition_stats(df).items()})
    return pd.Series([stats], dtype=object)


def _stats(written: pd.Series) -> dict[str, int]:
    return written.iloc[0]


# -- the output folder, on the driver ---------------------------------------------------------


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _open(path: str | os.PathLike, storage_options: dict | None) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(os.fspath(path), **(storage_options or {}))
    return fs, root.rstrip("/")


def _listing(fs: Any, root: str) -> list[str]:
    if not fs.exists(root):
        return []
    return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(root, detail=False))


def _canonical(job: Mapping[str, Any] | None) -> Any:
    return json.loads(json.dumps(job, sort_keys=True, default=str)) if job is not None else None


def _input_roots(job: Mapping[str, Any] | None) -> list[str]:
    """The folders or files a job reads (``job["input"]``: a location or a list of them), globs
    cut back to the folder they start in."""
    given = (job or {}).get("input")
    if given is None:
        return []
    roots = []
    for item in [given] if isinstance(given, (str, os.PathLike)) else list(given):
        text = os.fspath(item)
        match = _GLOB.search(text)
        if match:
            prefix = text[: match.start()]
            text = (prefix.rsplit("/", 1)[0] or "/") if "/" in prefix else "."
        roots.append(text)
    return roots


def _comparable(path: str) -> tuple[str, tuple[str, ...]]:
    """(protocol, path components) with symlinks resolved for local paths."""
    if "://" in path and not path.startswith("file://"):
        protocol, _, rest = path.partition("://")
        return protocol.lower(), tuple(p for p in rest.split("/") if p)
    local = os.path.realpath(os.path.expanduser(path.removeprefix("file://")))
    return "file", tuple(p for p in local.split(os.sep) if p)


def check_not_input(path: str | os.PathLike, inputs: list[str]) -> None:
    """ValueError when the output folder ``path`` is, contains or lies inside one of ``inputs``."""
    out_proto, out = _comparable(os.fspath(path))
    for given in inputs:
        in_proto, inp = _comparable(given)
        if in_proto != out_proto:
            continue
        if out == inp:
            how = "is the input"
        elif out == inp[: len(out)]:
            how = f"contains the input {given!r}"
        elif inp == out[: len(inp)]:
            how = f"lies inside the input {given!r}"
        else:
            continue
        raise ValueError(
            f"output {os.fspath(path)!r} {how}; write the output to a folder of its own "
            "(--overwrite would delete input files, and a rerun would read the output as input)"
        )


def _read_manifest(fs: Any, root: str) -> dict[str, Any] | None:
    try:
        manifest = json.loads(fs.cat_file(f"{root}/{MANIFEST}"))
    except (ValueError, UnicodeDecodeError):
        return None  # not JSON: not ours
    return manifest if isinstance(manifest, dict) else None


def check_output(
    path: str | os.PathLike,
    npartitions: int,
    *,
    job: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> list[int]:
    """Check that ``path`` can take this job's output; return the partitions still to write.

    Reads only: nothing is created or removed.

    Raises
    ------
    ValueError
        The folder is, contains or lies inside the job's input (``job["input"]``); it holds
        part files of another job (other partition count or settings: pass ``overwrite=True``);
        or it holds ``part-*.parquet`` files that no dask_clip manifest describes (never
        removed, even with ``overwrite=True``).
    NotADirectoryError
        ``path`` is a file.
    """
    check_not_input(location(path), _input_roots(job))
    fs, root = _open(path, storage_options)
    if fs.exists(root) and not fs.isdir(root):
        raise NotADirectoryError(f"output {os.fspath(path)!r} is a file; give a folder")
    names = _listing(fs, root)
    parts = [n for n in names if _PART.match(n)]
    manifest = _read_manifest(fs, root) if MANIFEST in names else None
    ours = _ours(manifest)
    foreign = sorted(set(parts) - ours)
    if foreign:
        described = f"{MANIFEST} describes" if manifest is not None else f"no {MANIFEST} describes"
        raise ValueError(
            f"{os.fspath(path)!r} holds {len(foreign)} part files ({foreign[0]}, ...) that {described}; "
            "dask_clip neither mixes them into its output nor removes them, even with --overwrite. "
            "Choose another folder, or move them away"
        )
    if overwrite:
        return list(range(npartitions))
    if manifest is not None and parts:
        theirs = {"npartitions": manifest.get("npartitions"), **(manifest.get("job") or {})}
        ours_now = {"npartitions": npartitions, **(_canonical(job) or {})}
        differ = {
            k: (theirs.get(k), ours_now.get(k))
            for k in sorted(set(theirs) | set(ours_now))
            if theirs.get(k) != ours_now.get(k)
        }
        if differ:
            details = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in differ.items())
            raise ValueError(
                f"{os.fspath(path)!r} holds the output of a different job ({details}). Pass "
                "overwrite=True (--overwrite) to start over, or choose another folder"
            )
    done = set(parts)
    return [i for i in range(npartitions) if part_name(i, npartitions) not in done]


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
    described = _ours(_read_manifest(fs, root))
    return bool(described) and described <= set(names)


def _ours(manifest: Mapping[str, Any] | None) -> set[str]:
    """The part files a manifest says this writer made."""
    if manifest is None or manifest.get("writer") != WRITER:
        return set()
    n = manifest.get("npartitions")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        return set()
    return {part_name(i, n) for i in range(n)}


def _prepare(fs: Any, root: str, job: Mapping[str, Any] | None, overwrite: bool) -> None:
    """Create the folder, drop stale temporaries, and clear our files on ``overwrite`` (only
    what the manifest describes) or a manifest that describes no file here."""
    fs.makedirs(root, exist_ok=True)
    names = _listing(fs, root)
    manifest = _read_manifest(fs, root) if MANIFEST in names else None
    ours = _ours(manifest)
    parts = [n for n in names if _PART.match(n)]
    for name in names:
        stale = _TEMP.match(name) or (overwrite and name in ours)
        if stale:
            fs.rm(f"{root}/{name}")
    if MANIFEST in names and (overwrite or not parts or manifest is None):
        fs.rm(f"{root}/{MANIFEST}")  # the first partition written writes this job's


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
    fs, root = _open(path, storage_options)
    n = ddf.npartitions
    todo = check_output(path, n, job=job, overwrite=overwrite, storage_options=storage_options)
    _prepare(fs, root, job, overwrite)
    if not todo:
        return []
    import dask

    selected = ddf if len(todo) == n else ddf.partitions[todo]
    # One task per partition computes and writes it (dask-expr fuses the two blockwise steps).
    written = selected.map_partitions(
        _write_partition,
        fs,
        root,
        tuple(part_name(i, n) for i in todo),
        arrow_types(ddf._meta),
        partition_stats,
        _manifest_text(n, job),
        _with_embedding(file_metadata, job),
        meta=pd.Series([], dtype=object),
        enforce_metadata=False,
        align_dataframes=False,
        token="parquet_write",  # fused with the step before it: one task per partition
    )
    stats = dask.delayed(_stats, pure=True)
    return [stats(part) for part in written.to_delayed()]


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
        (:mod:`dask_clip.file_metadata`), e.g. ``{"image_column": "path", "key_column": "path"}``.

    Returns
    -------
    WriteSummary
    """
    tasks = write_tasks(
        ddf,
        path,
        overwrite=overwrite,
        job=job,
        partition_stats=partition_stats,
        storage_options=storage_options,
        file_metadata=file_metadata,
    )
    n = ddf.npartitions
    root = _open(path, storage_options)[1]
    started = time.perf_counter()
    totals = _run_all(tasks, client, retries, progress, root)
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


def _run_all(tasks: list[Any], client: Any, retries: int, progress: bool, root: str) -> dict[str, int]:
    """Run the write tasks (on ``client``, else the default client, else Dask's local scheduler)
    and sum their per-partition counts, with a progress bar in rows when asked."""
    if client is None:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):  # no distributed client: Dask's local scheduler
            client = None
    totals: dict[str, int] = {}
    bar = Progress(len(tasks), desc=os.path.basename(root) or root) if progress and tasks else None
    try:
        for stats in _run(tasks, client, retries):
            for key, value in stats.items():
                totals[key] = totals.get(key, 0) + value
            if bar is not None:
                bar.update(stats["rows"])
    finally:
        if bar is not None:
            bar.close()
    return totals


def _run(tasks: list[Any], client: Any, retries: int):
    """Yield each task's result as it finishes (in completion order)."""
    if not tasks:
        return
    if client is None:
        import dask

        yield from dask.compute(*tasks)
        return
    from distributed import as_completed

    futures = client.compute(tasks, retries=retries)
    try:
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.cancel([f for f in futures if not f.done()])
