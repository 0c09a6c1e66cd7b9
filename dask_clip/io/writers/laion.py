"""The LAION embedding layout that embedding-reader, autofaiss and clip-retrieval's back end read.

Output layout (``W`` digits, that of the partition count, as clip-retrieval pads them)::

    OUTPUT/
      _dask_clip.json                       the manifest (format "laion", dtype, the job)
      img_emb/img_emb_{i:0W}.npy            float16 or float32 (rows, D): the image embeddings
      text_emb/text_emb_{i:0W}.npy          the same for captions, when they were embedded
      metadata/metadata_{i:0W}.parquet      the other columns, row for row, without the image bytes

Row ``r`` of ``img_emb_i.npy`` (and of ``text_emb_i.npy``) is row ``r`` of ``metadata_i.parquet``:
embedding-reader pairs the files by sorted name and the rows by position. A NumPy file has no
nulls, so rows without an embedding (a broken image; with captions, also an empty caption) are
left out of all three files; the job's summary counts them (``dropped``), and the Parquet format
keeps them with their error message.

A partition is committed by renaming its files into place in the order metadata, text, image:
``img_emb_i.npy`` present means partition ``i`` is complete. A killed run can leave a metadata
file without its embeddings, which embedding-reader would pair with the wrong file: rerun the
same command to finish the output before reading it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .base import OutputFormat, _listing, _open, put
from .partitioned import write_format

if TYPE_CHECKING:
    import dask.dataframe as dd

    from ...embed.embedder import ImageEmbedder
    from .base import WriteSummary

__all__ = ["DTYPES", "LaionFormat", "read_laion", "write_laion"]

DTYPES = ("float16", "float32")
IMAGE_FOLDER, TEXT_FOLDER, METADATA_FOLDER = "img_emb", "text_emb", "metadata"
_TEMP = re.compile(r"^\..*\.tmp$")


def width(npartitions: int) -> int:
    """Digits of the partition numbers: those of the count, as clip-retrieval writes them."""
    return len(str(max(npartitions, 1)))


def file_names(index: int, npartitions: int) -> dict[str, str]:
    """``{"img_emb": "img_emb/img_emb_07.npy", "text_emb": ..., "metadata": ...}`` for one partition."""
    i = f"{index:0{width(npartitions)}d}"
    return {
        IMAGE_FOLDER: f"{IMAGE_FOLDER}/img_emb_{i}.npy",
        TEXT_FOLDER: f"{TEXT_FOLDER}/text_emb_{i}.npy",
        METADATA_FOLDER: f"{METADATA_FOLDER}/metadata_{i}.parquet",
    }


def _matrix(column: pa.ChunkedArray | pa.Array, keep: np.ndarray, dtype: str, name: str, dim: int | None) -> np.ndarray:
    """The rows ``keep`` (bool (n,), only rows that are not null) of a list<float> column as a
    C-contiguous (keep.sum(), D) array; with no rows, (0, dim or 0).

    ``flatten()`` gives the values of the non-null rows in order (a view of the values when null
    rows span none, as the embedder writes them); rows are then picked with NumPy, not with
    Arrow's ``take`` on the list column, which is several times slower than the whole write.
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    m = int(valid.sum())
    if m == 0 or not keep.any():
        return np.empty((0, dim or 0), dtype=dtype)
    lengths = pc.list_value_length(arr).drop_null().to_numpy(zero_copy_only=False)
    d = int(lengths[0])
    if (lengths != d).any() or (dim is not None and d != dim):
        raise ValueError(f"column {name!r} holds embeddings of different lengths ({lengths.min()}..{lengths.max()})")
    x = arr.flatten().to_numpy(zero_copy_only=False).reshape(m, d)
    picked = keep[valid]
    if not picked.all():
        x = x[picked]
    return np.ascontiguousarray(x, dtype=dtype)


def _save(matrix: np.ndarray) -> Any:
    return lambda f: np.save(f, matrix, allow_pickle=False)


