"""Reference equivalence: dask_clip's embeddings equal open_clip's own pipeline.

Reference (docs/design.md): PIL decode -> convert("RGB") -> the model's own preprocess transform
-> encode_image -> L2-normalise. Parity = ||e - e_ref|| / median ||e_i - e_j||, <= 0.005 on CPU.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from dask_clip import ImageEmbedder
from dask_clip.columns import embeddings_to_numpy
from dask_clip.testing import odd_images, parity, reference_embeddings, write_model_dir

PARITY_LIMIT = 0.005


@pytest.fixture(scope="module")
def all_images(photos, photo_jpegs) -> dict[str, bytes]:
    return {**{f"photo {i}": b for i, b in enumerate(photo_jpegs)}, **odd_images(photos)}


def test_bytes_parity_on_photos_and_odd_shapes(model_dir, all_images):
    names, blobs = list(all_images), list(all_images.values())
    out = ImageEmbedder(model_dir=model_dir).embed_partition(pd.DataFrame({"image": blobs}))
    assert out["embedding_error"].isna().all(), out["embedding_error"].tolist()
    rel = parity(embeddings_to_numpy(out["embedding"]), reference_embeddings(model_dir, blobs))
    worst = dict(zip(names, rel.round(5)))
    assert rel.max() <= PARITY_LIMIT, worst


def test_path_and_url_parity(model_dir, photo_jpegs, tmp_path):
    paths = []
    for i, blob in enumerate(photo_jpegs):
        (tmp_path / f"{i}.jpg").write_bytes(blob)
        paths.append(str(tmp_path / f"{i}.jpg") if i % 2 else f"file://{tmp_path}/{i}.jpg")
    out = ImageEmbedder(model_dir=model_dir).embed_partition(pd.DataFrame({"image": paths}))
    assert (
        parity(embeddings_to_numpy(out["embedding"]), reference_embeddings(model_dir, photo_jpegs)).max()
        <= PARITY_LIMIT
    )


def test_pixel_parity_numpy_and_flat_arrow(model_dir, photos, photo_jpegs):
    decoded = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in photo_jpegs]
    ref = reference_embeddings(model_dir, photo_jpegs)
    as_objects = pd.DataFrame({"image": pd.Series(decoded, dtype=object)})
    flat = pd.DataFrame(
        {
            "image": pd.Series(
                pd.arrays.ArrowExtensionArray(pa.array([d.reshape(-1) for d in decoded], type=pa.list_(pa.uint8())))
            ),
            "height": [d.shape[0] for d in decoded],
            "width": [d.shape[1] for d in decoded],
        }
    )
    embedder = ImageEmbedder(model_dir=model_dir)
    for frame in (as_objects, flat):
        out = embedder.embed_partition(frame)
        assert parity(embeddings_to_numpy(out["embedding"]), ref).max() <= PARITY_LIMIT


@pytest.mark.parametrize("resize_mode", ["longest", "squash"])
def test_other_resize_modes_follow_the_model_config(tmp_path, photo_jpegs, resize_mode):
    folder = str(write_model_dir(tmp_path, preprocess_cfg={"resize_mode": resize_mode, "interpolation": "bilinear"}))
    out = ImageEmbedder(model_dir=folder).embed_partition(pd.DataFrame({"image": photo_jpegs}))
    assert (
        parity(embeddings_to_numpy(out["embedding"]), reference_embeddings(folder, photo_jpegs)).max() <= PARITY_LIMIT
    )
