"""Lance datasets: one fragment per partition, committed as one version when all are written.

Needs ``pylance`` (``pip install "dask-clip[lance]"``). Output layout::

    OUTPUT/                                 a Lance dataset: lance.dataset(OUTPUT)
      _versions/ data/ _transactions/       Lance's own files
      _dask_clip.json                       the manifest (format "lance", the job)
      _dask_clip_fragments/part-00007.json  partition 7's fragment, written and not yet committed

Each partition's task writes its rows as one Lance fragment (``LanceFragment.create``: data
files no version refers to yet) and then, atomically, a small JSON file describing it: that file
is the partition's commit marker. Once every partition is there, the driver commits one
``Overwrite`` version made of the fragments in partition order, so the dataset's row order is
the frame's. Readers see either the previous version or the complete new one, never a part.
A killed run leaves fragments no version refers to; the rerun writes only the missing ones,
and a finished run's rerun writes nothing (the version is already there). Data files of
fragments that a killed task wrote before its marker stay unreferenced until
``lance.dataset(OUTPUT).cleanup_old_versions()``.

Embedding columns become ``fixed_size_list<float32>[D]`` (Lance's vector type, what its vector
indexes and LanceDB search take); null rows stay null. Other columns keep their Arrow types.

Adding embeddings to an existing Lance dataset of images, without rewriting the images, is
:func:`add_embedding_columns` (Lance's own ``merge_columns`` per fragment, one task each).
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from .base import OutputFormat, _listing, put
from .partitioned import write_format

if TYPE_CHECKING:
    import dask.dataframe as dd

    from ...embed.embedder import ImageEmbedder
    from .base import WriteSummary

__all__ = ["LanceFormat", "add_embedding_columns", "read_lance", "vector_column", "write_lance"]

FRAGMENTS = "_dask_clip_fragments"
_TEMP = re.compile(r"^\..*\.tmp$")
_INSTALL = 'Lance output needs pylance: pip install "dask-clip[lance]"'


def _lance() -> Any:
    try:
        import lance
    except ImportError as e:
        raise ImportError(_INSTALL) from e
    return lance


def _marker(index: int, npartitions: int) -> str:
    return f"part-{index:0{max(5, len(str(max(npartitions - 1, 0))))}d}.json"


def vector_column(column: pa.ChunkedArray | pa.Array, dim: int | None, name: str) -> pa.FixedSizeListArray:
    """A ``list<float32>`` column as ``fixed_size_list<float32>[D]``, null rows kept null.

    Raises ``ValueError`` when rows differ in length, or no row says D and ``dim`` is None.
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_fixed_size_list(arr.type):
        return arr
    lengths = pc.list_value_length(arr).drop_null().to_numpy(zero_copy_only=False)
    if len(lengths):
        d = int(lengths[0])
        if (lengths != d).any() or (dim is not None and d != dim):
            raise ValueError(f"column {name!r} holds embeddings of lengths {sorted(set(lengths.tolist()))[:5]}")
    elif dim is None:
        raise ValueError(f"column {name!r} has no embedding in this partition to tell its width; pass dim=D")
    else:
        d = dim
    valid = arr.is_valid()
    # null rows of a list span no values; a fixed-size list needs D placeholder values for them
    filled = pc.if_else(valid, arr, pa.scalar([0.0] * d, type=arr.type)) if arr.null_count else arr
    values = filled.flatten().cast(pa.float32())
    return pa.FixedSizeListArray.from_arrays(values, d, mask=pc.invert(valid) if arr.null_count else None)


def aligned(table: pa.Table) -> pa.Table:
    """``table`` with every buffer aligned to 8 bytes (a copy only where one is not).

    Lance panics on a misaligned buffer ("Memory pointer from external source ... is not
    aligned"); a partition that Dask moved between processes can hold such buffers (pickle's
    out-of-band buffers keep the sender's byte offsets). Arrow's IPC format pads every buffer.
    """

    def misaligned(array: pa.Array) -> bool:
        return any(b is not None and b.address % 8 for b in array.buffers())

    if not any(misaligned(chunk) for column in table.columns for chunk in column.chunks):
        return table
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return pa.ipc.open_stream(sink.getvalue()).read_all()


