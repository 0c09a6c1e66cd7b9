"""Reference equivalence: dask_clip's embeddings equal open_clip's own pipeline.

Reference (DESIGN.md): PIL decode -> convert("RGB") -> the model's own preprocess transform
-> encode_image -> L2-normalise. Parity = ||e - e_ref|| / median ||e_i - e_j||, <= 0.005 on CPU.
"""

from __future__ import annotations

import io

import numpy as np
import open_clip
import pandas as pd
import pyarrow as pa
import pytest
import torch
from PIL import Image

from dask_clip import ImageEmbedder
from dask_clip.columns import embeddings_to_numpy
from dask_clip.testing import encode_image as encode
from dask_clip.testing import write_model_dir

PARITY_LIMIT = 0.005


def reference(model_dir: str, images: list[bytes]) -> np.ndarray:
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model.eval()
    with torch.no_grad():
        batch = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
        return torch.nn.functional.normalize(model.encode_image(batch), dim=-1).numpy()


def parity(embeddings: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-image distance to the reference over the median distance between different images."""
    pairs = [np.linalg.norm(ref[i] - ref[j]) for i in range(len(ref)) for j in range(i + 1, len(ref))]
    return np.linalg.norm(embeddings - ref, axis=1) / np.median(pairs)


def odd_images(photos: list[np.ndarray]) -> dict[str, bytes]:
    """The shapes and modes that trip decoders up, made from real photos."""
    astronaut, coffee, chelsea = photos[0], photos[1], photos[2]
    big = np.asarray(Image.fromarray(coffee).resize((5472, 3648), Image.BILINEAR))  # 20 MP
    cmyk = io.BytesIO()
    Image.fromarray(chelsea).convert("CMYK").save(cmyk, format="JPEG", quality=90)
    return {
        "tall strip 30x600": encode(astronaut[:, 200:230].repeat(2, axis=0)[:600], "PNG"),
        "wide strip 700x40": encode(np.ascontiguousarray(coffee[100:140, :]).repeat(2, axis=1)[:, :700], "PNG"),
        "1x1": encode(astronaut[:1, :1], "PNG"),
        "grayscale": encode(np.asarray(Image.fromarray(chelsea).convert("L")), "JPEG", quality=90),
        "RGBA": encode(np.dstack([coffee, np.full(coffee.shape[:2], 128, np.uint8)]), "PNG"),
        "palette": encode(np.asarray(Image.fromarray(astronaut).convert("P", palette=Image.ADAPTIVE)), "PNG"),
        "CMYK JPEG": cmyk.getvalue(),
        "progressive JPEG": encode(chelsea, "JPEG", quality=85, progressive=True),
        "WebP": encode(coffee, "WEBP", quality=90),
        "GIF": encode(astronaut, "GIF"),
        "BMP": encode(chelsea, "BMP"),
        "TIFF": encode(coffee, "TIFF"),
        "20 megapixel JPEG": encode(big, "JPEG", quality=85),
    }


@pytest.fixture(scope="module")
def all_images(photos, photo_jpegs) -> dict[str, bytes]:
    return {**{f"photo {i}": b for i, b in enumerate(photo_jpegs)}, **odd_images(photos)}


def test_bytes_parity_on_photos_and_odd_shapes(model_dir, all_images):
    names, blobs = list(all_images), list(all_images.values())
    out = ImageEmbedder(model_dir=model_dir).embed_partition(pd.DataFrame({"image": blobs}))
    assert out["embedding_error"].isna().all(), out["embedding_error"].tolist()
    rel = parity(embeddings_to_numpy(out["embedding"]), reference(model_dir, blobs))
    worst = dict(zip(names, rel.round(5)))
    assert rel.max() <= PARITY_LIMIT, worst


def test_path_and_url_parity(model_dir, photo_jpegs, tmp_path):
    paths = []
    for i, blob in enumerate(photo_jpegs):
        (tmp_path / f"{i}.jpg").write_bytes(blob)
        paths.append(str(tmp_path / f"{i}.jpg") if i % 2 else f"file://{tmp_path}/{i}.jpg")
    out = ImageEmbedder(model_dir=model_dir).embed_partition(pd.DataFrame({"image": paths}))
    assert parity(embeddings_to_numpy(out["embedding"]), reference(model_dir, photo_jpegs)).max() <= PARITY_LIMIT


def test_pixel_parity_numpy_and_flat_arrow(model_dir, photos, photo_jpegs):
    decoded = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in photo_jpegs]
    ref = reference(model_dir, photo_jpegs)
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
    assert parity(embeddings_to_numpy(out["embedding"]), reference(folder, photo_jpegs)).max() <= PARITY_LIMIT
