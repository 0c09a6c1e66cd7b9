"""One partition of :func:`dask_clip.io.webdataset.read_webdataset`, built on a worker.

Streams the partition's shard (or byte range of it) through :mod:`dask_clip.io.tar_stream`, groups
the members into samples by key (in the order of each key's first member), makes one row per
sample plus one per damage, and left-joins the sidecar Parquet on ``key``. Never raises for bad
data: what could not be read is said in ``read_error``.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from .tar_stream import StreamDamage, TarEntry, iter_entries

__all__ = [
    "CAPTION",
    "KEY",
    "READ_ERROR",
    "SHARD",
    "URL",
    "PartitionReader",
    "Schema",
    "ShardPartition",
    "read_partition",
]

logger = logging.getLogger(__name__)

KEY, CAPTION, URL, SHARD, READ_ERROR = "key", "caption", "url", "shard", "read_error"
_STRING = pa.string()


# -- the partition plan (planned by dask_clip.io.webdataset, read here) ---------------------------


@dataclass(frozen=True)
class ShardPartition:
    """One partition of :func:`read_webdataset`: a shard, or one byte range of it.

    Attributes
    ----------
    partition : int
        Its partition number in the Dask DataFrame (output file ``part-<partition>``).
    shard_index : int
        The shard's position in the sorted shard list.
    shard : str
        The shard's URL (local path, or ``proto://...``).
    split, splits : int
        This range's number within the shard, and the shard's number of ranges (1: whole).
    start, end : int
        The byte range; ``end`` is None for "to the end of the archive".
    size : int
        The shard's size in bytes.
    sidecar : str or None
        img2dataset's Parquet next to the shard, joined by key.
    compressed : bool
        A ``.tar.gz``/``.tgz``/... shard: read whole, never split.
    """

    partition: int
    shard_index: int
    shard: str
    split: int
    splits: int
    start: int
    end: int | None
    size: int
    sidecar: str | None
    compressed: bool

    @property
    def label(self) -> str:
        """``00042.tar`` or ``00042.tar[3/8]``: the shard's file name, and the range when split."""
        name = posixpath.basename(self.shard)
        return name if self.splits == 1 else f"{name}[{self.split}/{self.splits}]"


# -- the columns ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schema:
    """What a partition holds, in plain values (tokenizes deterministically, pickles small).

    ``json_fields`` and ``sidecar_fields`` are (source field, column name) pairs; ``extra_types``
    is the serialized Arrow schema of those columns.
    """

    image_column: str
    image_extensions: tuple[str, ...]
    caption_extension: str | None
    json_extension: str
    json_fields: tuple[tuple[str, str], ...] = ()
    sidecar_fields: tuple[tuple[str, str], ...] = ()
    extra_types: bytes = b""
    storage_options: tuple[tuple[str, Any], ...] = field(default=())
    max_member_bytes: int | None = None

    def extra_schema(self) -> pa.Schema:
        return pa.ipc.read_schema(pa.py_buffer(self.extra_types)) if self.extra_types else pa.schema([])

    def arrow_schema(self) -> pa.Schema:
        fields = [
            pa.field(KEY, _STRING),
            pa.field(self.image_column, pa.binary()),
            pa.field(CAPTION, _STRING),
            pa.field(URL, _STRING),
            pa.field(SHARD, _STRING),
            pa.field(READ_ERROR, _STRING),
        ]
        return pa.schema(fields + list(self.extra_schema()))

    def empty(self) -> pd.DataFrame:
        return _to_pandas(self.arrow_schema().empty_table())


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper=pd.ArrowDtype)


# -- one partition, on the workers ---------------------------------------------------------------


@dataclass
class _Sample:
    """The members of one key seen so far."""

    fields: dict[str, bytes] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _decode_text(data: bytes, what: str, problems: list[str]) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        problems.append(f"{what} is not UTF-8 ({err.reason} at byte {err.start})")
        return None


def _json_value(value: object, arrow_type: pa.DataType) -> object:
    if value is None:
        return None
    if pa.types.is_string(arrow_type):
        return value if isinstance(value, str) else json.dumps(value)
    if pa.types.is_boolean(arrow_type):
        if not isinstance(value, bool):
            raise TypeError
        return value
    if pa.types.is_integer(arrow_type):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise TypeError
        return value
    if pa.types.is_floating(arrow_type):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        return float(value)
    return pa.scalar(value, arrow_type).as_py()


