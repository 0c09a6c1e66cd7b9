"""Read WebDataset tar shards (img2dataset, NeMo Curator) as a lazy Dask DataFrame.

::

    read_webdataset("s3://bucket/shards/{00000..09999}.tar")
      └─ one task per shard (or per byte range of one, ``split_shards=``)
            ├─ stream the tar (tarfile stream mode over fsspec.open), no extraction to disk
            ├─ group members into samples by WebDataset's key rule
            ├─ one row per key: key, image bytes, caption, url, shard, read_error (+ json fields)
            └─ left-join img2dataset's ``00000.parquet`` next to ``00000.tar`` on ``key``

Rows are the samples in the order their first member appears in the tar. WebDataset requires a
sample's members to be consecutive; where they are not (interleaved keys), the members are still
grouped by key within the shard (within the byte range when splitting), so nothing is shifted
or duplicated. A sample with no image member keeps its row with a null image and a reason;
damage to the tar is reported in ``read_error`` and never fails the job. See docs/webdataset.md.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from .fetch import DEFAULT_MAX_IMAGE_BYTES
from .tar_stream import StreamDamage, iter_entries
from .webdataset_partition import CAPTION, KEY, READ_ERROR, SHARD, URL, PartitionReader, Schema, ShardPartition

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = [
    "DEFAULT_IMAGE_EXTENSIONS",
    "TAR_SUFFIXES",
    "ShardPartition",
    "is_webdataset_input",
    "list_shards",
    "read_webdataset",
    "webdataset_partitions",
]

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_SPLITTABLE = ".tar"
SIDECAR_SUFFIX = ".parquet"
# The smallest byte range worth a task; a smaller split_shards is almost surely a member count.
MIN_SPLIT_BYTES = 64 * 1024
# Unreadable sidecars the client passes over to find the sidecar schema (each is a row note later).
_SIDECAR_TRIES = 8
# How far the client looks into the first shard for a json member when json field types are not given.
_PEEK_MEMBERS = 1000

_STRING = pa.string()
_JSON_TYPES = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: _STRING}


# -- listing, on the client ------------------------------------------------------------------


def _expand_braces(pattern: str) -> list[str]:
    """``{00000..00009}`` and ``{a,b}`` as WebDataset writes shard lists (the ``braceexpand``
    package, which WebDataset itself uses)."""
    if "{" not in pattern:
        return [pattern]
    from braceexpand import braceexpand

    return list(braceexpand(pattern))


def _has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _tar_suffix(name: str) -> str | None:
    lower = name.lower()
    return next((s for s in TAR_SUFFIXES if lower.endswith(s)), None)


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)


def _url(fs: Any, path: str) -> str:
    """A path as the user would write it: plain for local files, ``proto://...`` otherwise."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)


