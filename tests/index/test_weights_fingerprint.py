"""Weights replaced in a model folder (issue 21, item 6). Before: the index recorded only the
folder's path, and `search --image` after the swap returned nonsense (top similarity 1.000 ->
-0.020) without a word; a resumed embed mixed both weights into one output; dedup compared
vectors of two spaces. Now the weights fingerprint is recorded with the embeddings (the output
manifest, the index manifest) and checked when new embeddings meet them."""

from __future__ import annotations

import shutil

import dask
import pytest
from conftest import TEXT_MODEL_CFG

from dask_clip import ImageEmbedder
from dask_clip.dedup import dedup_parquet
from dask_clip.embed.jobs import embed_parquet
from dask_clip.index import build, load
from dask_clip.io.file_metadata import read_file_metadata
from dask_clip.io.writer import EMBEDDING_METADATA
from dask_clip.models.spec import ModelSpec
from dask_clip.models.weights_id import WeightsChangedError, weights_fingerprint
from dask_clip.testing import encode_image, photo_crops, write_model_dir


@pytest.fixture
def setup(tmp_path):
    model = tmp_path / "model"
    write_model_dir(model, model_cfg=TEXT_MODEL_CFG, seed=3)
    images = tmp_path / "images"
    images.mkdir()
    jpegs = [encode_image(c) for c in photo_crops(12, seed=4)]
    for i, data in enumerate(jpegs):
        (images / f"{i:02d}.jpg").write_bytes(data)
    return model, images, jpegs


def embed(images, out, model, **kwargs):
    with dask.config.set(scheduler="sync"):
        return embed_parquet(images, out, ImageEmbedder(model_dir=str(model)), partition_size=6, **kwargs)


def swap_weights(model) -> None:
    """Other weights of the same architecture, written in place (same file names)."""
    write_model_dir(model, model_cfg=TEXT_MODEL_CFG, seed=4)


def test_fingerprint_follows_the_weights_not_the_path(setup, tmp_path):
    model, _, _ = setup
    spec = ModelSpec(model_dir=str(model))
    before = weights_fingerprint(spec)
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    assert weights_fingerprint(ModelSpec(model_dir=str(copy))) == before  # same weights elsewhere
    swap_weights(model)
    assert weights_fingerprint(spec) != before
    assert weights_fingerprint(ModelSpec("ViT-B-32", pretrained=None)) is None  # named, not a folder


def test_search_refuses_queries_from_swapped_weights(setup, tmp_path):
    model, images, jpegs = setup
    embed(images, tmp_path / "emb", model)
    fingerprint = weights_fingerprint(ModelSpec(model_dir=str(model)))
    for part in sorted((tmp_path / "emb").glob("part-*.parquet")):  # each file says it too
        recorded = read_file_metadata(part)[EMBEDDING_METADATA]
        assert recorded["weights"] == fingerprint and recorded["model"]["model_dir"] == str(model)
    with dask.config.set(scheduler="sync"):
        build(str(tmp_path / "emb"), tmp_path / "index")
    index = load(tmp_path / "index")
    assert index.manifest["weights"] == weights_fingerprint(ModelSpec(model_dir=str(model)))
    assert index.search_image(jpegs[3], k=1)["similarity"].iloc[0] > 0.999
    swap_weights(model)
    with pytest.raises(WeightsChangedError, match="made with other weights than model_dir"):
        index.search_image(jpegs[3], k=1)
    with pytest.raises(WeightsChangedError):
        index.search_text("a photo", k=1)
    assert len(index.search_ids([int(index.table.column("id")[0].as_py())], k=2)) == 2  # stored vectors only: fine


def test_resume_after_a_weights_swap_is_another_job(setup, tmp_path):
    model, images, _ = setup
    embed(images, tmp_path / "emb", model)
    (tmp_path / "emb" / "part-00001.parquet").unlink()  # as if the run had been killed
    swap_weights(model)
    with pytest.raises(ValueError, match=r"holds the output of a different job \(weights: 'sha256:"):
        embed(images, tmp_path / "emb", model)


def test_dedup_refuses_inputs_of_two_weights(setup, tmp_path):
    model, images, _ = setup
    embed(images, tmp_path / "a", model)
    swap_weights(model)
    embed(images, tmp_path / "b", model)
    with pytest.raises(ValueError, match="embedded by different models or weights"):
        dedup_parquet([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "out"), eps=0.05)
    assert not (tmp_path / "out").exists()