class _Rows:
    """Columns being built for one partition."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        extra = schema.extra_schema()
        self.json_types = [(source, extra.field(column).type) for source, column in schema.json_fields]
        self.keys: list[str | None] = []
        self.images: list[bytes | None] = []
        self.captions: list[str | None] = []
        self.urls: list[str | None] = []
        self.errors: list[str | None] = []
        self.json: list[list[object]] = [[] for _ in self.json_types]

    def add(self, key: str, sample: _Sample) -> None:
        schema = self.schema
        problems = list(sample.problems)
        image = next((sample.fields[e] for e in schema.image_extensions if e in sample.fields), None)
        if image is None and not any(p.startswith("member ") for p in problems):
            has = ", ".join(sample.seen) or "none"
            problems.append(f"no image member ({'/'.join(schema.image_extensions)}); members: {has}")
        caption = None
        if schema.caption_extension and schema.caption_extension in sample.fields:
            caption = _decode_text(sample.fields[schema.caption_extension], schema.caption_extension, problems)
        document: object = None
        if schema.json_extension in sample.fields:
            text = _decode_text(sample.fields[schema.json_extension], schema.json_extension, problems)
            if text is not None:
                try:
                    document = json.loads(text)
                except json.JSONDecodeError as err:
                    problems.append(f"{schema.json_extension} member is not valid JSON: {err}")
                except RecursionError:  # json's C parser recurses once per nesting level
                    problems.append(f"{schema.json_extension} member is nested too deeply to parse")
        if document is not None and not isinstance(document, dict):
            problems.append(f"{schema.json_extension} member is not a JSON object")
            document = None
        url = document.get("url") if isinstance(document, dict) else None
        if not _is_utf8(key):
            problems.append("member name is not UTF-8 (the key shows its bytes as \\x escapes)")
        self.keys.append(key)
        self.images.append(image)
        self.captions.append(caption)
        self.urls.append(None if url is None else str(url))
        for values, (source, arrow_type) in zip(self.json, self.json_types):
            raw = document.get(source) if isinstance(document, dict) else None
            try:
                values.append(_json_value(raw, arrow_type))
            except (TypeError, ValueError, OverflowError, RecursionError, pa.ArrowException):
                values.append(None)
                problems.append(f"json field {source!r} is not {arrow_type}: {json.dumps(raw)[:40]}")
        self.errors.append("; ".join(problems) or None)

    def add_damage(self, reason: str) -> None:
        """A row for the part of a shard that could not be read: no key, no image, the reason."""
        self.keys.append(None)
        self.images.append(None)
        self.captions.append(None)
        self.urls.append(None)
        for values in self.json:
            values.append(None)
        self.errors.append(reason)

    def table(self, shard: str) -> pa.Table:
        schema = self.schema.arrow_schema()
        n = len(self.keys)
        arrays = [
            _strings(self.keys),
            pa.array(self.images, pa.binary()),
            _strings(self.captions),
            _strings(self.urls),
            _strings([shard] * n),
            _strings(self.errors),
        ]
        arrays += [
            _strings(values) if pa.types.is_string(arrow_type) else pa.array(values, arrow_type)
            for values, (_, arrow_type) in zip(self.json, self.json_types)
        ]
        return pa.Table.from_arrays(arrays, schema=pa.schema(list(schema)[: len(arrays)]))


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escaped(text: str) -> str:
    """Text Arrow can store: a name tarfile decoded with ``surrogateescape`` (``b"\\xff"`` became
    ``"\\udcff"``) gets its bytes back as ``\\xff``; a lone surrogate from JSON, ``\\ud800``."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate from JSON text
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _strings(values: Sequence[Any]) -> pa.Array:
    """A string array of ``values`` (str or None)."""
    try:
        return pa.array(values, _STRING)
    except (UnicodeEncodeError, pa.ArrowException):  # a surrogate in a member name or JSON text
        return pa.array([None if v is None else _escaped(v) for v in values], _STRING)


