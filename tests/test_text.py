"""The text tower: caption embeddings against open_clip's encode_text, caption errors, CLIP score."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from dask_clip import ImageEmbedder, ModelSpec, TextEmbedder, embeddings_to_numpy
from dask_clip.columns import EMBEDDING_DTYPE, ERROR_DTYPE, SCORE_DTYPE
from dask_clip.embed.text import EMPTY_CAPTION, MISSING_CAPTION, caption_errors, get_tokenizer
from dask_clip.embed.text_embedder import embed_texts
from dask_clip.models import get_model, load_counts
from dask_clip.testing import CAPTIONS, reference_embeddings


def open_clip_text(model_dir: str, captions: list[str]) -> np.ndarray:
    """open_clip's own text path: the folder's tokenizer, encode_text, L2-normalise."""
    import open_clip

    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    with torch.no_grad():
        return torch.nn.functional.normalize(model.eval().encode_text(tokenizer(captions)), dim=-1).numpy()


def test_text_embeddings_equal_open_clip_encode_text(text_model_dir, captioned_frame):
    out = ImageEmbedder(model_dir=text_model_dir, text_column="caption").embed_partition(captioned_frame)
    good = [i for i, c in enumerate(CAPTIONS) if c]
    got = embeddings_to_numpy(out["text_embedding"])
    np.testing.assert_allclose(got[good], open_clip_text(text_model_dir, [CAPTIONS[i] for i in good]), atol=1e-5)
    # Row 3 is longer than the tiny model's 16-token context: truncated as open_clip truncates.
    assert len(get_tokenizer(get_model(ModelSpec(model_dir=text_model_dir)))([CAPTIONS[3]])["text"][0]) == 16


def test_columns_types_and_caption_errors(text_model_dir, captioned_frame):
    embedder = ImageEmbedder(model_dir=text_model_dir, text_column="caption")
    out = embedder.embed_partition(captioned_frame)
    added = ["embedding", "embedding_error", "text_embedding", "text_embedding_error", "clip_score"]
    assert list(out.columns) == ["key", "image", "caption", *added]
    assert (out["text_embedding"].dtype, out["text_embedding_error"].dtype) == (EMBEDDING_DTYPE, ERROR_DTYPE)
    assert out["clip_score"].dtype == SCORE_DTYPE
    errors = out["text_embedding_error"].tolist()
    assert errors[4] == EMPTY_CAPTION and errors[6] == MISSING_CAPTION
    assert all(e is pd.NA for i, e in enumerate(errors) if i not in (4, 6))
    text = embeddings_to_numpy(out["text_embedding"])
    assert np.isnan(text[[4, 6]]).all() and not np.isnan(text[[0, 1, 2, 3, 5]]).any()
    np.testing.assert_allclose(np.linalg.norm(text[[0, 1, 2, 3, 5]], axis=1), 1.0, atol=1e-5)
    pd.testing.assert_series_equal(out.dtypes, embedder.output_meta(captioned_frame.iloc[:0]).dtypes)
    assert caption_errors([None, float("nan"), "  \n", 7, b"x", "ok"]) == [
        MISSING_CAPTION,
        MISSING_CAPTION,
        EMPTY_CAPTION,
        "caption is not text (int)",
        "caption is not text (bytes)",
        None,
    ]


def test_clip_score_is_the_cosine_of_the_rows_image_and_caption(text_model_dir, captioned_frame, photo_jpegs):
    out = ImageEmbedder(model_dir=text_model_dir, text_column="caption").embed_partition(captioned_frame)
    score = out["clip_score"].to_numpy(dtype=np.float64, na_value=np.nan)
    # Against open_clip's own image and text pipelines, not against our columns.
    image = reference_embeddings(text_model_dir, photo_jpegs)
    text = open_clip_text(text_model_dir, CAPTIONS[:4])
    np.testing.assert_allclose(score[:4], (image[:4] * text).sum(axis=1), atol=1e-4)
    assert np.isnan(score[4:]).all()  # empty caption, broken image, null image + null caption


def test_not_normalised_output_still_gives_the_cosine(text_model_dir, captioned_frame):
    unit = ImageEmbedder(model_dir=text_model_dir, text_column="caption").embed_partition(captioned_frame)
    raw = ImageEmbedder(model_dir=text_model_dir, text_column="caption", normalize=False).embed_partition(
        captioned_frame
    )
    assert not np.allclose(np.linalg.norm(embeddings_to_numpy(raw["text_embedding"])[:4], axis=1), 1.0)
    pd.testing.assert_series_equal(raw["clip_score"], unit["clip_score"], check_exact=False, atol=1e-6)


def test_clip_score_can_be_left_out_and_columns_renamed(text_model_dir, captioned_frame):
    out = ImageEmbedder(
        model_dir=text_model_dir,
        text_column="caption",
        text_output_column="caption_embedding",
        text_error_column="caption_error",
        clip_score_column=None,
    ).embed_partition(captioned_frame)
    assert list(out.columns)[-2:] == ["caption_embedding", "caption_error"]


def test_text_configuration_errors_on_the_client(text_model_dir, captioned_frame):
    ddf = dd.from_pandas(captioned_frame, npartitions=1)
    with pytest.raises(ValueError, match="text_column='txt' not in the columns"):
        ImageEmbedder(model_dir=text_model_dir, text_column="txt")(ddf)
    with pytest.raises(ValueError, match="output column 'caption' already exists"):
        ImageEmbedder(model_dir=text_model_dir, text_column="caption", clip_score_column="caption")(ddf)
    with pytest.raises(ValueError, match="captions need their own"):
        ImageEmbedder(model_dir=text_model_dir, image_column="image", text_column="image")(ddf)
    with pytest.raises(ValueError, match="text_column='txt' not in the columns"):
        TextEmbedder(model_dir=text_model_dir, text_column="txt")(ddf)


def test_a_text_tower_smaller_than_its_tokenizer_says_so(model_dir, captioned_frame):
    """The shared tiny test model has 64 text tokens; open_clip's tokenizer needs 49,408."""
    with pytest.raises(ValueError, match="vocabulary of 64 tokens.*cannot encode text"):
        ImageEmbedder(model_dir=model_dir, text_column="caption").embed_partition(captioned_frame)