def _as_patterns(urlpath: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    if isinstance(urlpath, (str, os.PathLike)):
        items = [os.fspath(urlpath)]
    elif isinstance(urlpath, Sequence):
        items = [os.fspath(u) for u in urlpath]
    else:
        raise TypeError(f"urlpath must be a path, URL, glob or a list of them, got {type(urlpath).__name__}")
    if not items:
        raise ValueError("urlpath is an empty list")
    return [expanded for item in items for expanded in _expand_braces(item)]


def list_shards(
    urlpath: str | os.PathLike | Sequence[str | os.PathLike], storage_options: dict | None = None
) -> tuple[Any, list[dict[str, Any]]]:
    """The filesystem and the tar shards that ``urlpath`` names, sorted by path.

    Parameters
    ----------
    urlpath
        A tar file, a folder (searched recursively for tar files; names starting with ``.`` or
        ``_`` are skipped), a glob, a brace pattern (``shards/{00000..00099}.tar``), or a list
        of these; local or any fsspec URL.
    storage_options
        fsspec options.

    Returns
    -------
    fs : fsspec.AbstractFileSystem
    shards : list of dict
        fsspec file infos (``name``, ``size``, ...) plus ``url`` (the path as the user writes it)
        and ``sidecar`` (the URL of img2dataset's Parquet next to the tar, or None), one per
        distinct shard.

    Raises
    ------
    FileNotFoundError
        A named file is missing, a glob or folder holds no tar file, or a named file is no tar.
    """
    from fsspec.core import url_to_fs

    patterns = _as_patterns(urlpath)
    fs, _ = url_to_fs(patterns[0], **(storage_options or {}))
    found: dict[str, dict[str, Any]] = {}
    explicit: dict[str, list[str]] = {}  # parent folder -> names asked for
    for pattern in patterns:
        path = fs._strip_protocol(pattern)
        if _has_glob(path):
            matches = fs.glob(path, detail=True)
            tars = {p: info for p, info in matches.items() if info.get("type") != "directory" and _tar_suffix(p)}
            if not tars:
                raise FileNotFoundError(f"{pattern!r} matches no tar file ({', '.join(TAR_SUFFIXES)})")
            found.update(tars)
        else:
            explicit.setdefault(posixpath.dirname(path.rstrip("/")), []).append(path.rstrip("/"))
    listings: dict[str, dict[str, dict[str, Any]]] = {}

    def listing(folder: str) -> dict[str, dict[str, Any]]:
        if folder not in listings:
            try:
                entries = fs.ls(folder, detail=True)
            except FileNotFoundError:
                entries = []
            listings[folder] = {fs._strip_protocol(e["name"]).rstrip("/"): e for e in entries}
        return listings[folder]

    for folder, paths in explicit.items():
        missing = []
        for path in paths:
            info = listing(folder).get(path)
            if info is None:
                missing.append(path)
            elif info.get("type") == "directory":
                inside = fs.find(path, detail=True)
                tars = {
                    p: i
                    for p, i in inside.items()
                    if _tar_suffix(p) and not _hidden(posixpath.relpath(fs._strip_protocol(p), path))
                }
                if not tars:
                    raise FileNotFoundError(f"folder {_url(fs, path)!r} holds no tar file ({', '.join(TAR_SUFFIXES)})")
                found.update(tars)
            elif not _tar_suffix(path):
                raise FileNotFoundError(f"{_url(fs, path)!r} is not a tar shard ({', '.join(TAR_SUFFIXES)})")
            else:
                found[path] = info
        if missing:
            shown = ", ".join(repr(_url(fs, p)) for p in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise FileNotFoundError(f"{len(missing)} shard(s) not found: {shown}{more}")
    shards = []
    for path in sorted(found):
        info = dict(found[path])
        stripped = fs._strip_protocol(path)
        folder = posixpath.dirname(stripped)
        stem = stripped[: -len(_tar_suffix(stripped) or "")]
        sidecar = stem + SIDECAR_SUFFIX
        info.update(
            name=stripped,
            url=_url(fs, stripped),
            sidecar=_url(fs, sidecar) if sidecar in listing(folder) else None,
        )
        shards.append(info)
    return fs, shards


def is_webdataset_input(
    path_or_glob: str | os.PathLike | Sequence[str | os.PathLike], storage_options: dict | None = None
) -> bool:
    """Whether an input names WebDataset tar shards (for ``dask-clip embed`` to pick the reader).

    True when every pattern (after brace expansion) ends in a tar suffix (``.tar``, ``.tgz``,
    ...), without touching the filesystem; False when one names Parquet or image files; else
    (a folder, a glob without a suffix) True when the files it names include tar files.
    A path that does not exist gives False, so that the other readers report it.
    """
    try:
        patterns = _as_patterns(path_or_glob)
    except (TypeError, ValueError):
        return False
    if all(_tar_suffix(p.rstrip("/")) for p in patterns):
        return True
    if any(os.path.splitext(p.rstrip("/"))[1].lower() in (".parquet", ".parq", ".pq") for p in patterns):
        return False
    try:
        return bool(list_shards(patterns, storage_options)[1])
    except (FileNotFoundError, NotADirectoryError):
        return False


# -- the partition plan ------------------------------------------------------------------------


def _split_bytes(split_shards: int | str | None) -> int | None:
    if split_shards is None:
        return None
    from dask.utils import parse_bytes

    if isinstance(split_shards, bool) or not isinstance(split_shards, (int, str)):
        raise TypeError(f"split_shards must be a byte size such as '256MiB' or None, got {split_shards!r}")
    size = parse_bytes(split_shards)
    if size < MIN_SPLIT_BYTES:
        raise ValueError(
            f"split_shards={split_shards!r} is {size} bytes per partition. It is a byte size like Dask's "
            f"blocksize (e.g. '256MiB'), not a member count, and must be at least {MIN_SPLIT_BYTES} bytes"
        )
    return size


def webdataset_partitions(
    urlpath: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    split_shards: int | str | None = None,
    sidecar: bool = True,
    storage_options: dict | None = None,
) -> list[ShardPartition]:
    """The partitions :func:`read_webdataset` makes for these arguments, in partition order.

    Without ``split_shards``, partition i is the i-th shard in sorted order, so an output file
    ``part-00042.parquet`` holds shard 42 (what makes a run resumable per shard). With it, each
    uncompressed shard of S bytes gives ``ceil(S / split_shards)`` consecutive partitions.
    Deterministic for the same listing: only names and sizes are used.
    """
    split = _split_bytes(split_shards)
    _, shards = list_shards(urlpath, storage_options)
    plan: list[ShardPartition] = []
    for shard_index, info in enumerate(shards):
        size = int(info.get("size") or 0)
        compressed = _tar_suffix(info["name"]) != _SPLITTABLE
        count = 1 if split is None or compressed or size <= split else -(-size // split)
        for i in range(count):
            plan.append(
                ShardPartition(
                    partition=len(plan),
                    shard_index=shard_index,
                    shard=info["url"],
                    split=i,
                    splits=count,
                    start=i * split if count > 1 else 0,  # type: ignore[operator]
                    end=(i + 1) * split if i < count - 1 else None,  # type: ignore[operator]
                    size=size,
                    sidecar=info["sidecar"] if sidecar else None,
                    compressed=compressed,
                )
            )
    return plan


# -- naming the extra columns ------------------------------------------------------------


def _free_name(name: str, taken: set[str], prefix: str) -> str:
    """``name``, or ``prefix + name`` where another column already has it."""
    column = name if name not in taken else f"{prefix}{name}"
    while column in taken:
        column = f"{prefix}{column}"
    taken.add(column)
    return column


def _json_type(value: object) -> pa.DataType:
    return _JSON_TYPES.get(type(value), _STRING)  # objects, lists and nulls: JSON text


# -- the public reader, on the client --------------------------------------------------------------


def _extensions(values: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise TypeError(f"{what} must be a non-empty list of extensions such as ('jpg', 'png'), got {values!r}")
    out = []
    for value in values:
        if not isinstance(value, str) or not value.strip(". "):
            raise ValueError(f"{what} holds an invalid extension {value!r}")
        out.append(value.strip().lstrip(".").lower())
    return tuple(dict.fromkeys(out))


def _peek_json(part: ShardPartition, extension: str, storage_options: dict, max_bytes: int | None) -> dict | None:
    """The first json member of a shard, read on the client (stops as soon as it is found)."""
    import fsspec

    try:
        with fsspec.open(part.shard, "rb", **storage_options) as fileobj:
            for i, item in enumerate(
                iter_entries(
                    fileobj, lambda key, name: name == extension, compressed=part.compressed, max_bytes=max_bytes
                )
            ):
                if isinstance(item, StreamDamage) or i >= _PEEK_MEMBERS:
                    return None
                if item.data is not None:
                    document = json.loads(item.data)
                    return document if isinstance(document, dict) else None
    except Exception as err:
        logger.warning("could not read a json member of %s to type the json columns: %s", part.shard, err)
    return None


def _json_fields(
    json_fields: bool | Sequence[str] | Mapping[str, Any] | None,
    plan: list[ShardPartition],
    extension: str,
    storage_options: dict,
    taken: set[str],
    max_bytes: int | None = None,
) -> list[tuple[str, str, pa.DataType]]:
    """(field, column, type) of the flattened json columns."""
    if json_fields is None or json_fields is False:
        return []
    if isinstance(json_fields, Mapping):
        out = []
        for name, given in json_fields.items():
            try:
                arrow_type = given if isinstance(given, pa.DataType) else pa.type_for_alias(str(given))
            except ValueError:
                raise ValueError(f"json_fields[{name!r}]={given!r} is no Arrow type (e.g. 'int64', 'string')") from None
            out.append((str(name), _free_name(str(name), taken, "json_"), arrow_type))
        return out
    if json_fields is not True and (isinstance(json_fields, str) or not isinstance(json_fields, Sequence)):
        raise TypeError(
            f"json_fields must be None, True, a list of field names or a {{field: type}} mapping, got {json_fields!r}"
        )
    sample: dict | None = None
    for part in [p for p in plan if p.split == 0][:3]:  # an empty first shard is common enough to look on
        sample = _peek_json(part, extension, storage_options, max_bytes)
        if sample is not None:
            break
    if json_fields is True:
        if sample is None:
            logger.warning("json_fields=True, but no %s member was found to take field names from", extension)
            return []
        names = list(sample)
    else:
        names = [str(n) for n in json_fields]
    sample = sample or {}
    return [(n, _free_name(n, taken, "json_"), _json_type(sample.get(n))) for n in names]


def _sidecar_fields(
    plan: list[ShardPartition], columns: Sequence[str] | None, storage_options: dict, taken: set[str]
) -> list[tuple[str, str, pa.DataType]]:
    """Columns of the first sidecar (img2dataset writes the same schema for every shard)."""
    import fsspec
    import pyarrow.parquet as pq

    arrow_schema = None
    for sidecar in list(dict.fromkeys(p.sidecar for p in plan if p.sidecar is not None))[:_SIDECAR_TRIES]:
        try:
            with fsspec.open(sidecar, "rb", **storage_options) as fileobj:
                arrow_schema = pq.read_schema(fileobj)
        except Exception as err:  # its rows get a note from the worker that reads it; try the next one
            logger.warning(
                "sidecar %s unreadable (%s: %s); taking its columns from the next one", sidecar, type(err).__name__, err
            )
            continue
        first = sidecar
        break
    if arrow_schema is None:
        return []
    if KEY not in arrow_schema.names:
        logger.warning("sidecar %s has no %r column; not joined", first, KEY)
        return []
    names = [n for n in arrow_schema.names if n != KEY and not n.startswith("__index_level_")]
    if columns is not None:
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise ValueError(f"sidecar_columns {unknown} not in the sidecar Parquet's columns {names}")
        names = list(columns)
    fields = []
    for name in names:
        arrow_type = arrow_schema.field(name).type
        if pa.types.is_dictionary(arrow_type):
            arrow_type = arrow_type.value_type
        # pandas writes large_string; one string type for every text column of the frame.
        arrow_type = {pa.large_string(): _STRING, pa.large_binary(): pa.binary()}.get(arrow_type, arrow_type)
        fields.append((name, _free_name(name, taken, "sidecar_"), arrow_type))
    return fields


def read_webdataset(
    urlpath: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    image_extensions: Sequence[str] = DEFAULT_IMAGE_EXTENSIONS,
    image_column: str = "image",
    caption_extension: str | None = "txt",
    json_extension: str = "json",
    json_fields: bool | Sequence[str] | Mapping[str, Any] | None = None,
    sidecar: bool = True,
    sidecar_columns: Sequence[str] | None = None,
    split_shards: int | str | None = None,
    storage_options: dict | None = None,
    max_member_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES,
) -> dd.DataFrame:
    """Open WebDataset tar shards lazily: one row per sample, one partition per shard.

    Parameters
    ----------
    urlpath
        Tar shards: a file, folder, glob or brace pattern (``s3://bucket/shards/{00000..09999}.tar``),
        or a list of them; local or any fsspec URL. Shards are read in sorted path order.
        ``.tar`` and compressed ``.tar.gz``/``.tgz``/``.tar.bz2``/``.tar.xz``.
    image_extensions
        Member extensions that hold the image, in order of preference: a sample with both a
        ``jpg`` and a ``png`` member gets the ``jpg``. Matched against the whole field after
        the key (``key.seg.png`` has the field ``seg.png``), case-insensitively.
    image_column
        Name of the image column (Arrow ``binary``).
    caption_extension
        Member whose UTF-8 text becomes ``caption`` (None: no caption read).
    json_extension
        The metadata member; its ``url`` field becomes ``url``.
    json_fields
        Flatten fields of the json member into columns: None (none), True (every field of the
        first json member found), a list of field names (types taken from that member; fields
        it lacks are strings), or ``{field: type}`` (``"int64"``, ``pa.float64()``, ...).
        Objects and lists become JSON text; a value that does not fit the type is null, and the
        row's ``read_error`` says so. A name already used by another column gets ``json_``.
    sidecar
        Join img2dataset's Parquet next to each tar (``00000.parquet`` for ``00000.tar``) by
        ``key`` where it exists. Sidecar rows without a member in the tar (failed downloads)
        are not rows of the output.
    sidecar_columns
        The sidecar columns to join (default: all but ``key``). A name already used by another
        column gets ``sidecar_`` (img2dataset's ``url`` and ``caption`` become ``sidecar_url``,
        ``sidecar_caption``).
    split_shards
        Bytes per partition (``"256MiB"``, like Dask's ``blocksize``): each uncompressed shard
        larger than this is read as several byte ranges by separate tasks, which together read
        the shard once. None: one partition per shard. Keys are grouped within a range.
    storage_options
        fsspec options (credentials, ...), used on the client and on the workers.
    max_member_bytes
        Largest member read (64 MiB, the embedder's ``max_image_bytes``): a larger image,
        caption or json member is skipped unread, whatever its header claims, and its row's
        ``read_error`` says so. None: no limit.

    Returns
    -------
    dask.dataframe.DataFrame
        Lazy; Arrow-backed columns, in this order:

        - ``key`` (string): the WebDataset ``__key__``, the member path up to the first dot of
          its base name;
        - ``image_column`` (binary): the image member's bytes, null when the sample has none;
        - ``caption`` (string), ``url`` (string);
        - ``shard`` (string): the shard's URL;
        - ``read_error`` (string): null when the sample was read whole, else why not (no image
          member, a truncated member, a damaged tar: a row with a null key then says what
          could not be read);
        - the ``json_fields`` columns, then the sidecar columns.

        Each partition has a RangeIndex from 0. See :func:`webdataset_partitions` for which
        partition holds which shard.

    Raises
    ------
    FileNotFoundError
        A named shard is missing, or a pattern matches no tar file (checked before any task).
    ValueError, TypeError
        An invalid argument.

    Examples
    --------
    >>> ddf = read_webdataset("laion-shards/{00000..00099}.tar")           # doctest: +SKIP
    >>> ImageEmbedder(model_dir="/models/clip", image_column="image")(ddf)  # doctest: +SKIP
    """
    import dask.dataframe as dd

    extensions = _extensions(image_extensions, "image_extensions")
    if not isinstance(image_column, str) or not image_column:
        raise TypeError(f"image_column must be a column name, got {image_column!r}")
    base = [KEY, image_column, CAPTION, URL, SHARD, READ_ERROR]
    if len(set(base)) < len(base):
        raise ValueError(f"image_column={image_column!r} clashes with the columns {base}")
    if caption_extension is not None:
        caption_extension = _extensions([caption_extension], "caption_extension")[0]
    json_extension = _extensions([json_extension], "json_extension")[0]
    if storage_options is not None and not isinstance(storage_options, dict):
        raise TypeError(f"storage_options must be a dict, got {type(storage_options).__name__}")
    if sidecar_columns is not None and (isinstance(sidecar_columns, str) or not isinstance(sidecar_columns, Sequence)):
        raise TypeError(f"sidecar_columns must be a list of column names, got {sidecar_columns!r}")
    if max_member_bytes is not None and (
        isinstance(max_member_bytes, bool) or not isinstance(max_member_bytes, int) or max_member_bytes < 1
    ):
        raise ValueError(f"max_member_bytes must be a positive int or None, got {max_member_bytes!r}")
    options = dict(storage_options or {})
    plan = webdataset_partitions(urlpath, split_shards=split_shards, sidecar=sidecar, storage_options=options)
    taken = set(base)
    json_columns = _json_fields(json_fields, plan, json_extension, options, taken, max_member_bytes)
    sidecar_fields = _sidecar_fields(plan, sidecar_columns, options, taken) if sidecar else []
    extra = pa.schema([pa.field(column, arrow_type) for _, column, arrow_type in [*json_columns, *sidecar_fields]])
    schema = Schema(
        image_column=image_column,
        image_extensions=extensions,
        caption_extension=caption_extension,
        json_extension=json_extension,
        json_fields=tuple((source, column) for source, column, _ in json_columns),
        sidecar_fields=tuple((source, column) for source, column, _ in sidecar_fields),
        extra_types=extra.serialize().to_pybytes() if len(extra) else b"",
        storage_options=tuple(sorted(options.items())),
        max_member_bytes=max_member_bytes,
    )
    return dd.from_map(
        PartitionReader(schema), plan, meta=schema.empty(), label="read-webdataset", enforce_metadata=False
    )