def _read_samples(part: ShardPartition, schema: Schema, rows: _Rows) -> None:
    """Stream the partition's byte range and append one row per key (and one per damage)."""
    import fsspec

    wanted = set(schema.image_extensions) | {schema.json_extension}
    if schema.caption_extension:
        wanted.add(schema.caption_extension)
    samples: dict[str, _Sample] = {}  # insertion order: the order of each key's first member
    damage: StreamDamage | None = None
    interleaved = 0
    previous: str | None = None
    try:
        with fsspec.open(part.shard, "rb", **dict(schema.storage_options)) as fileobj:
            if part.size == 0 and part.start == 0:
                return  # an empty file: an empty shard
            entries = iter_entries(
                fileobj,
                lambda key, name: name in wanted,
                start=part.start,
                end=part.end,
                compressed=part.compressed,
                max_bytes=schema.max_member_bytes,
            )
            for item in entries:
                if isinstance(item, StreamDamage):
                    damage = item
                    break
                sample = samples.get(item.key)
                if sample is None:
                    sample = samples[item.key] = _Sample()
                elif item.key != previous:
                    interleaved += 1
                previous = item.key
                _add_member(sample, item)
    except Exception as err:  # not a tar at all, unreadable file: report, keep the job going
        damage = StreamDamage(part.start, f"cannot read shard: {type(err).__name__}: {err}")
    if interleaved:
        logger.warning(
            "%s: %d member(s) of keys seen earlier came after other keys; grouped by key", part.label, interleaved
        )
    if damage is not None and damage.entry is not None:
        sample = samples.setdefault(damage.entry.key, _Sample())
        sample.seen.append(damage.entry.field)
        sample.problems.append(damage.reason)
        damage = None
    for key, sample in samples.items():
        rows.add(key, sample)
    if damage is not None:
        rows.add_damage(damage.reason)


def _add_member(sample: _Sample, entry: TarEntry) -> None:
    sample.seen.append(entry.field)
    if entry.too_large is not None:
        sample.problems.append(entry.too_large)
        return
    if entry.data is None:
        return
    if entry.field in sample.fields:
        sample.problems.append(f"duplicate member {entry.name} ignored")
        return
    sample.fields[entry.field] = entry.data


def _join_sidecar(table: pa.Table, part: ShardPartition, schema: Schema, problems: list[str | None]) -> pa.Table:
    """Left-join the sidecar's columns on ``key``, keeping the tar's rows and order."""
    import fsspec
    import pyarrow.parquet as pq

    n = table.num_rows
    extra = schema.extra_schema()
    wanted = [(source, column, extra.field(column).type) for source, column in schema.sidecar_fields]
    columns: dict[str, pa.Array] = {column: pa.nulls(n, arrow_type) for _, column, arrow_type in wanted}
    if part.sidecar is None or not wanted:
        return _append(table, columns)
    try:
        with fsspec.open(part.sidecar, "rb", **dict(schema.storage_options)) as fileobj:
            present = set(pq.read_schema(fileobj).names)
            fileobj.seek(0)
            sources = [KEY] + [s for s, _, _ in wanted if s in present]
            sidecar = pq.read_table(fileobj, columns=sources)
    except Exception as err:
        _note_all(problems, f"sidecar {posixpath.basename(part.sidecar)} unreadable: {type(err).__name__}: {err}")
        return _append(table, columns)
    keys = pd.Index(sidecar.column(KEY).cast(_STRING).to_pandas())
    first = ~keys.duplicated()  # a key listed twice: its first row, as a dict would keep
    positions = pd.Index(keys[first]).get_indexer(table.column(KEY).to_pandas())
    rows = pa.array(pd.Series(positions).where(positions >= 0).astype("Int64"), pa.int64())
    unique = sidecar.filter(pa.array(first))
    for source, column, arrow_type in wanted:
        if source not in present:
            continue
        values = unique.column(source).take(rows)
        try:
            columns[column] = values.cast(arrow_type)
        except pa.ArrowException as err:
            _note_all(problems, f"sidecar column {source!r} is {values.type}, not {arrow_type}: {err}")
    return _append(table, columns)


def _note_all(problems: list[str | None], note: str) -> None:
    for i, existing in enumerate(problems):
        problems[i] = note if existing is None else f"{existing}; {note}"


def _append(table: pa.Table, columns: Mapping[str, pa.Array]) -> pa.Table:
    for name, values in columns.items():
        table = table.append_column(name, values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values)
    return table


def read_partition(part: ShardPartition, schema: Schema, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """One partition of :func:`~dask_clip.io.webdataset.read_webdataset` as a pandas DataFrame.

    Never raises for bad data: damage becomes ``read_error`` text (see the module docstring).
    """
    rows = _Rows(schema)
    _read_samples(part, schema, rows)
    table = rows.table(part.shard)
    errors = table.column(READ_ERROR).to_pylist()
    table = _join_sidecar(table, part, schema, errors)
    table = table.set_column(table.schema.get_field_index(READ_ERROR), READ_ERROR, pa.array(errors, _STRING))
    frame = _to_pandas(table.cast(schema.arrow_schema()))
    return frame if columns is None else frame[list(columns)]


@dataclass(frozen=True)
class PartitionReader:
    """The ``from_map`` function: a small, picklable schema; ``columns`` enables projection."""

    schema: Schema

    def __call__(self, part: ShardPartition, columns: Sequence[str] | None = None) -> pd.DataFrame:
        return read_partition(part, self.schema, columns)