def test_text_only_entry_points(text_model_dir, captioned_frame):
    frame = captioned_frame.drop(columns=["image"])
    out = TextEmbedder(model_dir=text_model_dir).embed_partition(frame)
    assert list(out.columns) == ["key", "caption", "text_embedding", "text_embedding_error"]
    both = ImageEmbedder(model_dir=text_model_dir, text_column="caption").embed_partition(captioned_frame)
    pd.testing.assert_series_equal(out["text_embedding"], both["text_embedding"], check_exact=False, atol=1e-6)
    pd.testing.assert_series_equal(out["text_embedding_error"], both["text_embedding_error"])
    queries = embed_texts(ModelSpec(model_dir=text_model_dir), CAPTIONS[:2])
    assert queries.dtype == np.float32 and queries.shape == (2, 32)
    np.testing.assert_allclose(queries, open_clip_text(text_model_dir, CAPTIONS[:2]), atol=1e-5)
    with pytest.raises(ValueError, match=r"texts cannot be embedded: \[\(1, 'empty caption'\)\]"):
        embed_texts(ModelSpec(model_dir=text_model_dir), ["fine", ""])
    empty = TextEmbedder(model_dir=text_model_dir).embed_partition(frame.iloc[:0])
    pd.testing.assert_series_equal(empty.dtypes, out.dtypes)


def test_both_towers_on_a_real_cluster_load_one_model_per_worker(client, text_model_dir, captioned_frame):
    frame = pd.concat([captioned_frame] * 4, ignore_index=True)
    images = ImageEmbedder(model_dir=text_model_dir, text_column="caption", model_inference_batch_size=3)
    texts = TextEmbedder(model_dir=text_model_dir, model_inference_batch_size=3)
    assert images.spec == texts.spec
    ddf = dd.from_pandas(frame, npartitions=5)
    lazy = images(ddf)
    only_text = texts(ddf.drop(columns=["image"]))
    assert lazy._meta["clip_score"].dtype == SCORE_DTYPE
    assert only_text._meta["text_embedding"].dtype == EMBEDDING_DTYPE
    got, got_text = client.compute([lazy, only_text], sync=True)
    pd.testing.assert_frame_equal(got, images.embed_partition(frame), check_exact=False, atol=1e-5)
    pd.testing.assert_frame_equal(got_text, texts.embed_partition(frame.drop(columns=["image"])), atol=1e-5)
    counts = client.run(lambda spec=images.spec: load_counts().get(spec, 0))
    assert sorted(counts.values()) == [1, 1], counts


def test_text_rows_keep_their_place_on_odd_partitionings(text_model_dir, captioned_frame):
    frame = pd.concat([captioned_frame] * 3, ignore_index=True)
    frame["caption"] = frame["caption"].astype(object)  # an object column of str and None
    embedder = ImageEmbedder(model_dir=text_model_dir, text_column="caption")
    eager = embedder.embed_partition(frame)
    import dask

    with dask.config.set({"dataframe.convert-string": False}):  # keep the object column as it is
        for n in (1, 4, 7):
            got = embedder(dd.from_pandas(frame, npartitions=n)).compute(scheduler="sync")
            pd.testing.assert_frame_equal(got, eager, check_exact=False, atol=1e-5)


@pytest.mark.cudf
def test_cudf_meta_of_the_text_columns(text_model_dir):
    cudf = pytest.importorskip("cudf")
    meta = cudf.DataFrame({"image": cudf.Series([], dtype="str"), "caption": cudf.Series([], dtype="str")})
    out = ImageEmbedder(model_dir=text_model_dir, text_column="caption", image_kind="bytes").output_meta(meta)
    assert out["text_embedding"].dtype == cudf.ListDtype("float32")
    assert str(out["clip_score"].dtype) == "float32" and str(out["text_embedding_error"].dtype) in ("str", "object")
    text_meta = TextEmbedder(model_dir=text_model_dir).output_meta(meta)
    assert text_meta["text_embedding"].dtype == cudf.ListDtype("float32")


def test_object_dtype_frames_from_pyarrow_types_are_unchanged(text_model_dir):
    """A caption column stored as Arrow large_string reads like any other."""
    frame = pd.DataFrame({"caption": pd.Series(["a", "b"], dtype=pd.ArrowDtype(pa.large_string()))})
    out = TextEmbedder(model_dir=text_model_dir).embed_partition(frame)
    assert out["text_embedding_error"].isna().all()