@dataclass(frozen=True)
class LaionFormat:
    """The LAION layout as a :class:`~dask_clip.io.writers.partitioned.PartitionFormat`.

    Parameters
    ----------
    embedding_column
        The image embedding column (``list<float32>``), written to ``img_emb/``.
    text_column
        The caption embedding column, written to ``text_emb/``; None: none (also when the
        frame lacks it).
    dtype
        ``"float16"`` (LAION's published files, half the bytes) or ``"float32"`` (bit-identical).
    drop_columns
        Columns left out of the metadata besides the embeddings (the image bytes).
    dim
        Embedding width D, if known (``ImageEmbedder.spec.embed_dim()``): a partition without
        any embedding then writes a (0, D) file instead of (0, 0), and a wrong width is refused.
    """

    embedding_column: str = "embedding"
    text_column: str | None = "text_embedding"
    dtype: str = "float16"
    drop_columns: tuple[str, ...] = ()
    dim: int | None = None
    name: str = field(default="laion", init=False)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: use one of {', '.join(DTYPES)}")

    @property
    def options(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "embedding_column": self.embedding_column}

    def foreign(self, fs: Any, root: str, names: list[str], manifest: Mapping[str, Any] | None) -> list[str]:
        if manifest is not None:
            return []
        # this format's own folders, empty, are what a run that failed before its first
        # partition leaves (the first partition writes the manifest before any file)
        own = (IMAGE_FOLDER, TEXT_FOLDER, METADATA_FOLDER)
        return [n for n in names if n not in own] + [
            n for n in names if n == IMAGE_FOLDER and any(not m.startswith(".") for m in _listing(fs, f"{root}/{n}"))
        ]

    def prepare(self, fs: Any, root: str, npartitions: int, overwrite: bool) -> None:
        for folder in (IMAGE_FOLDER, TEXT_FOLDER, METADATA_FOLDER):
            fs.makedirs(f"{root}/{folder}", exist_ok=True)
            for name in _listing(fs, f"{root}/{folder}"):
                if _TEMP.match(name) or overwrite:
                    fs.rm(f"{root}/{folder}/{name}")

    def committed(self, fs: Any, root: str, npartitions: int) -> set[int]:
        present = set(_listing(fs, f"{root}/{IMAGE_FOLDER}"))
        marker = {os.path.basename(file_names(i, npartitions)[IMAGE_FOLDER]): i for i in range(npartitions)}
        return {i for name, i in marker.items() if name in present}

    def write_partition(self, table: pa.Table, fs: Any, root: str, index: int, npartitions: int) -> dict[str, int]:
        if self.embedding_column not in table.column_names:
            raise ValueError(f"no column {self.embedding_column!r} to write to {IMAGE_FOLDER}/")
        vectors = [self.embedding_column]
        if self.text_column is not None and self.text_column in table.column_names:
            vectors.append(self.text_column)
        keep = np.ones(table.num_rows, dtype=bool)
        for name in vectors:
            keep &= table.column(name).is_valid().to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(keep)
        names = file_names(index, npartitions)
        drop = {*vectors, *self.drop_columns}
        metadata = table.select([c for c in table.column_names if c not in drop])
        if len(rows) < table.num_rows:
            metadata = metadata.take(pa.array(rows, type=pa.int64()))
        image = _matrix(table.column(self.embedding_column), keep, self.dtype, self.embedding_column, self.dim)
        # Commit order: metadata, text, image; the image file is the marker (module docstring).
        put(
            fs,
            f"{root}/{METADATA_FOLDER}",
            os.path.basename(names[METADATA_FOLDER]),
            lambda f: pq.write_table(metadata, f),
        )
        if len(vectors) > 1:
            text = _matrix(table.column(vectors[1]), keep, self.dtype, vectors[1], self.dim)
            put(fs, f"{root}/{TEXT_FOLDER}", os.path.basename(names[TEXT_FOLDER]), _save(text))
        put(fs, f"{root}/{IMAGE_FOLDER}", os.path.basename(names[IMAGE_FOLDER]), _save(image))
        return {"dropped": int(table.num_rows - len(rows))}

    def finish(self, fs: Any, root: str, npartitions: int) -> None:
        text = f"{root}/{TEXT_FOLDER}"
        if fs.exists(text) and not _listing(fs, text):  # no captions embedded: no text_emb/
            fs.rm(text, recursive=True)