def _schema_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def _schema_from(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


@dataclass(frozen=True)
class LanceFormat:
    """Lance as a :class:`~dask_clip.io.writers.partitioned.PartitionFormat`.

    Parameters
    ----------
    vector_columns
        ``list<float32>`` columns stored as ``fixed_size_list<float32>[D]`` (those the frame has).
    dim
        D, if known (``ImageEmbedder.spec.embed_dim()``); else read from the data, and a
        partition without any embedding is refused.
    max_rows_per_group
        Lance's row group size within a fragment.
    """

    vector_columns: tuple[str, ...] = ("embedding", "text_embedding")
    dim: int | None = None
    max_rows_per_group: int = 1024
    name: str = field(default="lance", init=False)

    @property
    def options(self) -> dict[str, Any]:
        return {"vector_columns": list(self.vector_columns)}

    def foreign(self, fs: Any, root: str, names: list[str], manifest: Mapping[str, Any] | None) -> list[str]:
        if manifest is not None:
            return []
        # what a run that failed before its first partition leaves: its markers' folder, empty
        # (and data files of a killed task that no version refers to); a dataset's _versions is not ours
        return [n for n in names if n not in (FRAGMENTS, "data")] + [
            n for n in names if n == FRAGMENTS and any(not m.startswith(".") for m in _listing(fs, f"{root}/{n}"))
        ]

    def prepare(self, fs: Any, root: str, npartitions: int, overwrite: bool) -> None:
        _lance()
        folder = f"{root}/{FRAGMENTS}"
        fs.makedirs(folder, exist_ok=True)
        for name in _listing(fs, folder):
            if _TEMP.match(name) or overwrite:
                fs.rm(f"{folder}/{name}")

    def committed(self, fs: Any, root: str, npartitions: int) -> set[int]:
        present = set(_listing(fs, f"{root}/{FRAGMENTS}"))
        return {i for i in range(npartitions) if _marker(i, npartitions) in present}

    def write_partition(self, table: pa.Table, fs: Any, root: str, index: int, npartitions: int) -> dict[str, int]:
        from lance.fragment import LanceFragment

        for name in self.vector_columns:
            if name in table.column_names:
                i = table.column_names.index(name)
                table = table.set_column(i, name, vector_column(table.column(name), self.dim, name))
        # pandas' metadata differs between partitions (index ranges); a dataset has one schema
        meta = {k: v for k, v in (table.schema.metadata or {}).items() if k != b"pandas"}
        table = aligned(table.replace_schema_metadata(meta or None))
        fragment = LanceFragment.create(
            _uri(fs, root), table, fragment_id=index, schema=table.schema, max_rows_per_group=self.max_rows_per_group
        )
        record = json.dumps({"fragment": fragment.to_json(), "schema": _schema_text(table.schema)})
        put(fs, f"{root}/{FRAGMENTS}", _marker(index, npartitions), lambda f: f.write(record), mode="w")
        return {}

    def finish(self, fs: Any, root: str, npartitions: int) -> None:
        lance = _lance()
        from lance.fragment import FragmentMetadata

        records = []
        for i in range(npartitions):
            with fs.open(f"{root}/{FRAGMENTS}/{_marker(i, npartitions)}", "r") as f:
                records.append(json.load(f))
        fragments = [FragmentMetadata.from_json(json.dumps(r["fragment"])) for r in records]
        wanted = [[d.path for d in f.files] for f in fragments]
        uri = _uri(fs, root)
        try:
            current = lance.dataset(uri)
        except ValueError:  # no version yet
            current = None
        if current is not None and [[d.path for d in f.metadata.files] for f in current.get_fragments()] == wanted:
            return  # this output is already committed
        schemas = [_schema_from(r["schema"]) for r in records]
        schema = _common_schema(schemas)
        lance.LanceDataset.commit(
            uri,
            lance.LanceOperation.Overwrite(schema, fragments),
            read_version=current.version if current is not None else None,
        )


def _common_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """The one schema of all fragments; a clear error naming the column where they differ."""
    first = schemas[0]
    for i, other in enumerate(schemas[1:], 1):
        if not other.equals(first):
            diff = [f"{a.name}: {a.type} / {b.type}" for a, b in zip(first, other, strict=False) if a != b]
            raise ValueError(
                f"partition {i} has another schema than partition 0 ({'; '.join(diff) or other.names}); "
                "give the frame one dtype per column (e.g. a string column that is all null in some partitions)"
            )
    return first


def _uri(fs: Any, root: str) -> str:
    """The dataset's URI for Lance, from the fsspec filesystem and path."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return root if protocol in ("file", "local") else f"{protocol}://{root}"


def write_lance(
    ddf: dd.DataFrame,
    uri: str | os.PathLike,
    *,
    vector_columns: Sequence[str] = ("embedding", "text_embedding"),
    dim: int | None = None,
    **kwargs: Any,
) -> WriteSummary:
    """Write a Dask DataFrame as a Lance dataset, one fragment per partition (module docstring).

    Parameters
    ----------
    ddf
        Any Dask DataFrame (e.g. ``ImageEmbedder(...)(ddf)``) with pandas or cuDF partitions.
    uri
        The dataset's folder, local or an object store URL Lance and fsspec both read.
    vector_columns, dim
        As :class:`LanceFormat`.
    **kwargs
        ``overwrite``, ``job``, ``client``, ``progress``, ``retries``, ``storage_options``,
        ``partition_stats``, ``file_metadata``: as :func:`dask_clip.io.writers.parquet.write_parquet`.

    Returns
    -------
    WriteSummary
    """
    return write_format(ddf, uri, LanceFormat(tuple(vector_columns), dim), **kwargs)


def _read_fragment(fragment_id: int, uri: str, version: int) -> Any:
    import pandas as pd

    table = _lance().dataset(uri, version=version).get_fragment(fragment_id).to_table()
    return _as_lists(table).to_pandas(types_mapper=pd.ArrowDtype)


def _as_lists(table: pa.Table) -> pa.Table:
    """``fixed_size_list<float32>[D]`` columns as ``list<float32>``, the embedding type of every
    other output (a cast that only adds offsets)."""
    for i, f in enumerate(table.schema):
        if pa.types.is_fixed_size_list(f.type) and pa.types.is_float32(f.type.value_type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.list_(pa.float32())))
    return table


def read_lance(uri: str | os.PathLike) -> dd.DataFrame:
    """A Lance dataset as a Dask DataFrame, one partition per fragment, in the dataset's order.

    Vector columns (``fixed_size_list<float32>[D]``) come back as ``list<float32>``, as from
    every other output.
    """
    import dask.dataframe as dd
    import pandas as pd

    uri = os.fspath(uri)
    ds = _lance().dataset(uri)
    ids = [f.fragment_id for f in ds.get_fragments()]
    meta = _as_lists(ds.schema.empty_table()).to_pandas(types_mapper=pd.ArrowDtype)
    return dd.from_map(_read_fragment, ids, uri=uri, version=ds.version, meta=meta)


def _embed_fragment(fragment_id: int, uri: str, version: int, embedder: ImageEmbedder, dim: int | None) -> str:
    """Embed one fragment's images and write the new columns as files beside its own."""
    import pandas as pd

    ds = _lance().dataset(uri, version=version)
    fragment = ds.get_fragment(fragment_id)
    outputs = [c for c, _ in embedder.output_columns() if c != embedder.image_column]

    def columns(batch: pa.RecordBatch) -> pa.RecordBatch:
        df = embedder.embed_partition(batch.to_pandas(types_mapper=pd.ArrowDtype))
        table = pa.Table.from_pandas(df[outputs], preserve_index=False)
        arrays = [
            vector_column(table.column(c), dim, c) if c == embedder.output_column else table.column(c).combine_chunks()
            for c in outputs
        ]
        return pa.RecordBatch.from_arrays(arrays, names=outputs)

    metadata, schema = fragment.merge_columns(columns, columns=[embedder.image_column])
    return json.dumps({"fragment": metadata.to_json(), "schema": _schema_text(schema.to_pyarrow())})


def add_embedding_columns(
    uri: str | os.PathLike,
    embedder: ImageEmbedder,
    *,
    client: Any = None,
) -> Any:
    """Add an embedder's columns to an existing Lance dataset of images, images untouched.

    Each fragment is one Dask task: it reads only the image column, embeds it, and writes the
    new columns as new data files of that fragment (Lance's ``LanceFragment.merge_columns``);
    the driver then commits one ``Merge`` version. The image data files are not rewritten.

    Parameters
    ----------
    uri
        A Lance dataset with ``embedder.image_column`` (binary image bytes or paths).
    embedder
        What to compute; its output columns must not exist yet.
    client
        A ``distributed.Client``; default: the current one, else Dask's local scheduler.

    Returns
    -------
    lance.LanceDataset
        The new version.
    """
    import dask

    lance = _lance()
    from lance.fragment import FragmentMetadata
    from lance.schema import LanceSchema

    uri = os.fspath(uri)
    ds = lance.dataset(uri)
    if embedder.image_column not in ds.schema.names:
        raise ValueError(f"{uri!r} has no column {embedder.image_column!r}; its columns: {ds.schema.names}")
    taken = [c for c, _ in embedder.output_columns() if c in ds.schema.names]
    if taken:
        raise ValueError(f"{uri!r} already has the columns {taken}; pass other output column names")
    dim = embedder.spec.embed_dim()
    tasks = [
        dask.delayed(_embed_fragment, pure=False)(f.fragment_id, uri, ds.version, embedder, dim)
        for f in ds.get_fragments()
    ]
    results = client.gather(client.compute(tasks)) if client is not None else dask.compute(*tasks)
    records = [json.loads(r) for r in results]
    fragments = [FragmentMetadata.from_json(json.dumps(r["fragment"])) for r in records]
    schema = LanceSchema.from_pyarrow(_schema_from(records[-1]["schema"]))
    return lance.LanceDataset.commit(uri, lance.LanceOperation.Merge(fragments, schema), read_version=ds.version)


def _build(embedder: ImageEmbedder, options: Mapping[str, Any]) -> LanceFormat:
    text = embedder.text_output_column if embedder.text_column is not None else None
    return LanceFormat((embedder.output_column, *([text] if text else [])), embedder.spec.embed_dim())


FORMAT = OutputFormat(
    "lance", _build, "a Lance dataset, one fragment per partition (pip install dask-clip[lance])", priority=10
)
