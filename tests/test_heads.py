"""Heads: extra columns computed on the embeddings in the same pass, loaded once per worker."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dask_clip import ImageEmbedder, embeddings_to_numpy
from dask_clip.columns import SCORE_DTYPE
from dask_clip.testing import TINY_MODEL_CFG, ProjectionHead


@pytest.fixture
def frame(photo_jpegs) -> pd.DataFrame:
    images = [*photo_jpegs, b"not an image", None]
    return pd.DataFrame(
        {
            "image": pd.Series(images, dtype=pd.ArrowDtype(pa.binary())),
            "key": pd.Series([f"k{i}" for i in range(len(images))], dtype=pd.ArrowDtype(pa.string())),
        }
    )


def expected_projection(out: pd.DataFrame, head: ProjectionHead) -> np.ndarray:
    embeddings = embeddings_to_numpy(out["embedding"])
    return embeddings @ head.weights(embeddings.shape[1])


def test_a_head_adds_one_column_computed_from_the_embeddings(model_dir, frame):
    heads = [ProjectionHead("p0", seed=0), ProjectionHead("p1", seed=1)]
    out = ImageEmbedder(model_dir=model_dir, heads=heads).embed_partition(frame)
    assert list(out.columns) == ["image", "key", "embedding", "embedding_error", "p0", "p1"]
    for head in heads:
        assert out[head.column].dtype == SCORE_DTYPE
        got = out[head.column].to_numpy(dtype=np.float64, na_value=np.nan)
        np.testing.assert_allclose(got, expected_projection(out, head), rtol=1e-5, atol=1e-6)
        assert np.isnan(got[-2:]).all()  # the failed rows have no score either


def test_heads_see_unit_embeddings_also_when_the_output_is_not_normalised(model_dir, frame):
    head = ProjectionHead()
    normalised = ImageEmbedder(model_dir=model_dir, heads=[head]).embed_partition(frame)
    raw = ImageEmbedder(model_dir=model_dir, heads=[head], normalize=False).embed_partition(frame)
    assert not np.allclose(np.linalg.norm(embeddings_to_numpy(raw["embedding"])[:-2], axis=1), 1.0)
    pd.testing.assert_series_equal(raw["projection"], normalised["projection"])


def test_heads_on_a_real_cluster_with_meta(client, model_dir, frame):
    head = ProjectionHead()
    embedder = ImageEmbedder(model_dir=model_dir, heads=[head])
    ddf = dd.from_pandas(frame, npartitions=3)
    lazy = embedder(ddf)
    assert lazy._meta["projection"].dtype == SCORE_DTYPE
    out = client.compute(lazy).result()
    pd.testing.assert_frame_equal(out, embedder.embed_partition(frame), check_exact=False, atol=1e-5)


def test_head_configuration_is_checked_on_the_client(model_dir, frame):
    ddf = dd.from_pandas(frame, npartitions=1)
    width = TINY_MODEL_CFG["embed_dim"]
    ImageEmbedder(model_dir=model_dir, heads=[ProjectionHead(dim=width)])(ddf)  # the right width: fine
    with pytest.raises(ValueError, match=f"head 'projection' was made for 768-d embeddings.*gives {width}-d"):
        ImageEmbedder(model_dir=model_dir, heads=[ProjectionHead(dim=768)])(ddf)
    with pytest.raises(ValueError, match=r"output columns \['embedding'\] are named twice"):
        ImageEmbedder(model_dir=model_dir, heads=[ProjectionHead("embedding")])(ddf)
    with pytest.raises(ValueError, match="output column 'key' already exists"):
        ImageEmbedder(model_dir=model_dir, heads=[ProjectionHead("key")])(ddf)
    with pytest.raises(TypeError, match="heads must be dask_clip.heads.Head objects"):
        ImageEmbedder(model_dir=model_dir, heads=[lambda x: x])(ddf)


def test_embedder_with_heads_is_hashable_and_picklable(model_dir):
    import pickle

    embedder = ImageEmbedder(model_dir=model_dir, heads=[ProjectionHead()])
    assert isinstance(embedder.heads, tuple) and hash(embedder)
    assert pickle.loads(pickle.dumps(embedder)) == embedder


@pytest.mark.cudf
def test_cudf_meta_of_a_head_column(model_dir):
    cudf = pytest.importorskip("cudf")
    meta = cudf.DataFrame({"image": cudf.Series([], dtype="str")})
    out = ImageEmbedder(model_dir=model_dir, heads=[ProjectionHead()], image_kind="bytes").output_meta(meta)
    assert isinstance(out, cudf.DataFrame) and str(out["projection"].dtype) == "float32"
    assert out["embedding"].dtype == cudf.ListDtype("float32")
