"""Step 5: load a finished index and search it by embedding, row key, image or text.

Results come back as one pandas DataFrame: ``query`` (the query's number), ``rank`` (1 =
most similar), ``similarity`` (cosine: inner product of unit vectors; exact for ``Flat`` and
``IVF…,Flat`` codes, approximate for ``SQ8``/``PQ``), then the row's id-table columns
(``id``, ``partition``, ``partition_row``, ``source_row``, the key and metadata columns).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from . import layout
from .ids import ID, PARTITION, PARTITION_ROW, SOURCE_ROW, filter_ids
from .merge import read_index
from .train import import_faiss

__all__ = ["SearchIndex", "load"]

logger = logging.getLogger(__name__)

EncodeText = Callable[[list[str]], np.ndarray]


def load(index_dir: str | os.PathLike, *, mmap: bool = False) -> SearchIndex:
    """Open the finished index in ``index_dir``.

    Parameters
    ----------
    index_dir
        A folder written by :func:`dask_clip.index.build`.
    mmap
        Memory-map an in-memory index's file instead of reading it (on-disk indexes always
        map their inverted lists).

    Raises
    ------
    dask_clip.index.layout.IndexNotFoundError
        No finished index there (a build under way or interrupted is never loaded).
    """
    import pyarrow.parquet as pq

    manifest = layout.read_manifest(index_dir)
    folder = layout.version_dir(index_dir, manifest)
    index = read_index(folder / layout.INDEX_FILE, on_disk=manifest["on_disk"], mmap=mmap)
    parts = sorted((folder / "ids").glob("part-*.parquet"))
    columns = None
    image_column = manifest.get("image_column")
    if parts and image_column is not None:
        schema = pq.read_schema(parts[0])
        if schema.get_field_index(image_column) >= 0 and _is_binary(schema.field(image_column).type):
            # image bytes stay on disk, read one row group at a time (SearchIndex.image)
            columns = [name for name in schema.names if name != image_column]
    table = pq.read_table(parts, columns=columns) if parts else pa.table({ID: pa.array([], pa.int64())})
    counts = manifest["counts"]
    if index.ntotal != counts["vectors"] or table.num_rows != counts["vectors"]:
        raise ValueError(
            f"{index_dir}: the manifest counts {counts['vectors']} vectors, the index holds {index.ntotal} "
            f"and the id table {table.num_rows}"
        )
    return SearchIndex(index_dir, manifest, index, table, ids_dir=folder / "ids")


def _is_binary(dtype: pa.DataType) -> bool:
    return pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype)


class SearchIndex:
    """A loaded index with its id table. Safe to search from several threads.

    Attributes
    ----------
    index_dir : str
    manifest : dict
        What the build recorded (index key, counts, columns, model, settings).
    index : faiss.Index
    table : pyarrow.Table
        The id table, with ``source_row`` added; row ``i`` is the vector with id ``ids[i]``.
    frame : pandas.DataFrame
        The same table in pandas, from which result rows are taken.
    ids : numpy.ndarray
        int64 (N,), sorted.
    nprobe : int or None
        Default lists visited per query (None for exact search).
    """

    def __init__(
        self,
        index_dir: str | os.PathLike,
        manifest: dict[str, Any],
        index: Any,
        table: pa.Table,
        ids_dir: str | os.PathLike | None = None,
    ) -> None:
        self.index_dir = os.fspath(index_dir)
        self._ids_dir = Path(ids_dir) if ids_dir is not None else None
        #: Whether results and rows carry the image bytes that :func:`load` leaves on disk (one
        #: row-group read per hit); the browse server, which serves images by id, turns it off.
        self.result_images = True
        self.manifest = manifest
        self.index = index
        partition_rows = np.asarray(manifest["partition_rows"], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(partition_rows)])
        if table.num_rows:
            source_row = offsets[table.column(PARTITION).to_numpy()] + table.column(PARTITION_ROW).to_numpy()
        else:
            source_row = np.zeros(0, np.int64)
        where = table.column_names.index(PARTITION_ROW) + 1
        self.table = table.add_column(where, SOURCE_ROW, pa.array(source_row, pa.int64()))
        ids = self.table.column(ID).to_numpy()
        order = np.argsort(ids, kind="stable") if np.any(np.diff(ids) < 0) else None
        if order is not None:
            self.table, ids = self.table.take(order), ids[order]
        self.table = self.table.combine_chunks()
        # Result rows are gathered from a pandas copy: ~20x faster per query than Arrow's take
        # + to_pandas, which dominated single-query latency.
        self.frame = self.table.to_pandas()
        self.ids = ids
        self.nprobe: int | None = manifest.get("nprobe")
        self._lock = threading.Lock()
        self._direct_map = False
        self._keys: pd.Index | None = None
        self._group_starts: dict[int, np.ndarray] = {}
        self._key_positions = np.zeros(0, np.int64)

    # -- facts ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __repr__(self) -> str:
        return f"SearchIndex({self.index_dir!r}, {self.index_key}, {len(self)} vectors of {self.dim} dims)"

    @property
    def dim(self) -> int:
        """Embedding width D."""
        return int(self.manifest["dim"])

    @property
    def index_key(self) -> str:
        """The faiss index key."""
        return str(self.manifest["index_key"])

    @property
    def key_column(self) -> str | None:
        """The column that names rows, or None."""
        return self.manifest.get("key_column")

    @property
    def image_column(self) -> str | None:
        """The column of image bytes or paths/URLs kept for display, or None."""
        return self.manifest.get("image_column")

    def check_weights(self) -> None:
        """Refuse to embed queries with the recorded model when its folder now holds other
        weights than those that embedded the index (:mod:`dask_clip.models.weights_id`).

        Raises
        ------
        dask_clip.models.weights_id.WeightsChangedError
        """
        from ..models.weights_id import check_weights

        check_weights(self.manifest.get("weights"), self.model, "the vectors of this index")

    @property
    def model(self) -> Any:
        """The :class:`~dask_clip.models.spec.ModelSpec` that made the embeddings, or None if unknown."""
        from ..models.spec import ModelSpec

        record = self.manifest.get("model")
        return ModelSpec(**record) if record else None

    # -- rows ----------------------------------------------------------------------------

    def positions(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Id-table positions of faiss ids.

        Raises
        ------
        KeyError
            An id that is not in the index.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        pos = np.searchsorted(self.ids, ids)
        if len(self.ids) == 0:
            bad = np.ones(len(ids), dtype=bool)
        else:
            bad = self.ids[np.minimum(pos, len(self.ids) - 1)] != ids
        if np.any(bad):
            raise KeyError(f"ids not in the index: {ids[bad][:5].tolist()}")
        return pos

    def rows(self, ids: Sequence[int] | np.ndarray) -> pd.DataFrame:
        """The id-table rows of faiss ``ids``, in the order given (image bytes included)."""
        positions = self.positions(ids)
        return self._with_stored_images(self.frame.iloc[positions].reset_index(drop=True), positions)

    def _with_stored_images(self, rows: pd.DataFrame, positions: np.ndarray) -> pd.DataFrame:
        """``rows`` with the image column that :func:`load` left on disk read back for just these
        rows (a search returns its hits' images, as when the column was held in memory)."""
        column = self.image_column
        if not self.result_images or column is None or column in rows.columns or self._ids_dir is None:
            return rows
        values = pa.array([self._stored_image(int(p)) for p in positions], pa.binary())
        return rows.assign(**{column: pd.arrays.ArrowExtensionArray(values)})

    def ids_for_keys(self, keys: Any) -> np.ndarray:
        """Faiss ids of the rows whose key column holds ``keys`` (the first row of each key).

        Raises
        ------
        ValueError
            The index has no key column.
        KeyError
            A key that is not in the index (its row may have had no embedding).
        """
        if self.key_column is None:
            raise ValueError("this index has no key column (build it with key_column=...); use search_ids")
        with self._lock:
            if self._keys is None:  # first row of each key, looked up by a hash index
                values = pd.Index(self.table.column(self.key_column).to_pandas())
                first = ~values.duplicated(keep="first")
                self._keys, self._key_positions = values[first], np.flatnonzero(first)
        keys_list = list(keys) if isinstance(keys, (list, tuple, np.ndarray, pd.Series, pd.Index)) else [keys]
        if self._keys.dtype.kind in "iu":  # keys typed on a command line arrive as strings
            keys_list = [int(k) if isinstance(k, str) and k.strip().lstrip("-").isdigit() else k for k in keys_list]
        found = self._keys.get_indexer(keys_list)
        missing = [k for k, f in zip(keys_list, found) if f < 0]
        if missing:
            raise KeyError(f"keys not in the index (or their rows had no embedding): {missing[:5]}")
        return self.ids[self._key_positions[found]]

    def embeddings(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored vectors of faiss ``ids``: float32 (len(ids), D) (decoded, so approximate
        for SQ8/PQ codes)."""
        faiss = import_faiss()
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        self.positions(ids)  # KeyError for unknown ids
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None and not self._direct_map:
            with self._lock:
                if not self._direct_map:  # a hash table id -> list entry, built once
                    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
                    self._direct_map = True
        return np.vstack([self.index.reconstruct(int(i)) for i in ids]).astype(np.float32, copy=False)

    def image(self, id_: int) -> bytes:
        """The encoded image of one row, from the kept image column: its bytes, or the file or
        URL its path names (only paths in the id table are ever read).

        Raises
        ------
        LookupError
            No image column, a null value, or a path that cannot be read.
        """
        if self.image_column is None:
            raise LookupError("this index keeps no image column (build it with image_column=...)")
        position = int(self.positions([id_])[0])
        if self.image_column in self.table.column_names:
            value = self.table.column(self.image_column)[position].as_py()
        else:
            value = self._stored_image(position)
        if value is None:
            raise LookupError(f"row {id_} has no image")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        from ..image.decode import read_paths

        data, reason = read_paths([str(value)])[0]
        if data is None:
            raise LookupError(f"row {id_}: {reason}")
        return data

    def _stored_image(self, position: int) -> Any:
        """The image bytes of the id-table row at ``position``, read from its partition's id part
        (one row group), for image columns that :func:`load` leaves on disk."""
        import pyarrow.parquet as pq

        from ..dedup._frame import ROW_BITS

        if self._ids_dir is None:
            raise LookupError(f"the image column {self.image_column!r} is not loaded")
        partition = int(self.table.column(PARTITION)[position].as_py())
        first = int(np.searchsorted(self.ids, np.int64(partition) << np.int64(ROW_BITS)))
        row = position - first  # the part holds the partition's indexed rows, in id order
        path = self._ids_dir / layout.id_part_name(partition, len(self.manifest["partition_rows"]))
        with self._lock:  # row-group boundaries, read once per part
            starts = self._group_starts.get(partition)
        if starts is None:
            meta = pq.read_metadata(path)
            starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
            with self._lock:
                self._group_starts[partition] = starts
        group = int(np.searchsorted(starts, row, side="right") - 1)
        # a ParquetFile per read: pyarrow's readers are not meant to be shared between threads
        column = pq.ParquetFile(path).read_row_group(group, columns=[self.image_column]).column(0)
        return column[row - int(starts[group])].as_py()

    # -- search --------------------------------------------------------------------------

    def _params(self, nprobe: int | None, filters: Any) -> tuple[Any, bool]:
        """faiss search parameters, and False when the filters leave no row."""
        faiss = import_faiss()
        selector = None
        if filters is not None:
            allowed = filter_ids(self.table, filters)
            if len(allowed) == 0:
                return None, False
            selector = faiss.IDSelectorBatch(allowed)
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            nprobe = nprobe or self.nprobe or 1
            if nprobe < 1:
                raise ValueError(f"nprobe={nprobe} must be positive")
            params = faiss.SearchParametersIVF(nprobe=min(int(nprobe), ivf.nlist))
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
            params._selector = selector  # keep it alive as long as the parameters
        return params, True

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        nprobe: int | None = None,
        filters: Any = None,
    ) -> pd.DataFrame:
        """The ``k`` most similar rows to each query vector.

        Parameters
        ----------
        queries
            float (Q, D) or (D,); L2-normalised here.
        k
            Results per query (fewer where the index, or the rows passing ``filters`` in the
            visited lists, hold fewer).
        nprobe
            Lists visited per query (IVF indexes); default: the manifest's. Higher: better
            recall, slower.
        filters
            Keep only rows that pass, in pyarrow/Dask ``read_parquet`` form on id-table
            columns: ``[("aesthetic", ">=", 5)]``, ``[[...], [...]]`` (OR), or a
            ``pyarrow.compute.Expression``.

        Returns
        -------
        pandas.DataFrame
            ``query``, ``rank``, ``similarity`` (float32) and the row's columns, ordered by
            query then rank.

        Raises
        ------
        ValueError
            Wrong dimension, a zero or non-finite query, ``k < 1``, or unknown filter columns.
        """
        x = np.asarray(queries, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"queries must be float (Q, {self.dim}) or ({self.dim},); got shape {np.shape(queries)}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k={k!r} must be a positive int")
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        bad = ~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0)
        if np.any(bad):
            raise ValueError(f"queries {np.flatnonzero(bad)[:5].tolist()} are zero or not finite")
        x = np.ascontiguousarray(x / norms, dtype=np.float32)
        params, any_rows = self._params(nprobe, filters)
        q = x.shape[0]
        if any_rows and len(self):
            similarity, labels = self.index.search(x, int(min(k, len(self))), params=params)
        else:
            similarity, labels = np.zeros((q, 0), np.float32), np.zeros((q, 0), np.int64)
        return self._results(similarity, labels)

    def _results(self, similarity: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
        found = labels >= 0
        query, rank = np.nonzero(found)
        positions = self.positions(labels[found])
        rows = self._with_stored_images(self.frame.take(positions).reset_index(drop=True), positions)
        columns = {"query": query.astype(np.int64), "rank": (rank + 1).astype(np.int64)}
        columns["similarity"] = similarity[found].astype(np.float32)
        columns.update({name: rows[name].array for name in rows.columns})
        return pd.DataFrame(columns, copy=False)

    def search_ids(self, ids: Any, k: int = 10, **kwargs: Any) -> pd.DataFrame:
        """Search with the stored vectors of faiss ``ids`` as queries ("more like this").

        The row itself is normally rank 1. ``kwargs``: as :meth:`search`.
        """
        ids = np.asarray(ids if isinstance(ids, (list, tuple, np.ndarray)) else [ids], dtype=np.int64)
        return self.search(self.embeddings(ids), k, **kwargs)

    def search_like(self, keys: Any, k: int = 10, **kwargs: Any) -> pd.DataFrame:
        """Search with the embeddings of the rows named by ``keys`` (the key column).

        Parameters
        ----------
        keys
            One key or a list (query ``i`` is ``keys[i]``).
        k, kwargs
            As :meth:`search`.
        """
        return self.search(self.embeddings(self.ids_for_keys(keys)), k, **kwargs)

    def embed_images(self, images: Any, embedder: Any = None) -> np.ndarray:
        """Embed images exactly as a row of the input would be: ``embedder.embed_partition``
        on a one-row pandas frame per image.

        Parameters
        ----------
        images
            Encoded bytes, a local path or fsspec URL, or a list of them.
        embedder
            A :class:`dask_clip.ImageEmbedder`; default: one for the model the index recorded.

        Returns
        -------
        numpy.ndarray
            float32 (len(images), D).

        Raises
        ------
        ValueError
            An image that cannot be read or decoded (the reason, as the error column gives
            it), or no model recorded and none given.
        """
        embedder = self._embedder(embedder)
        items = images if isinstance(images, list) else [images]
        out = []
        for item in items:
            value: bytes | str
            if isinstance(item, (bytes, bytearray, memoryview)):
                kind, value = "bytes", bytes(item)
            elif isinstance(item, (str, os.PathLike)):
                kind, value = "path", os.fspath(item)
            else:
                raise TypeError(f"an image is bytes, a path or a URL, not {type(item).__name__}")
            one = replace(embedder, image_kind=kind)
            frame = pd.DataFrame({one.image_column: pd.Series([value], dtype=object)})
            row = one.embed_partition(frame)
            reason = row[one.error_column].iloc[0]
            if pd.notna(reason):
                raise ValueError(f"cannot embed the query image: {reason}")
            from ..columns import embeddings_to_numpy

            out.append(embeddings_to_numpy(row[one.output_column])[0])
        return np.vstack(out).astype(np.float32, copy=False)

    def _embedder(self, embedder: Any) -> Any:
        if embedder is not None:
            return embedder
        from ..embed.embedder import ImageEmbedder

        spec = self.model
        if spec is None:
            raise ValueError(
                "the index does not record the embedding model; pass embedder=ImageEmbedder(...) "
                "(or build with model=...)"
            )
        self.check_weights()
        return ImageEmbedder(
            model=spec.model, pretrained=spec.pretrained, model_dir=spec.model_dir, precision=spec.precision
        )

    def search_image(self, images: Any, k: int = 10, *, embedder: Any = None, **kwargs: Any) -> pd.DataFrame:
        """Search by image: bytes, a path or URL, or a list of them (see :meth:`embed_images`).

        ``kwargs``: as :meth:`search`.
        """
        return self.search(self.embed_images(images, embedder), k, **kwargs)

    def search_text(
        self, texts: str | Sequence[str], k: int = 10, *, encode_text: EncodeText | None = None, **kwargs: Any
    ) -> pd.DataFrame:
        """Search by text through the text tower of the model that embedded the images.

        Parameters
        ----------
        texts
            One text or a list (query ``i`` is ``texts[i]``).
        encode_text
            ``list[str] -> float32 (Q, D)``; default: the recorded model's text tower
            (:func:`dask_clip.embed.text_embedder.embed_texts`).
        k, kwargs
            As :meth:`search`.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if encode_text is None:
            from ..embed.text_embedder import embed_texts

            spec = self.model
            if spec is None:
                raise ValueError("the index does not record the embedding model; pass encode_text=")
            self.check_weights()
            encode_text = functools.partial(embed_texts, spec)
        return self.search(np.asarray(encode_text(texts), dtype=np.float32), k, **kwargs)


def index_files(index_dir: str | os.PathLike) -> list[Path]:
    """The files of the finished index (for size accounting)."""
    manifest = layout.read_manifest(index_dir)
    folder = layout.version_dir(index_dir, manifest)
    return [p for p in folder.rglob("*") if p.is_file()]
