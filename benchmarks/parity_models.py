"""Parity per model kind: open_clip local-dir folders against open_clip's own pipeline, and
transformers CLIP folders (NeMo Curator's model_dir) against transformers' own pipeline, for
images and for captions.

    python benchmarks/parity_models.py [--large]

Images: web-size JPEG crops of scikit-image's photos. Image parity (docs/design.md) is
``||e - e_ref|| / median ||e_ref_i - e_ref_j||``; text parity is the largest absolute difference
of the unit text embeddings (the goal is 1e-5 in fp32). Models: the ViT-B-32 architecture with
random weights in both layouts (``--large``: also ViT-L-14 in NeMo's layout). For transformers
folders, images are split by whether transformers' centre-crop offset (floored) and
dask_clip's (rounded half to even, as torchvision and open_clip) cut the same pixels.
Writes benchmarks/results/parity-models-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pyarrow as pa
import torch
from PIL import Image

from dask_clip import ImageEmbedder, embeddings_to_numpy
from dask_clip.models.hf import _features
from dask_clip.testing import (
    encode_image,
    parity,
    photo_crops,
    reference_embeddings,
    write_model_dir,
    write_transformers_model_dir,
)

RESULTS = Path(__file__).parent / "results"
WORDS = [
    "a",
    "photo",
    "of",
    "an",
    "astronaut",
    "holding",
    "a",
    "cup",
    "of",
    "coffee",
    "next",
    "to",
    "a",
    "cat",
    "on",
    "a",
    "rocket",
    "under",
    "the",
    "stars",
    "at",
    "night",
]


def captions(n: int, seed: int = 0) -> list[str]:
    """n captions of 2 to 120 words (the long ones run past CLIP's 77-token context)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(2, 121 if i % 5 == 0 else 25)))) for i in range(n)]


def ours(folder: str, blobs: list[bytes], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.DataFrame({"image": pd.Series(blobs, dtype=pd.ArrowDtype(pa.binary())), "caption": texts})
    out = ImageEmbedder(model_dir=folder, text_column="caption", device="cpu").embed_partition(frame)
    return embeddings_to_numpy(out["embedding"]), embeddings_to_numpy(out["text_embedding"])


def open_clip_reference(folder: str, blobs: list[bytes], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    image = reference_embeddings(folder, blobs)
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    with torch.no_grad():
        text = torch.nn.functional.normalize(model.eval().encode_text(tokenizer(texts)), dim=-1).numpy()
    return image, text


def transformers_reference(folder: str, blobs: list[bytes], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """transformers' pipeline as NeMo Curator runs it: CLIPProcessor, get_*_features, normalise."""
    from transformers import CLIPModel, CLIPProcessor

    processor = CLIPProcessor.from_pretrained(folder)
    model = CLIPModel.from_pretrained(folder).eval()
    unit = torch.nn.functional.normalize
    images, text = [], []
    with torch.no_grad():
        for start in range(0, len(blobs), 16):
            batch = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs[start : start + 16]]
            pixels = processor(images=batch, return_tensors="pt")["pixel_values"]
            images.append(unit(_features(model.get_image_features(pixel_values=pixels)), dim=-1))
        for start in range(0, len(texts), 32):
            tokens = processor(text=texts[start : start + 32], return_tensors="pt", padding=True, truncation=True)
            text.append(unit(_features(model.get_text_features(**tokens)), dim=-1))
    return torch.cat(images).numpy(), torch.cat(text).numpy()


def crop_offsets_agree(height: int, width: int, size: int = 224) -> bool:
    short, long = min(height, width), max(height, width)
    extra = int(size * long / short) - size
    return extra // 2 == round(extra / 2)


def summary(p: np.ndarray) -> dict:
    return {"n": len(p), "median": float(np.median(p)), "max": float(p.max())} if len(p) else {"n": 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--large", action="store_true", help="also ViT-L-14 in NeMo's layout (slow on CPU)")
    args = parser.parse_args()
    crops = photo_crops(args.images, seed=3)
    blobs = [encode_image(c, quality=90) for c in crops]
    texts = captions(args.images)
    agree = np.array([crop_offsets_agree(*c.shape[:2]) for c in crops])
    result: dict = {
        "date": dt.date.today().isoformat(),
        "machine": platform.platform(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "images": len(blobs),
        "captions": len(texts),
        "models": {},
    }
    try:
        import transformers

        result["transformers"] = transformers.__version__
    except ImportError:
        result["transformers"] = None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kinds = {
            "open_clip local-dir, ViT-B-32": (
                str(write_model_dir(root / "oc", model_cfg=open_clip.get_model_config("ViT-B-32"))),
                open_clip_reference,
            ),
            "transformers folder, ViT-B-32": (
                str(write_transformers_model_dir(root / "hf", config="ViT-B-32")),
                transformers_reference,
            ),
        }
        if args.large:
            nemo = write_transformers_model_dir(root / "nemo", config="ViT-L-14", nemo_layout=True)
            kinds["NeMo Curator model_dir, ViT-L-14"] = (str(nemo), transformers_reference)
        for name, (folder, reference) in kinds.items():
            got_image, got_text = ours(folder, blobs, texts)
            ref_folder = folder if "NeMo" not in name else f"{folder}/openai/clip-vit-large-patch14"
            ref_image, ref_text = reference(ref_folder, blobs, texts)
            p = parity(got_image, ref_image)
            entry = {"image_parity": summary(p), "text_max_abs_diff": float(np.abs(got_text - ref_text).max())}
            if reference is transformers_reference:
                entry["image_parity_crop_offsets_agree"] = summary(p[agree])
                entry["image_parity_crop_offsets_differ"] = summary(p[~agree])
            result["models"][name] = entry
            print(name, json.dumps(entry))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"parity-models-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
