"""Parity per model family, full-size architectures with seeded random weights, against each
family's own reference pipeline, for images and captions.

    python benchmarks/parity_families.py [--images 8] [--families siglip eva02 mobileclip hf-siglip]

- open_clip folders (``ViT-B-16-SigLIP``, ``EVA02-B-16``, ``MobileCLIP-S2``; ``siglip2``:
  ``ViT-B-16-SigLIP2``, 375 M parameters, on request): open_clip's ``create_model_and_transforms``
  + ``get_tokenizer`` on ``local-dir:``;
- a transformers ``SiglipModel`` folder of ``google/siglip-base-patch16-224``'s shapes
  (``hf-siglip``): ``AutoProcessor`` (``SiglipProcessor``, ``padding="max_length"``) +
  ``get_image_features``/``get_text_features``.

The SigLIP tokenizers are the tiny ones of :mod:`dask_clip.testing.families` (the published ones
cannot be downloaded here): the comparison is of the pipeline, which reads whatever tokenizer the
folder holds. Images: web-size JPEG crops of scikit-image's photos (500x375 to 800x600). Image and
caption parity: ``||e - e_ref|| / median ||e_ref_i - e_ref_j||`` (docs/design.md), goal <= 0.005;
also the largest absolute difference of the unit caption embeddings. Writes
benchmarks/results/parity-families-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from PIL import Image

from dask_clip import ImageEmbedder, embeddings_to_numpy
from dask_clip.models.hf import _features
from dask_clip.testing import encode_image, parity, photo_crops
from dask_clip.testing.families import (
    FULL_SIZE,
    TOKENIZER_SENTENCES,
    write_open_clip_architecture_dir,
    write_transformers_siglip_dir,
)

RESULTS = Path(__file__).parent / "results"


def open_clip_reference(folder: Path, images: list[bytes], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    unit = torch.nn.functional.normalize
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
        return unit(model.eval().encode_image(pixels), dim=-1).numpy(), unit(
            model.encode_text(tokenizer(texts)), dim=-1
        ).numpy()


def transformers_reference(folder: Path, images: list[bytes], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from transformers import AutoProcessor, SiglipModel

    processor, model = AutoProcessor.from_pretrained(folder), SiglipModel.from_pretrained(folder).eval()
    length = model.config.text_config.max_position_embeddings
    unit = torch.nn.functional.normalize
    with torch.no_grad():
        pixels = processor(images=[Image.open(io.BytesIO(b)).convert("RGB") for b in images], return_tensors="pt")
        tokens = processor(text=texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        image = unit(_features(model.get_image_features(**pixels)), dim=-1)
        text = unit(_features(model.get_text_features(**tokens)), dim=-1)
    return image.numpy(), text.numpy()


def measure(name: str, folder: Path, images: list[bytes], texts: list[str]) -> dict[str, Any]:
    frame = pd.DataFrame(
        {
            "image": pd.Series(images, dtype=pd.ArrowDtype(pa.binary())),
            "caption": pd.Series(texts, dtype=pd.ArrowDtype(pa.string())),
        }
    )
    started = time.perf_counter()
    out = ImageEmbedder(model_dir=str(folder), text_column="caption", device="cpu").embed_partition(frame)
    ours = time.perf_counter() - started
    reference = transformers_reference if name == "hf-siglip" else open_clip_reference
    ref_image, ref_text = reference(folder, images, texts)
    image, text = embeddings_to_numpy(out["embedding"]), embeddings_to_numpy(out["text_embedding"])
    image_parity, text_parity = parity(image, ref_image), parity(text, ref_text)
    return {
        "model": FULL_SIZE[name][0] if name in FULL_SIZE else "SiglipModel, google/siglip-base-patch16-224 shapes",
        "embed_dim": int(image.shape[1]),
        "image_parity_max": round(float(image_parity.max()), 5),
        "image_parity_median": round(float(np.median(image_parity)), 5),
        "caption_parity_max": round(float(text_parity.max()), 6),
        "caption_max_abs_diff": float(np.abs(text - ref_text).max()),
        "dask_clip_seconds": round(ours, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--families", nargs="+", default=["siglip", "eva02", "mobileclip", "hf-siglip"])
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    images = [encode_image(crop, quality=85) for crop in photo_crops(args.images, seed=5)]
    texts = [TOKENIZER_SENTENCES[i % len(TOKENIZER_SENTENCES)] for i in range(args.images)]
    result: dict[str, Any] = {
        "benchmark": "parity per model family against its own reference pipeline (random weights)",
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, torch threads {torch.get_num_threads()}",
        "images": args.images,
        "families": {},
    }
    for name in args.families:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / name
            if name == "hf-siglip":
                write_transformers_siglip_dir(folder, config="base", tokenizer="gemma")
            else:
                write_open_clip_architecture_dir(folder, *FULL_SIZE[name])
            result["families"][name] = measure(name, folder, images, texts)
            print(name, result["families"][name], flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"parity-families-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
