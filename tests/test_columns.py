"""The dataframe boundary: kind detection, flat-buffer list columns, read-back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from dask_clip.columns import (
    BINARY_DTYPE,
    EMBEDDING_DTYPE,
    detect_image_kind,
    embedding_array,
    embeddings_to_numpy,
    image_rows,
)
from dask_clip.decode import check_pixels, decode_bytes, read_paths


@pytest.mark.parametrize(
    ("series", "kind"),
    [
        (pd.Series([b"x"], dtype=BINARY_DTYPE), "bytes"),
        (pd.Series([b"x"], dtype=object), "bytes"),
        (pd.Series(["a.jpg"]), "path"),
        (pd.Series(["a.jpg"], dtype=pd.ArrowDtype(pa.string())), "path"),
        (pd.Series([np.zeros((2, 2, 3), np.uint8)], dtype=object), "pixels"),
        (pd.Series([[1, 2]], dtype=pd.ArrowDtype(pa.list_(pa.uint8()))), "pixels"),
        (pd.Series([None], dtype=object), None),
    ],
)
def test_detect_image_kind(series, kind):
    assert detect_image_kind(series) == kind


def test_detect_image_kind_rejects_non_images():
    with pytest.raises(TypeError, match="holds no images"):
        detect_image_kind(pd.Series([1.0, 2.0]))


def test_embedding_array_is_one_flat_buffer_with_nulls():
    emb = np.arange(6, dtype=np.float32).reshape(3, 2)
    valid = np.array([True, False, True, True])
    column = embedding_array(emb, valid)
    assert column.dtype == EMBEDDING_DTYPE
    lists = column._pa_array.combine_chunks()
    assert lists.offsets.to_pylist() == [0, 2, 2, 4, 6]
    assert lists.is_null().to_pylist() == [False, True, False, False]
    # The values buffer is the embeddings' bytes, not per-row Python objects.
    assert np.frombuffer(lists.values.buffers()[1], np.float32).tolist() == emb.ravel().tolist()
    back = embeddings_to_numpy(pd.Series(column))
    np.testing.assert_array_equal(back[[0, 2, 3]], emb)
    assert np.isnan(back[1]).all()


def test_embeddings_to_numpy_reads_object_columns_from_plain_pandas():
    series = pd.Series([np.array([1, 2], np.float32), np.array([3, 4], np.float32)], dtype=object)
    np.testing.assert_array_equal(embeddings_to_numpy(series), [[1, 2], [3, 4]])


def test_flat_pixel_lists_are_views_of_the_arrow_buffer():
    images = [np.arange(24, dtype=np.uint8).reshape(2, 4, 3), np.full((3, 1, 3), 7, np.uint8)]
    array = pa.array([i.ravel() for i in images] + [None], type=pa.list_(pa.uint8())).slice(0, 3)
    frame = pd.DataFrame({"image": pd.arrays.ArrowExtensionArray(array), "h": [2, 3, 1], "w": [4, 1, 1]})
    rows = image_rows(frame, "image", "pixels", "h", "w")
    assert isinstance(rows[0], torch.Tensor) and rows[0].shape == (2, 4, 3)
    np.testing.assert_array_equal(rows[1].numpy(), images[1])
    assert rows[2] is None
    base = np.frombuffer(array.values.buffers()[1], np.uint8)
    assert rows[0].data_ptr() == base.ctypes.data  # no copy


def test_check_pixels_modes():
    gray = np.zeros((4, 5), np.uint8)
    rgba = np.zeros((4, 5, 4), np.uint8)
    assert check_pixels(gray)[0].shape == (4, 5, 3)
    assert check_pixels(rgba)[0].shape == (4, 5, 3)
    assert "uint8" in check_pixels(np.zeros((4, 5, 3), np.float32))[1]
    assert "shape" in check_pixels(np.zeros((4, 5, 2), np.uint8))[1]
    assert "too large" in check_pixels(np.zeros((100, 100, 3), np.uint8), max_pixels=50)[1]


def test_decode_bytes_accepts_memoryview_and_refuses_text():
    from dask_clip.testing import encode_image

    blob = encode_image(np.zeros((8, 8, 3), np.uint8), "PNG")
    assert decode_bytes(memoryview(blob))[0].shape == (8, 8, 3)
    assert decode_bytes("a string")[1] == "expected image bytes, got str"


def test_read_paths_keeps_order_and_reports_each_row(tmp_path):
    (tmp_path / "a").write_bytes(b"A")
    (tmp_path / "b").write_bytes(b"B")
    got = read_paths([str(tmp_path / "b"), None, f"file://{tmp_path}/a", str(tmp_path / "c"), "nope://x"])
    assert got[0] == (b"B", None) and got[2] == (b"A", None)
    assert "missing" in got[1][1] and got[3][1].startswith("file not found")
    assert "cannot open" in got[4][1]
