"""The dataframe boundary: image columns in, embedding columns out.

Everything that depends on the dataframe library (pandas with Arrow dtypes, or cuDF) lives
here; the rest of the package sees Python rows, NumPy arrays and torch tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from ._backend import is_cudf

__all__ = [
    "BINARY_DTYPE",
    "EMBEDDING_DTYPE",
    "ERROR_DTYPE",
    "IMAGE_KINDS",
    "as_binary",
    "detect_image_kind",
    "embedding_array",
    "embeddings_to_numpy",
    "error_array",
    "image_rows",
    "is_cudf",
    "split_flat_pixels",
]

IMAGE_KINDS = ("auto", "bytes", "path", "pixels")
EMBEDDING_DTYPE = pd.ArrowDtype(pa.list_(pa.float32()))
ERROR_DTYPE = pd.ArrowDtype(pa.string())
BINARY_DTYPE = pd.ArrowDtype(pa.binary())


def _arrow_type(dtype: object) -> pa.DataType | None:
    return dtype.pyarrow_dtype if isinstance(dtype, pd.ArrowDtype) else None


def _kind_of_arrow_type(arrow_type: pa.DataType) -> str | None:
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type) or pa.types.is_binary_view(arrow_type):
        return "bytes"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        return "path"
    if (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)) and pa.types.is_uint8(
        arrow_type.value_type
    ):
        return "pixels"
    return None


def detect_image_kind(series: pd.Series) -> str | None:
    """What an image column holds: ``"bytes"``, ``"path"`` or ``"pixels"``.

    Parameters
    ----------
    series
        The image column (a pandas Series, possibly empty).

    Returns
    -------
    str or None
        None when the dtype is object and the column has no non-null value to look at.

    Raises
    ------
    TypeError
        The column's dtype cannot hold images.
    """
    if is_cudf(series):
        from . import _cudf

        return _cudf.detect_image_kind(series)
    arrow_type = _arrow_type(series.dtype)
    if arrow_type is not None:
        kind = _kind_of_arrow_type(arrow_type)
        if kind is None:
            raise TypeError(
                f"image column of type {arrow_type} holds no images; expected binary, string or list<uint8>"
            )
        return kind
    if pd.api.types.is_string_dtype(series.dtype) and series.dtype != object:
        return "path"  # pandas' own string dtypes
    if series.dtype != object:
        raise TypeError(f"image column of dtype {series.dtype} holds no images")
    first = series.dropna()
    if first.empty:
        return None
    value = first.iloc[0]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(value, str):
        return "path"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return "pixels"
    raise TypeError(f"image column holds {type(value).__name__}; expected bytes, str paths or uint8 arrays")


def _pixels_from_flat_lists(array: pa.Array, heights: np.ndarray, widths: np.ndarray) -> list[torch.Tensor | None]:
    """Views into one Arrow ``list<uint8>`` buffer, shaped (H, W, C) — no per-pixel loop."""
    if isinstance(array, pa.ChunkedArray):  # one chunk: use it as is (combining copies)
        array = array.chunk(0) if array.num_chunks == 1 else array.combine_chunks()
    values = array.values  # already offset-adjusted for sliced arrays' children
    flat = torch.from_dlpack(np.frombuffer(values.buffers()[1], np.uint8, len(values), values.offset))
    offsets = array.offsets.to_numpy() - array.offsets[0].as_py()
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    return split_flat_pixels(flat, offsets, valid, heights, widths)


def split_flat_pixels(
    flat: torch.Tensor, offsets: np.ndarray, valid: np.ndarray, heights: np.ndarray, widths: np.ndarray
) -> list[torch.Tensor | None]:
    """Per-row (H, W, C) views of one flat pixel buffer (shared by the pandas and cuDF paths).

    Parameters
    ----------
    flat
        uint8 (total,) on any device (a DLPack view of an Arrow or cuDF buffer).
    offsets
        int (N + 1,): row i is ``flat[offsets[i]:offsets[i + 1]]``.
    valid
        bool (N,), False for null rows.
    heights, widths
        float (N,), NaN where unknown.

    Returns
    -------
    list of torch.Tensor or None
        Views, no copy; a row whose length does not fit its shape stays flat (so
        :func:`dask_clip.decode.check_pixels` reports it).
    """
    rows: list[torch.Tensor | None] = []
    for i in range(len(valid)):
        start, stop = int(offsets[i]), int(offsets[i + 1])
        h, w = heights[i], widths[i]
        if not valid[i] or pd.isna(h) or pd.isna(w) or int(h) * int(w) == 0 or (stop - start) % (int(h) * int(w)):
            rows.append(None if not valid[i] else flat[start:stop])  # flat: check_pixels says why
            continue
        rows.append(flat[start:stop].view(int(h), int(w), -1))
    return rows


def image_rows(df: pd.DataFrame, column: str, kind: str, height_column: str, width_column: str) -> list[object]:
    """One Python object per row for the decoder: bytes, a path string, or a pixel array.

    Parameters
    ----------
    df
        A pandas partition.
    column
        The image column.
    kind
        ``"bytes"``, ``"path"`` or ``"pixels"``.
    height_column, width_column
        For a flat Arrow ``list<uint8>`` pixel column: the columns giving each image's H and W.

    Returns
    -------
    list
        ``len(df)`` items; None for nulls.
    """
    if is_cudf(df):
        from . import _cudf

        return _cudf.image_rows(df, column, kind, height_column, width_column)
    series = df[column]
    arrow_type = _arrow_type(series.dtype)
    if kind == "pixels" and arrow_type is not None:
        missing = [c for c in (height_column, width_column) if c not in df.columns]
        if missing:
            raise ValueError(f"a list<uint8> pixel column needs height/width columns; missing {missing}")
        array = pa.array(series.array) if not hasattr(series.array, "_pa_array") else series.array._pa_array
        heights = df[height_column].to_numpy(dtype="float64", na_value=np.nan)
        widths = df[width_column].to_numpy(dtype="float64", na_value=np.nan)
        return _pixels_from_flat_lists(array, heights, widths)
    if arrow_type is not None:
        return series.array._pa_array.to_pylist() if hasattr(series.array, "_pa_array") else series.tolist()
    return [None if _is_null(v) else v for v in series.tolist()]


def _is_null(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def embedding_array(embeddings: np.ndarray, valid: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """A ``list<float32>`` column from one flat buffer: no Python list of arrays.

    Parameters
    ----------
    embeddings
        float32 (M, D), the rows that succeeded, in order.
    valid
        bool (N,), True where a row has an embedding; ``valid.sum() == M``.

    Returns
    -------
    pandas.arrays.ArrowExtensionArray
        Length N, dtype ``list<float32>[pyarrow]``, null where ``valid`` is False.
    """
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    n_valid, dim = embeddings.shape if embeddings.ndim == 2 else (0, 0)
    if n_valid != int(valid.sum()):
        raise ValueError(f"{n_valid} embeddings for {int(valid.sum())} valid rows")
    if n_valid * dim >= 2**31:
        raise ValueError("partition too large for int32 list offsets; use smaller partitions")
    offsets = np.zeros(len(valid) + 1, dtype=np.int32)
    np.cumsum(valid.astype(np.int32) * dim, out=offsets[1:])
    mask = pa.array(~valid) if not valid.all() else None
    lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(embeddings.reshape(-1)), mask=mask)
    return pd.arrays.ArrowExtensionArray(lists)


def error_array(errors: Sequence[str | None]) -> pd.api.extensions.ExtensionArray:
    """The error column: a short reason per failed row, null elsewhere (``string[pyarrow]``)."""
    return pd.arrays.ArrowExtensionArray(pa.array(list(errors), type=pa.string()))


def as_binary(series: pd.Series) -> pd.Series:
    """An object column of bytes as Arrow ``binary``, which Dask can write to Parquet."""
    if is_cudf(series):  # cuDF has no binary dtype: its bytes stay strings
        return series
    values = [None if _is_null(v) else bytes(v) for v in series.tolist()]
    return pd.Series(
        pd.arrays.ArrowExtensionArray(pa.array(values, type=pa.binary())), index=series.index, name=series.name
    )


def embeddings_to_numpy(series: pd.Series) -> np.ndarray:
    """Read a ``list<float32>`` column back as float32 (N, D); null rows become NaN.

    Parameters
    ----------
    series
        An embedding column (Arrow list dtype, or object of arrays as read by plain pandas).

    Returns
    -------
    numpy.ndarray
        float32 (N, D).
    """
    arrow_type = _arrow_type(series.dtype)
    array = series.array._pa_array.combine_chunks() if arrow_type is not None else pa.array(series.tolist())
    if arrow_type is None and pa.types.is_list(array.type) and not pa.types.is_float32(array.type.value_type):
        array = array.cast(pa.list_(pa.float32()))
    lengths = array.value_lengths().to_numpy(zero_copy_only=False)
    dims = set(lengths[~np.isnan(lengths.astype(float))].astype(int).tolist()) if len(lengths) else set()
    if len(dims) > 1:
        raise ValueError(f"embeddings have different lengths: {sorted(dims)}")
    dim = dims.pop() if dims else 0
    out = np.full((len(array), dim), np.nan, dtype=np.float32)
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    out[valid] = array.flatten().to_numpy().reshape(-1, dim) if dim else out[valid]
    return out
