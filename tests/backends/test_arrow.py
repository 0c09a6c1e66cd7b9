"""The Arrow/NumPy buffer helpers both backends share: zero-copy row views, bitmasks, dense rows.

These are the layouts cuDF hands over too (strings, binaries, lists: validity + offsets +
values), so the cuDF backend's logic is tested here on host buffers.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from dask_clip.backends import arrow
from dask_clip.testing import encode_image


@pytest.mark.parametrize(
    "arrow_type", [pa.binary(), pa.large_binary(), pa.string(), pa.large_string(), pa.binary_view()]
)
def test_byte_rows_view_arrow_buffers_without_copying(arrow_type):
    values = [b"\xff\xd8\xffjpeg", None, b"", b"\x89PNG\r\n\x1a\nxyz", b"path/a.jpg"]
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        values[0], values[3] = b"jpeg-like", b"png-like"  # valid UTF-8 for string arrays
    array = pa.array(values, type=pa.binary()).cast(arrow_type)
    rows = arrow.byte_rows(array)
    assert [None if r is None else bytes(r) for r in rows] == values
    if not pa.types.is_binary_view(arrow_type):
        data = array.buffers()[2]
        first = np.frombuffer(rows[0], np.uint8)
        assert first.__array_interface__["data"][0] == data.address  # a view, not a copy


def test_byte_rows_of_sliced_and_chunked_arrays():
    array = pa.array([b"a", b"bb", None, b"dddd", b"eeeee"])
    assert [None if r is None else bytes(r) for r in arrow.byte_rows(array.slice(1, 3))] == [b"bb", None, b"dddd"]
    chunked = pa.chunked_array([array.slice(0, 2), array.slice(3)])
    assert [bytes(r) for r in arrow.byte_rows(chunked)] == [b"a", b"bb", b"dddd", b"eeeee"]


def test_rows_from_numpy_offsets_and_chars():
    chars = np.frombuffer(b"helloworld!", np.uint8)
    rows = arrow.rows_from_buffers(np.array([0, 5, 5, 10, 11], np.int64), chars, np.array([1, 0, 1, 1], bool))
    assert [None if r is None else bytes(r) for r in rows] == [b"hello", None, b"world", b"!"]


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 513, 1000])
def test_validity_bitmask_matches_arrow(n):
    rng = np.random.default_rng(n)
    valid = rng.random(n) > 0.3
    mask = arrow.pack_validity(valid)
    assert mask.dtype == np.uint8 and len(mask) % 64 == 0 and len(mask) >= (n + 7) // 8
    values = pa.array(np.where(valid, 1.0, np.nan), from_pandas=True)
    if values.null_count:  # Arrow's own validity buffer: the same bits, LSB first
        bits = np.frombuffer(values.buffers()[0], np.uint8)[: (n + 7) // 8]
        tail = n % 8
        if tail:  # bits past n are undefined in Arrow
            bits, mask = bits.copy(), mask.copy()
            bits[-1] &= (1 << tail) - 1
        np.testing.assert_array_equal(mask[: (n + 7) // 8], bits)
    assert np.unpackbits(mask, bitorder="little")[:n].astype(bool).tolist() == valid.tolist()


def test_dense_rows_put_embeddings_in_the_valid_rows():
    emb = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    full = arrow.dense_rows(emb, np.array([True, False, True, True, False]))
    assert full.tolist() == [[0, 1], [0, 0], [2, 3], [4, 5], [0, 0]]
    assert arrow.dense_rows(emb, np.ones(3, bool)).data_ptr() == emb.data_ptr()  # all valid: no copy
    with pytest.raises(ValueError, match="3 embeddings for 2 valid rows"):
        arrow.dense_rows(emb, np.array([True, True, False]))


@pytest.mark.parametrize("empty", [torch.zeros((0, 8)), torch.zeros((0, 0)), np.zeros((0, 8), np.float32)])
def test_dense_matrix_of_a_partition_whose_rows_all_failed(empty):
    # The cuDF column builder's input when every image failed (a (0, D) tensor): it used to
    # call reshape(0, -1) on it, which torch refuses.
    full = arrow.dense_matrix(empty, np.zeros(5, bool))
    assert full.shape == (5, max(1, empty.shape[1])) and not full.any()


def test_dense_matrix_of_one_value_per_row():
    full = arrow.dense_matrix(np.array([1.5, 2.5], np.float32), np.array([False, True, True]))
    assert full.tolist() == [[0.0], [1.5], [2.5]]


def test_flat_pixel_lists_are_views_shaped_per_row():
    pixels = [np.full((2, 3, 3), i, np.uint8) for i in range(3)]
    array = pa.array([p.reshape(-1) for p in pixels], type=pa.list_(pa.uint8()))
    flat, offsets, valid = arrow.flat_list_buffers(array)
    assert flat.data_ptr() == array.values.buffers()[1].address
    rows = arrow.split_flat_pixels(flat, offsets, valid, np.full(3, 2.0), np.full(3, 3.0))
    assert [r.data_ptr() for r in rows] == [flat.data_ptr() + 18 * i for i in range(3)]
    assert all(np.array_equal(r.numpy(), p) for r, p in zip(rows, pixels))


def test_list_float32_array_is_one_flat_buffer():
    values = np.arange(6, dtype=np.float32).reshape(3, 2)
    lists = arrow.list_float32_array(values, np.array([True, False, True, True]))
    assert lists.offsets.to_pylist() == [0, 2, 2, 4, 6]
    assert lists.is_null().to_pylist() == [False, True, False, False]
    assert np.frombuffer(lists.values.buffers()[1], np.float32).tolist() == values.ravel().tolist()


def test_image_signatures_tell_bytes_from_paths():
    assert arrow.looks_like_image(encode_image(np.zeros((4, 4, 3), np.uint8)))
    assert arrow.looks_like_image(encode_image(np.zeros((4, 4, 3), np.uint8), "PNG"))
    assert arrow.looks_like_image(encode_image(np.zeros((4, 4, 3), np.uint8), "WEBP"))
    assert arrow.looks_like_image(b"\x00\x01\xfe\xfe\xfe\xfe not utf-8 at all")
    assert not arrow.looks_like_image(b"s3://bucket/images/0001.jpg")
    assert not arrow.looks_like_image("/data/é/日本.jpg".encode()[:16])  # cut inside a character
    assert not arrow.looks_like_image(None)
