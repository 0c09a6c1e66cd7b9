"""Build a faiss index of an embedding column on Dask: the function behind ``dask-clip index``.

Steps (one module each): :mod:`.keys` chooses the index from the row count and a memory
budget; :mod:`.train` samples and trains it on the client; :mod:`.add` adds each partition on
the workers into a shard that shares the trained quantiser; :mod:`.merge` merges the shards;
:mod:`.layout` publishes the result atomically. A killed build resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.file_metadata import read_file_metadata
from . import keys, layout
from .add import add_tasks, done_partitions, part_stats
from .ids import check_columns, default_columns
from .merge import merge_shards
from .train import count_rows, import_faiss, sample_embeddings, train_index
from .tune import DEFAULT_RECALL_TARGET, TUNE_MAX_VECTORS, TUNE_QUERIES, tune_nprobe

__all__ = ["BuildSummary", "build"]

logger = logging.getLogger(__name__)
_COUNTS = ("rows", "vectors", "null_embeddings", "invalid_embeddings")
TUNE_FILE = "tune-queries.npy"


@dataclass
class BuildSummary:
    """What one :func:`build` call did.

    Attributes
    ----------
    index_dir : str
    index_key : str
        The faiss index built.
    nprobe : int or None
        Default lists visited per query.
    on_disk : bool
        Inverted lists on disk.
    dim : int
    partitions, added, skipped : int
        Input partitions; added by this call; already in the interrupted build it resumed.
    rows, vectors, null_embeddings, invalid_embeddings : int
        Input rows; indexed vectors; rows skipped for a null embedding; for a non-finite or
        all-zero one.
    train_rows : int
        Rows of the training sample (0 for exact search).
    steps : dict of str to dict
        Per step (``count``, ``sample``, ``train``, ``add``, ``merge``, ``publish``): ``start``
        (``time.time()``) and ``seconds``; steps a resumed build skipped are absent.
    reason : str
        Why this index key.
    tuning : dict or None
        How the default ``nprobe`` was chosen: recall@10 per ``nprobe`` tried on sampled
        rows, or why tuning was skipped; None for exact search or a given ``nprobe``.
    key_column, image_column : str or None
        The key column, and the image column kept for display (given, or recorded in the files).
    """

    index_dir: str
    index_key: str
    nprobe: int | None
    on_disk: bool
    dim: int
    partitions: int
    added: int
    skipped: int
    rows: int
    vectors: int
    null_embeddings: int
    invalid_embeddings: int
    train_rows: int
    reason: str
    tuning: dict[str, Any] | None = None
    steps: dict[str, dict[str, float]] = field(default_factory=dict)
    key_column: str | None = None
    image_column: str | None = None

    @property
    def seconds(self) -> float:
        """Wall time of the steps this call ran."""
        return float(sum(s["seconds"] for s in self.steps.values()))

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        return {**asdict(self), "seconds": self.seconds}


class _Steps:
    def __init__(self) -> None:
        self.times: dict[str, dict[str, float]] = {}

    def __call__(self, name: str) -> _Steps:
        self._name = name
        return self

    def __enter__(self) -> None:
        self._start, self._clock = time.time(), time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.times[self._name] = {"start": self._start, "seconds": time.perf_counter() - self._clock}


def _read_source(
    embeddings: Any, storage_options: dict | None
) -> tuple[Any, str | list[str] | None, dict[str, Any] | None]:
    """(Dask DataFrame, source path(s) or None, the embeddings folder's dask_clip job or None)."""
    if hasattr(embeddings, "to_delayed") and hasattr(embeddings, "_meta"):
        return embeddings, None, None
    if not isinstance(embeddings, (str, os.PathLike, list, tuple)):
        raise TypeError(f"embeddings must be a Parquet path (or list of paths) or a Dask DataFrame, not {embeddings!r}")

    paths = [os.fspath(p) for p in embeddings] if isinstance(embeddings, (list, tuple)) else os.fspath(embeddings)
    location = [_location(p) for p in paths] if isinstance(paths, list) else _location(paths)
    from ..io.outputs import read_output  # Parquet, the LAION layout or Lance

    ddf = read_output(paths, storage_options)
    job = None
    if isinstance(paths, str) and "://" not in paths and (Path(paths) / "_dask_clip.json").is_file():
        job = json.loads((Path(paths) / "_dask_clip.json").read_text()).get("job")
    return ddf, location, job


def _location(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def _model_record(model: Any, job: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The embedding model as plain values (ModelSpec fields), for search by text or image."""
    from ..models.spec import ModelSpec

    if model is None:
        recorded = (job or {}).get("model")
        return dict(recorded) if isinstance(recorded, Mapping) else None
    if hasattr(model, "spec"):  # an ImageEmbedder
        model = model.spec
    if isinstance(model, ModelSpec):
        record = asdict(model)
        record.pop("device")
        return record
    if isinstance(model, Mapping):
        unknown = set(model) - set(ModelSpec.__dataclass_fields__)
        if unknown:
            raise ValueError(f"model has keys {sorted(unknown)} that ModelSpec does not")
        return dict(model)
    raise TypeError(f"model must be an ImageEmbedder, a ModelSpec or a dict of its fields, not {type(model).__name__}")


def _weights_record(model: Any, record: Mapping[str, Any] | None, job: Mapping[str, Any] | None) -> str | None:
    """The weights fingerprint of the embeddings: the embeddings folder's record, or, for a model
    given here, its folder's now (:mod:`dask_clip.models.weights_id`)."""
    from ..models.spec import ModelSpec
    from ..models.weights_id import weights_fingerprint

    if model is None:
        recorded = (job or {}).get("weights")
        return recorded if isinstance(recorded, str) else None
    if record is None or record.get("model_dir") is None:
        return None
    return weights_fingerprint(ModelSpec(**record))


def _check_index_dir(index_dir: str | os.PathLike) -> Path:
    text = os.fspath(index_dir)
    if "://" in text and not text.startswith("file://"):
        raise ValueError(f"index_dir={text!r}: faiss writes local files; give a local (or shared, mounted) folder")
    root = Path(text.removeprefix("file://"))
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"index_dir {text!r} is a file; give a folder")
    return root


def _resolve_columns(
    meta: Any,
    embedding_column: str,
    key_column: str | None,
    image_column: str | None,
    columns: Sequence[str] | None,
) -> tuple[str | None, list[str]]:
    names = [str(c) for c in meta.columns]
    if key_column == "auto":
        key_column = "key" if "key" in names else None
    kept = list(columns) if columns is not None else default_columns(meta, embedding_column, image_column)
    for extra in (key_column, image_column):
        if extra is not None and extra not in kept:
            kept.append(extra)
    check_columns(meta, embedding_column, kept, key_column, image_column)
    return key_column, kept


def _recorded_columns(
    meta: Any, recorded: Mapping[str, Any], key_column: str | None, image_column: str | None
) -> tuple[str | None, str | None]:
    """``"auto"`` key and image columns resolved from what the files record; given ones kept."""
    names = [str(c) for c in meta.columns]
    if key_column == "auto":
        key = recorded.get("key_column")
        key_column = key if key in names else ("key" if "key" in names else None)
    if image_column == "auto":
        image = recorded.get("image_column")
        image_column = image if image in names else None
    return key_column, image_column


def _sample_rows(index_key: str, n_rows: int) -> int:
    """Rows to sample before the dimension is known: enough for any key the rule may pick."""
    if index_key == "Flat":
        return min(n_rows, 1000)  # only the dimension is needed
    if index_key == "auto":
        nlist = keys._nlist(n_rows)
        return min(n_rows, max(keys.TRAIN_ROWS_PER_LIST * nlist, keys.MIN_PQ_TRAIN_ROWS))
    parsed = keys._parse_ivf(index_key)
    if parsed is None:
        raise ValueError(
            f"index_key={index_key!r}; give 'auto', 'Flat' or 'IVF{{nlist}}[_HNSW32],{{Flat|SQ8|PQ{{m}}}}'"
        )
    return min(n_rows, max(keys.TRAIN_ROWS_PER_LIST * parsed[0], keys.MIN_PQ_TRAIN_ROWS))


def _run(tasks: list[Any], client: Any, retries: int) -> Any:
    """Yield each task's result as it finishes."""
    if not tasks:
        return
    if client is None:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
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


def build(
    embeddings: Any,
    index_dir: str | os.PathLike,
    *,
    embedding_column: str = "embedding",
    key_column: str | None = "auto",
    image_column: str | None = "auto",
    columns: Sequence[str] | None = None,
    index_key: str = "auto",
    max_memory: int | str = keys.DEFAULT_MAX_MEMORY,
    on_disk: bool | None = None,
    nprobe: int | None = None,
    recall_target: float = DEFAULT_RECALL_TARGET,
    seed: int = 0,
    model: Any = None,
    overwrite: bool = False,
    progress: bool = False,
    client: Any = None,
    retries: int = 0,
    storage_options: dict | None = None,
) -> BuildSummary:
    """Build a cosine-similarity kNN index of an embedding column, on Dask.

    Parameters
    ----------
    embeddings
        A Parquet file or folder (e.g. the output of ``dask-clip embed``, read with
        ``dtype_backend="pyarrow"``), a list of them, or a Dask DataFrame with pandas
        partitions. A DataFrame is read two or three times (count, sample, add): persist an
        expensive one, or write it to Parquet first.
    index_dir
        Local (or shared, mounted) folder for the index; every worker writes its shards there.
    embedding_column
        The ``list<float32>`` column. Rows where it is null, non-finite or all zero are skipped
        and counted; the others are L2-normalised.
    key_column
        Column that names rows (``search_like(key)``); ``"auto"``: the key column the
        Parquet files record (:mod:`dask_clip.io.file_metadata`: ``key``, or ``path`` for a
        folder of images), else ``key`` where it exists.
    image_column
        Column of image bytes or paths/URLs kept for display (``dask-clip serve``, HTML
        results); ``"auto"``: the image column the Parquet files record, if any; None: no
        images. Bytes are stored in the id table in small row groups and left on disk by
        :func:`~dask_clip.index.load` (read one row group per image shown).
    columns
        Metadata columns to keep in the id table and return with results; default: all but
        the embedding, binary and list columns.
    index_key
        ``"auto"`` (:func:`~dask_clip.index.keys.choose_index_key`), ``"Flat"`` or an inverted
        file such as ``"IVF4096,Flat"``, ``"IVF4096,SQ8"``, ``"IVF65536_HNSW32,PQ64"``.
    max_memory
        Memory budget of the index when searched (``"4GB"``): it decides the codes of the
        auto key, and whether inverted lists go on disk.
    on_disk
        Inverted lists in a memory-mapped file beside the index; None: when the index would
        exceed ``max_memory``.
    nprobe
        Default lists visited per query, stored in the manifest; None: the smallest power of
        two reaching ``recall_target`` on sampled rows (:func:`~dask_clip.index.tune.tune_nprobe`),
        or the rule's (:func:`~dask_clip.index.keys.default_nprobe`) for on-disk lists.
    recall_target
        Recall@10 that the default ``nprobe`` must reach on sampled rows.
    seed
        Seeds the training sample and k-means.
    model
        The embedding model (``ImageEmbedder``, ``ModelSpec`` or its fields as a dict), stored
        for search by text or image; default: what ``dask-clip embed`` recorded in the folder.
    overwrite
        Start over: replace a finished index in ``index_dir`` (it stays loadable until the
        new one is published) and discard any interrupted build. Without it, an interrupted
        build of the same settings is resumed (even one started with ``overwrite=True``), and
        a finished index is an error.
    progress
        Show a progress bar over partitions.
    client
        A ``distributed.Client``; default: the current one, else Dask's default scheduler.
    retries
        Retries of a failed add task (distributed only).
    storage_options
        fsspec options for reading ``embeddings``.

    Returns
    -------
    BuildSummary

    Raises
    ------
    FileExistsError
        ``index_dir`` holds a finished index and ``overwrite`` is False.
    ValueError
        Unknown columns, a bad ``index_key``, no row with an embedding, or an interrupted
        build of other settings (pass ``overwrite=True``).
    """
    import_faiss()
    budget = keys.parse_memory(max_memory)
    root = _check_index_dir(index_dir)
    if index_key != "auto":
        _sample_rows(index_key, 1)  # validates the key's form before any work
    if nprobe is not None and (not isinstance(nprobe, int) or nprobe < 1):
        raise ValueError(f"nprobe={nprobe!r} must be a positive int")
    if not 0 < recall_target <= 1:
        raise ValueError(f"recall_target={recall_target!r} must be in (0, 1]")
    from ..dedup._frame import settle_partitions

    ddf, source, job = _read_source(embeddings, storage_options)
    ddf = settle_partitions(ddf)
    meta = ddf._meta.to_pandas() if hasattr(ddf._meta, "to_pandas") else ddf._meta  # cuDF: tasks convert too
    recorded = read_file_metadata(embeddings, storage_options) if source is not None else {}
    key_column, image_column = _recorded_columns(meta, recorded, key_column, image_column)
    key_column, kept = _resolve_columns(meta, embedding_column, key_column, image_column, columns)
    model_record = _model_record(model, job)
    build_dir = root / layout.BUILD_DIR
    request = {
        "source": source if source is not None else "dask dataframe",
        "npartitions": ddf.npartitions,
        "embedding_column": embedding_column,
        "columns": kept,
        "key_column": key_column,
        "image_column": image_column,
        "index_key": index_key,
        "max_memory": budget,
        "on_disk": on_disk,
        "seed": seed,
    }
    request = json.loads(json.dumps(request, default=str))
    state = _resume_state(build_dir, request, overwrite)
    if (root / layout.MANIFEST).is_file() and not overwrite and state is None:
        raise FileExistsError(
            f"{os.fspath(index_dir)!r} holds a finished index; pass overwrite=True (--overwrite) to rebuild it "
            "(the old one stays loadable until the new one is finished)"
        )
    steps = _Steps()
    build_dir.mkdir(parents=True, exist_ok=True)
    if state is None:
        from ..io.layout import output_format

        with steps("count"):
            local = [source] if isinstance(source, str) else source
            footers = isinstance(local, list) and not any("://" in p for p in local)
            footers = footers and all(output_format(p) == "parquet" for p in local or [])  # not LAION or Lance
            n_rows = count_rows(local if footers else ddf, embedding_column)
        with steps("sample"):
            sample = sample_embeddings(ddf, embedding_column, _sample_rows(index_key, n_rows), n_rows, seed)
        if sample.shape[0] == 0:
            raise ValueError(f"no row of the {n_rows} has a usable embedding in {embedding_column!r}: nothing to index")
        dim = int(sample.shape[1])
        if index_key == "auto":
            choice = keys.choose_index_key(n_rows, dim, budget)
            if on_disk is not None and on_disk != choice.on_disk:
                choice = keys.describe_key(choice.index_key, n_rows, dim, budget, on_disk)
        else:
            choice = keys.describe_key(index_key, n_rows, dim, budget, on_disk)
        if sample.shape[0] > choice.train_rows > 0:
            sample = sample[np.sort(np.random.default_rng(seed).choice(sample.shape[0], choice.train_rows, False))]
        with steps("train"):
            trained = train_index(choice.index_key, sample, seed)
            tune_rows = np.random.default_rng(seed + 1).permutation(sample.shape[0])[:TUNE_QUERIES]
            layout.atomic_write_bytes(build_dir / TUNE_FILE, _npy(sample[np.sort(tune_rows)]))
            _write_trained(trained, build_dir / layout.TRAINED_FILE)
        del sample
        state = {"request": request, "choice": choice.to_dict(), "dim": dim, "n_rows": n_rows}
        layout.atomic_write_json(build_dir / layout.BUILD_JOB, state)
    choice = keys.IndexChoice(**state["choice"])
    n = ddf.npartitions
    already = done_partitions(build_dir, n)
    todo = [i for i in range(n) if i not in set(already)]
    stats: dict[int, dict[str, int]] = {i: part_stats(build_dir / "ids" / layout.id_part_name(i, n)) for i in already}
    with steps("add"):
        tasks = add_tasks(ddf, build_dir, embedding_column, kept, todo)
        bar = None
        if progress:
            from ..runtime.progress import Progress

            bar = Progress(len(tasks), desc="dask-clip index", unit="vectors")
        try:
            for result in _run(tasks, client, retries):
                stats[int(result["partition"])] = result
                if bar is not None:
                    bar.update(result["vectors"])
        finally:
            if bar is not None:
                bar.close()
    missing = sorted(set(range(n)) - set(done_partitions(build_dir, n)))
    if missing:
        raise RuntimeError(f"partitions {missing[:10]} have no shard after the add step")
    with steps("merge"):
        shards = [build_dir / "shards" / layout.shard_name(i, n) for i in range(n)]
        merged = merge_shards(build_dir, shards, choice.on_disk)
        shutil.rmtree(build_dir / "shards")
        (build_dir / layout.TRAINED_FILE).unlink()
    tuning = None
    if nprobe is None and choice.nprobe is not None:
        with steps("tune"):
            nprobe, tuning = _tune(merged, build_dir / TUNE_FILE, choice, recall_target, budget)
    (build_dir / TUNE_FILE).unlink(missing_ok=True)
    ordered = [stats[i] for i in range(n)]
    totals = {c: int(sum(s[c] for s in ordered)) for c in _COUNTS}
    summary = BuildSummary(
        index_dir=os.fspath(index_dir),
        index_key=choice.index_key,
        nprobe=nprobe if nprobe is not None else choice.nprobe,
        on_disk=choice.on_disk,
        dim=state["dim"],
        partitions=n,
        added=len(todo),
        skipped=len(already),
        train_rows=choice.train_rows,
        reason=choice.reason,
        tuning=tuning,
        steps=steps.times,
        key_column=key_column,
        image_column=image_column,
        **totals,
    )
    manifest = {
        "index_key": choice.index_key,
        "metric": "inner_product",
        "normalized": True,
        "dim": state["dim"],
        "nprobe": summary.nprobe,
        "on_disk": choice.on_disk,
        "counts": totals,
        "partition_rows": [int(s["rows"]) for s in ordered],
        "source": request["source"],
        "embedding_column": embedding_column,
        "key_column": key_column,
        "image_column": image_column,
        "columns": kept,
        "model": model_record,
        "weights": _weights_record(model, model_record, job),
        "choice": choice.to_dict(),
        "nprobe_tuning": tuning,
        "build": {"seed": seed, "max_memory": budget, "requested_index_key": index_key, "on_disk": on_disk},
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with steps("publish"):
        (build_dir / layout.BUILD_JOB).unlink()
        layout.finish(root, manifest)
    summary.steps = steps.times
    return summary


def _resume_state(build_dir: Path, request: Mapping[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The saved state of an interrupted build of the same request, or None (after clearing a
    build of another request when ``overwrite``)."""
    job_file = build_dir / layout.BUILD_JOB
    if not build_dir.exists():
        return None
    state = None
    if job_file.is_file() and (build_dir / layout.TRAINED_FILE).is_file():
        state = json.loads(job_file.read_text())
    if state is not None and state["request"] == request and not overwrite:
        logger.info("resuming the interrupted build in %s", build_dir)
        return state
    if state is not None and not overwrite:
        theirs = state["request"]
        changed = {k: v for k, v in request.items() if theirs.get(k) != v}
        details = "; ".join(f"{k}: {theirs.get(k)!r} there, {v!r} now" for k, v in changed.items())
        raise ValueError(
            f"{build_dir} holds an interrupted build of other settings ({details}); pass overwrite=True "
            "(--overwrite) to discard it"
        )
    shutil.rmtree(build_dir)  # overwrite, or a build killed before its training was saved
    return None


def _npy(x: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, x, allow_pickle=False)
    return buffer.getvalue()


def _tune(
    index_path: Path, queries_path: Path, choice: keys.IndexChoice, target: float, budget: int
) -> tuple[int | None, dict[str, Any]]:
    """(default nprobe, what the tuning saw) — the rule's nprobe where tuning is skipped."""
    from .merge import read_index

    if choice.on_disk and choice.estimated_bytes > budget:
        # a scan of every list per query would read the whole file from disk, many times
        return choice.nprobe, {"skipped": "on-disk lists larger than max_memory", "rule": choice.nprobe}
    index = read_index(index_path, on_disk=choice.on_disk, mmap=not choice.on_disk)
    if index.ntotal > TUNE_MAX_VECTORS or not queries_path.is_file():
        return choice.nprobe, {"skipped": f"more than {TUNE_MAX_VECTORS} vectors", "rule": choice.nprobe}
    queries = np.load(queries_path, allow_pickle=False)
    nprobe, recalls = tune_nprobe(index, queries, target=target)
    return nprobe, {"target": target, "queries": len(queries), "recall_at_10": recalls, "rule": choice.nprobe}


def _write_trained(index: Any, path: Path) -> None:
    faiss = import_faiss()
    layout.atomic_write_bytes(path, faiss.serialize_index(index).tobytes())


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("dask-clip", "faiss-cpu", "dask"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out
