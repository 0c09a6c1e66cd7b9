"""Whole jobs, input folder to output folder: what ``dask-clip embed`` runs, for Python users too.

:func:`embed_parquet` reads an image input (:func:`~dask_clip.io.read.read_images`), embeds it
and writes it through an output format of :mod:`dask_clip.io.writers` (Parquet by default), with
the job's fingerprint in the output folder's manifest: a rerun resumes, and a different job (another
model, input, column names or partitioning) into the same folder is refused instead of mixed in.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..io.read import PATH_COLUMN, input_request, read_images
from ..io.readers import fingerprint as input_fingerprint
from ..io.webdataset_partition import READ_ERROR as READ_ERROR_COLUMN
from ..io.writers.base import WriteSummary, location
from ..io.writers.partitioned import check_format_output, write_format
from ..models.weights_id import weights_fingerprint
from ..validation import with_settings
from .embedder import ImageEmbedder

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = ["EmbedJob", "EmbedSettings", "embed_parquet", "prepare_embed", "run_embed"]


@dataclass
class EmbedJob:
    """An embedding job, checked and ready to run (nothing computed yet).

    Attributes
    ----------
    frame : dask.dataframe.DataFrame
        The lazy output: the input's rows plus the embedder's columns.
    embedder : ImageEmbedder
        The embedder, with its image column resolved for this input.
    output : str
        The output folder.
    fingerprint : dict
        What defines the output; recorded in the folder's manifest.
    todo : list of int
        Partitions whose file is still missing.
    file_metadata : dict
        Recorded in every output file (:mod:`dask_clip.io.file_metadata`): its image and key
        columns, for ``index``, ``serve`` and ``dedup`` to pick up.
    output_format : PartitionFormat
        The output format (:mod:`dask_clip.io.writers`).
    """

    frame: dd.DataFrame
    embedder: ImageEmbedder
    output: str
    fingerprint: dict[str, Any]
    todo: list[int]
    file_metadata: dict[str, Any] = field(default_factory=dict)
    output_format: Any = None  # set by prepare_embed


@dataclass(frozen=True)
class EmbedSettings:
    """How an embedding job reads its input and writes its output: the keyword arguments of
    :func:`prepare_embed` and :func:`embed_parquet` (same names, same defaults; documented there)."""

    image_column: str | None = None
    partition_size: int = 256
    split_row_groups: bool = False
    overwrite: bool = False
    storage_options: dict | None = None
    input_format: str = "auto"
    split_shards: int | str | None = None
    output_format: str = "parquet"
    embedding_dtype: str = "float16"


def embed_settings(settings: EmbedSettings | None = None, **given: Any) -> EmbedSettings:
    """``settings`` (default: the defaults) with the keyword arguments ``given`` on top.

    Raises
    ------
    TypeError
        An argument :class:`EmbedSettings` does not have (the message lists them).
    """
    return with_settings(EmbedSettings, settings, given, what="arguments", name="settings")


def prepare_embed(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    embedder: ImageEmbedder,
    settings: EmbedSettings | None = None,
    **given: Any,
) -> EmbedJob:
    """Read the input lazily, validate everything on the client, and check the output folder.

    The arguments are those of :func:`embed_parquet` that say what to compute and where
    (``settings`` and its keyword arguments).

    Returns
    -------
    EmbedJob

    Raises
    ------
    ValueError, TypeError, FileNotFoundError
        Bad configuration, or an output folder holding another job's files.
    """
    job = embed_settings(settings, **given)
    image_column, partition_size, split_row_groups = job.image_column, job.partition_size, job.split_row_groups
    overwrite, storage_options, input_format = job.overwrite, job.storage_options, job.input_format
    split_shards, output_format, embedding_dtype = job.split_shards, job.output_format, job.embedding_dtype
    ddf, guessed = read_images(
        input_path,
        image_column=image_column,
        partition_size=partition_size,
        split_row_groups=True if split_row_groups else "infer",
        storage_options=storage_options,
        input_format=input_format,
        split_shards=split_shards,
        max_member_bytes=embedder.max_image_bytes,
    )
    column = image_column or (embedder.image_column if embedder.image_column in ddf.columns else guessed)
    embedder = replace(embedder, image_column=column)
    frame = embedder(ddf)  # validates everything on the client; lazy
    fingerprint = {
        "command": "embed",
        "input": location(input_path),
        **embedder.fingerprint(),
        "partition_size": partition_size,
        "split_row_groups": split_row_groups,
        "input_format": input_format,
    }
    # what the input format adds (WebDataset: its shard list, which the partitions follow)
    request = input_request(input_path, split_shards=split_shards, storage_options=storage_options)
    fingerprint.update(input_fingerprint(request, input_format))
    if embedder.model_dir is not None:  # the folder decides the architecture
        fingerprint["model"] = {"model_dir": location(embedder.model_dir), "precision": embedder.precision}
        # What the folder holds: weights replaced in place make a resumed run another job.
        fingerprint["weights"] = weights_fingerprint(embedder.spec)
    output = os.fspath(output_path)
    fmt = make_output_format(output_format, embedder, embedding_dtype)
    todo = check_format_output(
        output, frame.npartitions, fmt, job=fingerprint, overwrite=overwrite, storage_options=storage_options
    )
    return EmbedJob(
        frame=frame,
        embedder=embedder,
        output=output,
        fingerprint=fingerprint,
        todo=todo,
        file_metadata=recorded_columns(list(frame.columns), column),
        output_format=fmt,
    )


def make_output_format(name: str, embedder: ImageEmbedder, embedding_dtype: str = "float16") -> Any:
    """The writer format of ``--output-format`` for this embedder's columns (the registry of
    :mod:`dask_clip.io.writers`).

    ``embedding_dtype`` applies to ``laion`` (its ``.npy`` files); Lance and Parquet store float32.
    """
    from ..io.writers import build_output_format

    return build_output_format(name, embedder, {"embedding_dtype": embedding_dtype})


def __getattr__(name: str) -> Any:
    if name == "OUTPUT_FORMATS":  # the former constant, from the registry on first use
        from ..io.writers import output_format_names

        return output_format_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def recorded_columns(columns: list[str], image_column: str) -> dict[str, Any]:
    """The image and key columns an embedding output records (those it still has).

    The key is ``key`` (img2dataset, WebDataset) where the output has it; for a folder of
    images, the file ``path`` (unique, and what a user recognises a row by).
    """
    image = image_column if image_column in columns else None
    if "key" in columns:
        key: str | None = "key"
    else:
        key = PATH_COLUMN if PATH_COLUMN in columns else None
    return {"image_column": image, "key_column": key}


def embed_parquet(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    embedder: ImageEmbedder,
    settings: EmbedSettings | None = None,
    *,
    client: Any = None,
    progress: bool = False,
    retries: int = 0,
    **given: Any,
) -> WriteSummary:
    """Embed an image input into a folder of Parquet files, resuming an interrupted run.

    Parameters
    ----------
    input_path
        Parquet file, folder, glob or fsspec URL (img2dataset output), or a folder of image
        files; see :func:`~dask_clip.io.read.read_images`.
    output_path
        Output folder (local or fsspec URL): ``part-NNNNN.parquet`` per partition and a
        ``_dask_clip.json`` manifest.
    embedder
        What to compute. Its ``image_column`` is used where the input has it; otherwise
        ``image_column`` or the input's image column (``jpg``, ``image``, ..., ``path``).
    settings
        The keyword arguments below that say what to read and write, as one
        :class:`EmbedSettings`; keyword arguments override it.
    image_column
        The image column, overriding both.
    partition_size
        Image files per partition, for a folder of images.
    split_row_groups
        One partition per Parquet row group.
    overwrite
        Start over: remove this folder's part files first. Otherwise finished files are kept
        and only the missing partitions are computed.
    client
        A ``distributed.Client``; default: the current one, else Dask's local scheduler.
    progress
        A progress bar on stderr.
    retries
        Retries of a failed partition.
    storage_options
        fsspec options for remote input and output.
    input_format
        ``"auto"``, ``"parquet"``, ``"webdataset"`` or ``"images"``; see
        :func:`~dask_clip.io.read.read_images`.
    split_shards
        WebDataset input: bytes of tar per partition (default: one partition per shard).

    Returns
    -------
    WriteSummary
        ``counts["errors"]`` is the number of rows without an embedding, ``counts["read_errors"]``
        that of WebDataset rows the tar reader reported.
    """
    chosen = embed_settings(settings, **given)
    job = prepare_embed(input_path, output_path, embedder, chosen)
    return run_embed(
        job,
        overwrite=chosen.overwrite,
        client=client,
        progress=progress,
        retries=retries,
        storage_options=chosen.storage_options,
    )


def run_embed(
    job: EmbedJob,
    *,
    overwrite: bool = False,
    client: Any = None,
    progress: bool = False,
    retries: int = 0,
    storage_options: dict | None = None,
) -> WriteSummary:
    """Compute and write a prepared :class:`EmbedJob` (the partitions still missing)."""
    return write_format(
        job.frame,
        job.output,
        job.output_format,
        overwrite=overwrite,
        job=job.fingerprint,
        client=client,
        progress=progress,
        retries=retries,
        partition_stats=functools.partial(_job_stats, error_column=job.embedder.error_column),
        storage_options=storage_options,
        file_metadata=job.file_metadata,
        gpu_share=job.embedder.num_gpus_per_worker,  # a GPU resource where workers declare one
    )


def _job_stats(df: Any, error_column: str) -> dict[str, int]:
    """Per written partition: rows without an embedding, and rows the tar reader reported."""
    stats = {"errors": int(df[error_column].notna().sum())}
    if READ_ERROR_COLUMN in df.columns:
        stats["read_errors"] = int(df[READ_ERROR_COLUMN].notna().sum())
    return stats
