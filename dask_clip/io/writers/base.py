"""What every output format shares: the output folder's rules, atomic files, the summary, the run.

- :func:`put` writes a file so that its name only ever holds a complete file (a hidden
  temporary and a rename; in place on object stores, where an object appears once uploaded);
- :func:`check_not_input`: the output may not be, contain or lie inside the job's input
  (``overwrite`` would delete the input, a rerun would read the output as input);
- ``OUTPUT/_dask_clip.json`` (:data:`MANIFEST`) records the format, its options and the job;
- :class:`WriteSummary` and :func:`run_all`: run the write tasks, sum their counts, show progress.

The driver that uses them for every format is :mod:`dask_clip.io.writers.partitioned`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from ...runtime.progress import Progress

__all__ = [
    "EMBEDDING_METADATA",
    "MANIFEST",
    "WRITER",
    "OutputFormat",
    "WriteSummary",
    "check_not_input",
    "count_nonnull",
    "location",
    "put",
    "read_manifest",
    "run_all",
]

MANIFEST = "_dask_clip.json"
#: The manifest's ``writer`` entry: an identity on disk, not a module path. It stays what the
#: first releases wrote (when Parquet's writer was the module ``dask_clip.writer``), so that
#: outputs written before still resume and can be overwritten.
WRITER = "dask_clip" + ".writer"  # (spelt in two parts: a module-path rewrite must not touch it)
_GLOB = re.compile(r"[*?\[{]")


def location(path: str | os.PathLike) -> str:
    """Local paths made absolute (a resumed run may start elsewhere); URLs kept."""
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(path)


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


def put(fs: Any, root: str, name: str, write: Callable[[Any], None], mode: str = "wb") -> None:
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


#: The entry of each part file's ``dask_clip`` metadata (:mod:`dask_clip.io.file_metadata`) that
#: names the model and weights fingerprint that made its embeddings (``{"model": ...,
#: "weights": ...}``), so that a file moved out of its folder still says so
#: (:mod:`dask_clip.models.weights_id`).
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


def read_manifest(fs: Any, root: str) -> dict[str, Any] | None:
    try:
        manifest = json.loads(fs.cat_file(f"{root}/{MANIFEST}"))
    except (ValueError, UnicodeDecodeError):
        return None  # not JSON: not ours
    return manifest if isinstance(manifest, dict) else None


def run_all(
    tasks: list[Any], client: Any, retries: int, progress: bool, root: str, gpu_share: float | None = None
) -> dict[str, int]:
    """Run the write tasks (on ``client``, else the default client, else Dask's local scheduler)
    and sum their per-partition counts, with a progress bar in rows when asked.

    ``gpu_share``: each task's GPU share (``num_gpus_per_worker``), asked of the scheduler as a
    ``GPU`` resource where a worker of the cluster declares one (:mod:`dask_clip.resources`).
    """
    if client is None:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):  # no distributed client: Dask's local scheduler
            client = None
    totals: dict[str, int] = {}
    bar = Progress(len(tasks), desc=os.path.basename(root) or root) if progress and tasks else None
    try:
        for stats in _run(tasks, client, retries, gpu_share):
            for key, value in stats.items():
                totals[key] = totals.get(key, 0) + value
            if bar is not None:
                bar.update(stats["rows"])
    finally:
        if bar is not None:
            bar.close()
    return totals


def _run(tasks: list[Any], client: Any, retries: int, gpu_share: float | None = None):
    """Yield each task's result as it finishes (in completion order)."""
    if not tasks:
        return
    if client is None:
        import dask

        yield from dask.compute(*tasks)
        return
    from distributed import as_completed

    from ...resources import declares_gpu, gpu_annotation

    # dask-expr drops annotations made while the frame was built: they are given at submission
    share = gpu_annotation(gpu_share) if gpu_share and declares_gpu(client) else contextlib.nullcontext()
    with share:
        futures = client.compute(tasks, retries=retries)
    try:
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.cancel([f for f in futures if not f.done()])


# the names the other modules used before they were public here
_put = put
_read_manifest = read_manifest
_run_all = run_all


@dataclass(frozen=True)
class OutputFormat:
    """One output format of the registry (:mod:`dask_clip.io.writers`): what a format module
    defines as ``FORMAT``.

    Attributes
    ----------
    name : str
        What ``--output-format`` / ``output_format=`` call it.
    build : callable
        ``build(embedder, options) -> PartitionFormat``: the format for an
        :class:`~dask_clip.ImageEmbedder`'s columns; ``options`` holds the job's format options
        (``{"embedding_dtype": "float16"}``).
    help : str
        One line for the CLI's help.
    priority : int
        Order of the choices (the lowest is listed first).
    """

    name: str
    build: Callable[[Any, Mapping[str, Any]], Any]
    help: str = ""
    priority: int = 50
