"""The cuDF backend (GPU): zero-copy columns, cuDF partitions embedded like pandas ones.

Runs only where cuDF (and so a GPU) is present; the buffer logic it shares with pandas is
tested on CPU in test_arrow.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from dask_clip import backends
from dask_clip.columns import LIST_FLOAT32
from dask_clip.image.sources import detect_source
from dask_clip.testing import encode_image

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
    like = cudf.DataFrame(index=index)
    s = backends.output_column(like, LIST_FLOAT32, emb, valid)
    assert s.dtype == cudf.ListDtype("float32")
    assert s.isna().to_numpy().tolist() == [False, True, False, False]
    assert s.index.to_pandas().tolist() == [10, 11, 12, 13]
    # empty nulls (issue 19): the leaves are the valid rows' values only, and a null row spans none
    assert len(s.list.leaves) == 3 * 8
    valid_rows = s[s.notna()]
    leaves = valid_rows.list.leaves.values.reshape(len(valid_rows), 8)  # the documented recipe
    torch.testing.assert_close(torch.from_dlpack(leaves), emb)
    assert s.to_arrow().offsets.to_pylist() == [0, 8, 8, 16, 24]
    all_valid = backends.output_column(cudf.DataFrame(index=cudf.RangeIndex(3)), LIST_FLOAT32, emb, np.ones(3, bool))
    assert all_valid.list.leaves.values.data.ptr == emb.data_ptr()  # no copy
    empty = cudf.DataFrame(index=cudf.RangeIndex(0))
    assert len(backends.output_column(empty, LIST_FLOAT32, torch.zeros((0, 0)), np.zeros(0, bool))) == 0
    all_failed = backends.output_column(like, LIST_FLOAT32, torch.zeros((0, 8), device="cuda"), np.zeros(4, bool))
    assert all_failed.isna().to_numpy().all()


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
    assert detect_source(gdf["image"]).kind == "bytes"
    out = embedder.embed_partition(gdf)
    assert isinstance(out, cudf.DataFrame) and out.index.to_pandas().tolist() == frame.index.tolist()
    assert out["embedding"].dtype == cudf.ListDtype("float32")
    assert out["embedding_error"].to_arrow().to_pylist() == pa.array(expected["embedding_error"]).to_pylist()
    got = embeddings_to_numpy(out["embedding"].to_pandas(arrow_type=True))
    np.testing.assert_allclose(got, embeddings_to_numpy(expected["embedding"]), atol=1e-4, equal_nan=True)
    meta = embedder.output_meta(gdf.head(0))
    assert isinstance(meta, cudf.DataFrame) and meta["embedding"].dtype == cudf.ListDtype("float32")


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
    rows = detect_source(gdf["image"]).rows(gdf, "image", height_column="height", width_column="width")
    leaves_ptr = gdf["image"].list.leaves.values.data.ptr
    assert rows[0].is_cuda and rows[0].data_ptr() == leaves_ptr
    assert all(np.array_equal(r.cpu().numpy(), p) for r, p in zip(rows, pixels))


@pytest.mark.gpu
@pytest.mark.cudf
def test_packed_floats_are_a_list_column_read_back_as_a_matrix(cudf):
    """cuDF has no binary dtype: ``pack_floats`` gives ``list<float32>`` rows, read back unchanged."""
    x = torch.arange(12, dtype=torch.float32, device="cuda").reshape(4, 3) / 7
    col = backends.pack_floats(cudf.DataFrame(index=cudf.RangeIndex(4)), x)
    assert col.dtype == cudf.ListDtype("float32")
    back, valid = backends.embedding_matrix(col, device="cuda")
    assert bool(valid.all()) and torch.equal(back, x)