def write_laion(
    ddf: dd.DataFrame,
    path: str | os.PathLike,
    *,
    embedding_column: str = "embedding",
    text_column: str | None = "text_embedding",
    dtype: str = "float16",
    drop_columns: tuple[str, ...] = (),
    dim: int | None = None,
    **kwargs: Any,
) -> WriteSummary:
    """Write a frame with an embedding column in the LAION layout (module docstring).

    Parameters
    ----------
    ddf
        A Dask DataFrame with ``embedding_column`` (``list<float32>``, e.g. an embedder's output).
    path
        Output folder, local or an fsspec URL.
    embedding_column, text_column, dtype, drop_columns, dim
        As :class:`LaionFormat`.
    **kwargs
        ``overwrite``, ``job``, ``client``, ``progress``, ``retries``, ``storage_options``,
        ``partition_stats``, ``file_metadata``: as :func:`dask_clip.io.writers.parquet.write_parquet`.

    Returns
    -------
    WriteSummary
        ``counts["dropped"]``: rows left out for a missing embedding.
    """
    fmt = LaionFormat(embedding_column, text_column, dtype, tuple(drop_columns), dim)
    return write_format(ddf, path, fmt, **kwargs)


def _read_part(index: int, root: str, npartitions: int, text: bool, storage_options: dict | None) -> Any:
    import pandas as pd

    from ...backends.arrow import list_float32_array

    fs, _ = _open(root, storage_options)
    names = file_names(index, npartitions)
    with fs.open(f"{root}/{names[METADATA_FOLDER]}", "rb") as f:
        table = pq.read_table(f)
    columns = {}
    for folder, column in ((IMAGE_FOLDER, "embedding"), (TEXT_FOLDER, "text_embedding")):
        if folder == TEXT_FOLDER and not text:
            continue
        with fs.open(f"{root}/{names[folder]}", "rb") as f:
            x = np.load(f, allow_pickle=False).astype(np.float32, copy=False)
        if x.shape[0] != table.num_rows:
            raise ValueError(f"{names[folder]} has {x.shape[0]} rows, {names[METADATA_FOLDER]} {table.num_rows}")
        columns[column] = list_float32_array(x, np.ones(len(x), dtype=bool))
    for column, values in columns.items():
        table = table.append_column(column, values)
    return table.to_pandas(types_mapper=pd.ArrowDtype)


def read_laion(path: str | os.PathLike, storage_options: dict | None = None) -> dd.DataFrame:
    """Read a LAION-layout output back as a Dask DataFrame, one partition per file triple.

    The metadata columns with ``embedding`` (and ``text_embedding`` where ``text_emb/`` exists)
    appended as ``list<float32>`` columns, float32 (float16 files are widened exactly).
    """
    import dask.dataframe as dd

    fs, root = _open(path, storage_options)
    names = sorted(n for n in _listing(fs, f"{root}/{IMAGE_FOLDER}") if n.endswith(".npy") and not n.startswith("."))
    if not names:
        raise FileNotFoundError(f"{os.fspath(path)!r} has no {IMAGE_FOLDER}/*.npy: not a LAION-layout output")
    n = len(names)
    expected = [os.path.basename(file_names(i, n)[IMAGE_FOLDER]) for i in range(n)]
    if names != expected:
        raise ValueError(
            f"{os.fspath(path)!r} is an incomplete LAION-layout output ({IMAGE_FOLDER}/ holds {names[:3]}..., not "
            f"{expected[:3]}...): run the same dask-clip embed command again to finish it"
        )
    text = bool(_listing(fs, f"{root}/{TEXT_FOLDER}"))
    return dd.from_map(_read_part, range(n), root=root, npartitions=n, text=text, storage_options=storage_options)


def _build(embedder: ImageEmbedder, options: Mapping[str, Any]) -> LaionFormat:
    text = embedder.text_output_column if embedder.text_column is not None else None
    drop = () if embedder.remove_image_data else (embedder.image_column,)
    dim = embedder.spec.embed_dim()
    return LaionFormat(embedder.output_column, text, options.get("embedding_dtype", "float16"), drop, dim)


FORMAT = OutputFormat(
    "laion",
    _build,
    "img_emb/*.npy + metadata/*.parquet, as LAION publishes them (embedding-reader, autofaiss)",
    priority=20,
)
