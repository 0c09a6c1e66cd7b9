"""The cuDF buffer hand-offs. The device-agnostic halves run on CPU with Arrow and NumPy
buffers; the cuDF halves run only where cuDF (and so a GPU) is present."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from dask_clip import _cudf
from dask_clip.columns import detect_image_kind, is_cudf, split_flat_pixels
from dask_clip.testing import encode_image

# -- device-agnostic (CPU) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "arrow_type", [pa.binary(), pa.large_binary(), pa.string(), pa.large_string(), pa.binary_view()]
)
def test_byte_rows_view_arrow_buffers_without_copying(arrow_type):
    values = [b"\xff\xd8\xffjpeg", None, b"", b"\x89PNG\r\n\x1a\nxyz", b"path/a.jpg"]
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        values[0], values[3] = b"jpeg-like", b"png-like"  # valid UTF-8 for string arrays
    array = pa.array(values, type=pa.binary()).cast(arrow_type)
    rows = _cudf.byte_rows(array)
    assert [None if r is None else bytes(r) for r in rows] == values
    if not pa.types.is_binary_view(arrow_type):
        data = array.buffers()[2]
        first = np.frombuffer(rows[0], np.uint8)
        assert first.__array_interface__["data"][0] == data.address  # a view, not a copy


def test_byte_rows_of_sliced_and_chunked_arrays():
    array = pa.array([b"a", b"bb", None, b"dddd", b"eeeee"])
    assert [None if r is None else bytes(r) for r in _cudf.byte_rows(array.slice(1, 3))] == [b"bb", None, b"dddd"]
    chunked = pa.chunked_array([array.slice(0, 2), array.slice(3)])
    assert [bytes(r) for r in _cudf.byte_rows(chunked)] == [b"a", b"bb", b"dddd", b"eeeee"]


def test_rows_from_numpy_offsets_and_chars():
    chars = np.frombuffer(b"helloworld!", np.uint8)
    rows = _cudf.rows_from_buffers(np.array([0, 5, 5, 10, 11], np.int64), chars, np.array([1, 0, 1, 1], bool))
    assert [None if r is None else bytes(r) for r in rows] == [b"hello", None, b"world", b"!"]


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 513, 1000])
def test_validity_bitmask_matches_arrow(n):
    rng = np.random.default_rng(n)
    valid = rng.random(n) > 0.3
    mask = _cudf.pack_validity(valid)
    assert mask.dtype == np.uint8 and len(mask) % 64 == 0 and len(mask) >= (n + 7) // 8
    arrow = pa.array(np.where(valid, 1.0, np.nan), from_pandas=True)
    if arrow.null_count:  # Arrow's own validity buffer: the same bits, LSB first
        bits = np.frombuffer(arrow.buffers()[0], np.uint8)[: (n + 7) // 8]
        tail = n % 8
        if tail:  # bits past n are undefined in Arrow
            bits, mask = bits.copy(), mask.copy()
            bits[-1] &= (1 << tail) - 1
        np.testing.assert_array_equal(mask[: (n + 7) // 8], bits)
    assert np.unpackbits(mask, bitorder="little")[:n].astype(bool).tolist() == valid.tolist()


def test_dense_rows_put_embeddings_in_the_valid_rows():
    emb = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    full = _cudf.dense_rows(emb, np.array([True, False, True, True, False]))
    assert full.tolist() == [[0, 1], [0, 0], [2, 3], [4, 5], [0, 0]]
    assert _cudf.dense_rows(emb, np.ones(3, bool)).data_ptr() == emb.data_ptr()  # all valid: no copy
    with pytest.raises(ValueError, match="3 embeddings for 2 valid rows"):
        _cudf.dense_rows(emb, np.array([True, True, False]))


def test_dlpack_hand_offs_share_memory_with_numpy_and_arrow():
    # The same hand-offs the cuDF path makes with CuPy, done with host buffers.
    pixels = [np.full((2, 3, 3), i, np.uint8) for i in range(3)]
    array = pa.array([p.reshape(-1) for p in pixels], type=pa.list_(pa.uint8()))
    values = array.values
    flat = torch.from_dlpack(np.frombuffer(values.buffers()[1], np.uint8, len(values), values.offset))
    assert flat.data_ptr() == values.buffers()[1].address
    rows = split_flat_pixels(flat, array.offsets.to_numpy(), np.ones(3, bool), np.full(3, 2.0), np.full(3, 3.0))
    assert [r.data_ptr() for r in rows] == [flat.data_ptr() + 18 * i for i in range(3)]
    assert all(np.array_equal(r.numpy(), p) for r, p in zip(rows, pixels))
    embeddings = np.arange(12, dtype=np.float32).reshape(4, 3)
    back = np.from_dlpack(torch.from_dlpack(embeddings))
    assert np.shares_memory(back, embeddings)


def test_image_signatures_tell_bytes_from_paths():
    assert _cudf.looks_like_image(encode_image(np.zeros((4, 4, 3), np.uint8)))
    assert _cudf.looks_like_image(encode_image(np.zeros((4, 4, 3), np.uint8), "PNG"))
    assert _cudf.looks_like_image(encode_image(np.zeros((4, 4, 3), np.uint8), "WEBP"))
    assert _cudf.looks_like_image(b"\x00\x01\xfe\xfe\xfe\xfe not utf-8 at all")
    assert not _cudf.looks_like_image(b"s3://bucket/images/0001.jpg")
    assert not _cudf.looks_like_image("/data/é/日本.jpg".encode()[:16])  # cut inside a character
    assert not _cudf.looks_like_image(None)


def test_cudf_detection_needs_no_cudf():
    assert not is_cudf(pd.DataFrame()) and not is_cudf(pd.Series([1])) and not is_cudf(np.zeros(2))
    fake = type("DataFrame", (), {"__module__": "cudf.core.dataframe"})()
    assert is_cudf(fake)


# -- cuDF (GPU) --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cudf():
    return pytest.importorskip("cudf")


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    # Not scikit-image's photos: a GPU machine with cuDF may not have scikit-image.
    rng = np.random.default_rng(0)
    return [
        encode_image(rng.integers(0, 256, (60 + 9 * i, 80 + 5 * i, 3), dtype=np.uint8), quality=90) for i in range(6)
    ]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    from dask_clip.testing import write_model_dir

    return str(write_model_dir(tmp_path_factory.mktemp("cudf-tiny-model")))


@pytest.mark.gpu
@pytest.mark.cudf
def test_embedding_series_is_zero_copy_list_float32_with_nulls(cudf):
    emb = torch.randn(3, 8, device="cuda")
    valid = np.array([True, False, True, True])
    index = cudf.Index([10, 11, 12, 13])
    s = _cudf.embedding_series(emb, valid, index)
    assert s.dtype == cudf.ListDtype("float32")
    assert s.isna().to_numpy().tolist() == [False, True, False, False]
    assert s.index.to_pandas().tolist() == [10, 11, 12, 13]
    leaves = s.list.leaves.values.reshape(len(s), 8)  # the documented reading-back recipe
    back = torch.from_dlpack(leaves)
    torch.testing.assert_close(back[[0, 2, 3]], emb)
    all_valid = _cudf.embedding_series(emb, np.ones(3, bool), cudf.RangeIndex(3))
    assert all_valid.list.leaves.values.data.ptr == emb.data_ptr()  # no copy
    assert len(_cudf.embedding_series(torch.zeros((0, 0)), np.zeros(0, bool), cudf.RangeIndex(0))) == 0


@pytest.mark.gpu
@pytest.mark.cudf
def test_cudf_partition_embeds_like_pandas(cudf, tiny_model, jpegs):
    from dask_clip import ImageEmbedder
    from dask_clip.columns import embeddings_to_numpy

    frame = pd.DataFrame({"image": pd.Series([*jpegs, b"not an image", None], dtype=pd.ArrowDtype(pa.binary()))})
    frame.index = frame.index + 100
    embedder = ImageEmbedder(model_dir=tiny_model, device="cuda", precision="fp32", decode_device="cpu")
    expected = embedder.embed_partition(frame)
    # As cuDF reads a Parquet binary column: strings holding the raw bytes (no UTF-8 check).
    strings = pa.array([*jpegs, b"not an image", None], type=pa.binary()).view(pa.string())
    gdf = cudf.DataFrame({"image": cudf.Series(strings)})
    gdf.index = gdf.index + 100
    assert detect_image_kind(gdf["image"]) == "bytes"
    out = embedder.embed_partition(gdf)
    assert is_cudf(out) and out.index.to_pandas().tolist() == frame.index.tolist()
    assert out["embedding"].dtype == cudf.ListDtype("float32")
    assert out["embedding_error"].to_arrow().to_pylist() == pa.array(expected["embedding_error"]).to_pylist()
    got = embeddings_to_numpy(out["embedding"].to_pandas(arrow_type=True))
    np.testing.assert_allclose(got, embeddings_to_numpy(expected["embedding"]), atol=1e-4, equal_nan=True)
    meta = embedder.output_meta(gdf.head(0))
    assert is_cudf(meta) and meta["embedding"].dtype == cudf.ListDtype("float32")


@pytest.mark.gpu
@pytest.mark.cudf
def test_cudf_pixel_lists_reach_torch_without_a_copy(cudf):
    pixels = [np.full((4, 5, 3), i, np.uint8) for i in range(3)]
    gdf = cudf.DataFrame(
        {
            "image": cudf.Series(pa.array([p.reshape(-1) for p in pixels], type=pa.list_(pa.uint8()))),
            "height": [4, 4, 4],
            "width": [5, 5, 5],
        }
    )
    rows = _cudf.image_rows(gdf, "image", "pixels", "height", "width")
    leaves_ptr = gdf["image"].list.leaves.values.data.ptr
    assert rows[0].is_cuda and rows[0].data_ptr() == leaves_ptr
    assert all(np.array_equal(r.cpu().numpy(), p) for r, p in zip(rows, pixels))
