"""The ImageEmbedder contracts: rows, columns, types, errors — eager and on a real cluster."""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dask_clip import ImageDecodeError, ImageEmbedder
from dask_clip.columns import BINARY_DTYPE, EMBEDDING_DTYPE, embeddings_to_numpy
from dask_clip.testing import encode_image, png_bomb


@pytest.fixture(scope="module")
def frame(photo_jpegs) -> pd.DataFrame:
    """37 rows: photos and bad inputs interleaved, a non-default, non-monotonic string index."""
    bad = [b"", b"not an image", None, photo_jpegs[0][:200]]
    images = [(photo_jpegs[i % len(photo_jpegs)] if i % 5 else bad[(i // 5) % len(bad)]) for i in range(37)]
    index = pd.Index([f"row-{(i * 7) % 37:02d}" for i in range(37)], name="key")
    return pd.DataFrame(
        {"image": pd.Series(images, index=index, dtype=BINARY_DTYPE), "caption": [f"c{i}" for i in range(37)]},
        index=index,
    )


def test_eager_output_contract(model_dir, frame):
    out = ImageEmbedder(model_dir=model_dir).embed_partition(frame)
    assert list(out.columns) == ["image", "caption", "embedding", "embedding_error"]
    pd.testing.assert_index_equal(out.index, frame.index)
    pd.testing.assert_frame_equal(out[["image", "caption"]], frame)
    assert out["embedding"].dtype == EMBEDDING_DTYPE
    failed = out["embedding"].isna().to_numpy()
    assert failed.tolist() == [i % 5 == 0 for i in range(37)]
    assert out["embedding_error"].notna().to_numpy().tolist() == failed.tolist()
    vectors = embeddings_to_numpy(out["embedding"])[~failed]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    # The same image gives the same embedding wherever it sits.
    np.testing.assert_allclose(vectors[0], vectors[4], atol=1e-6)  # rows 1 and 6


def test_unnormalized_and_removed_image(model_dir, frame):
    out = ImageEmbedder(model_dir=model_dir, normalize=False, remove_image_data=True).embed_partition(frame)
    assert "image" not in out.columns
    norms = np.linalg.norm(embeddings_to_numpy(out["embedding"].dropna()), axis=1)
    assert not np.allclose(norms, 1)


def test_bad_inputs_give_null_rows_with_reasons(model_dir, photos):
    bomb = png_bomb(20000, 20000)  # claims 400 megapixels in its header
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
    good = encode_image(photos[1])
    cases = {
        "empty": (b"", "empty image bytes"),
        "random": (np.random.default_rng(0).bytes(5000), "not a decodable image"),
        "text": (b"hello, world\n" * 20, "not a decodable image"),
        "svg": (svg, "not a decodable image"),
        "truncated": (good[: len(good) // 2], "truncated"),
        "null": (None, "missing image"),
        "bomb": (bomb, "image too large"),
    }
    frame = pd.DataFrame({"image": pd.Series([v for v, _ in cases.values()] + [good], dtype=BINARY_DTYPE)})
    out = ImageEmbedder(model_dir=model_dir).embed_partition(frame)
    errors = out["embedding_error"].tolist()
    for (name, (_, reason)), error in zip(cases.items(), errors):
        assert isinstance(error, str) and reason in error, (name, error)
    assert out["embedding"].isna().tolist() == [True] * len(cases) + [False]


def test_missing_paths_are_row_errors(model_dir, photo_jpegs, tmp_path):
    (tmp_path / "ok.jpg").write_bytes(photo_jpegs[0])
    frame = pd.DataFrame({"image": [str(tmp_path / "missing.jpg"), str(tmp_path / "ok.jpg"), None]})
    out = ImageEmbedder(model_dir=model_dir).embed_partition(frame)
    assert out["embedding_error"].iloc[0].startswith("file not found")
    assert pd.isna(out["embedding_error"].iloc[1]) and out["embedding"].iloc[1] is not None
    assert "missing" in out["embedding_error"].iloc[2]


def test_on_error_raise_names_the_row(model_dir, frame):
    with pytest.raises(ImageDecodeError, match="row 'row-00': empty image bytes"):
        ImageEmbedder(model_dir=model_dir, on_error="raise").embed_partition(frame)


def test_object_bytes_column_comes_out_as_arrow_binary(model_dir, photo_jpegs):
    frame = pd.DataFrame({"image": pd.Series(photo_jpegs[:2], dtype=object)})
    out = ImageEmbedder(model_dir=model_dir).embed_partition(frame)
    assert out["image"].dtype == BINARY_DTYPE
    assert out["image"].tolist() == photo_jpegs[:2]


def test_empty_partition_has_the_meta_dtypes(model_dir, frame):
    embedder = ImageEmbedder(model_dir=model_dir, image_kind="bytes")
    out = embedder.embed_partition(frame.iloc[:0])
    pd.testing.assert_series_equal(out.dtypes, embedder.output_meta(frame.iloc[:0]).dtypes)
    assert len(out) == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": "ViT-Nope-99", "pretrained": None}, ValueError, "unknown open_clip architecture"),
        ({"model": "ViT-B-32", "pretrained": "no-such-tag"}, ValueError, "laion2b_s34b_b79k"),
        ({"precision": "fp8"}, ValueError, "choose one of"),
        ({"on_error": "ignore"}, ValueError, "'null', 'raise'"),
        ({"image_column": "pixels"}, ValueError, "not in the columns"),
        ({"model_inference_batch_size": 0}, ValueError, "positive int"),
    ],
)
def test_bad_configuration_fails_on_the_client(model_dir, frame, kwargs, error, match):
    ddf = dd.from_pandas(frame, npartitions=2)
    base = {"model_dir": model_dir} if "model" not in kwargs else {}
    with pytest.raises(error, match=match):
        ImageEmbedder(**{**base, **kwargs})(ddf)


def test_model_dir_problems_fail_on_the_client(tmp_path, frame):
    from dask_clip.testing import write_model_dir

    ddf = dd.from_pandas(frame, npartitions=2)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        ImageEmbedder(model_dir=str(tmp_path / "nowhere"))(ddf)
    empty = write_model_dir(tmp_path / "no-weights", weights=None)
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        ImageEmbedder(model_dir=str(empty))(ddf)
    (tmp_path / "no-config").mkdir()
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        ImageEmbedder(model_dir=str(tmp_path / "no-config"))(ddf)


def test_embedder_is_small_and_picklable(model_dir):
    import pickle

    embedder = ImageEmbedder(model_dir=model_dir)
    assert pickle.loads(pickle.dumps(embedder)) == embedder
    assert len(pickle.dumps(embedder)) < 2000


@pytest.mark.parametrize("npartitions", [1, 3, 7])
def test_distributed_equals_eager_on_odd_partitionings(client, model_dir, frame, npartitions):
    """The central test: a real 2-process cluster gives the eager (reference-checked) answer."""
    expected = ImageEmbedder(model_dir=model_dir).embed_partition(frame)
    ddf = dd.from_pandas(frame, npartitions=npartitions, sort=False)
    lazy = ImageEmbedder(model_dir=model_dir)(ddf)
    assert lazy.dtypes["embedding"] == EMBEDDING_DTYPE
    got = lazy.compute()
    as_dask_sees_it = ddf.compute()  # from_pandas turns str indexes into string[pyarrow]
    pd.testing.assert_index_equal(got.index, as_dask_sees_it.index)
    assert got.index.tolist() == frame.index.tolist()
    pd.testing.assert_frame_equal(
        got.drop(columns="embedding"),
        expected.drop(columns="embedding").set_axis(as_dask_sees_it.index).astype(got.dtypes.drop("embedding")),
    )
    np.testing.assert_allclose(
        embeddings_to_numpy(got["embedding"]), embeddings_to_numpy(expected["embedding"]), atol=1e-5
    )


def test_parquet_round_trip_with_empty_partitions(client, model_dir, frame, tmp_path):
    ddf = dd.from_pandas(frame, npartitions=4, sort=False)
    ddf = ddf[ddf["caption"] != "c3"]  # filters leave a ragged, possibly empty partition
    ddf = dd.concat([ddf, ddf.partitions[0].head(0, compute=False)])
    ImageEmbedder(model_dir=model_dir)(ddf).to_parquet(tmp_path / "out")
    table = pq.read_table(tmp_path / "out")
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    assert table.schema.field("image").type == pa.binary()
    back = dd.read_parquet(tmp_path / "out", dtype_backend="pyarrow").compute()
    assert back["embedding"].dtype == EMBEDDING_DTYPE
    assert len(back) == len(frame) - 1
    assert pd.read_parquet(tmp_path / "out", dtype_backend="pyarrow")["embedding"].dtype == EMBEDDING_DTYPE


def test_object_bytes_ddf_needs_no_schema_to_write(client, model_dir, photo_jpegs, tmp_path):
    frame = pd.DataFrame({"image": pd.Series(photo_jpegs * 2, dtype=object), "n": range(10)})
    with dask.config.set({"dataframe.convert-string": False}):
        ddf = dd.from_pandas(frame, npartitions=3)
        ImageEmbedder(model_dir=model_dir)(ddf).to_parquet(tmp_path / "out")
    assert pq.read_table(tmp_path / "out").schema.field("image").type == pa.binary()
