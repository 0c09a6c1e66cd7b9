"""Parity on CPU: dask_clip vs open_clip's own pipeline, per input kind.

    python benchmarks/parity_cpu.py

Parity (docs/design.md) = ||e - e_ref|| / median ||e_ref_i - e_ref_j||. Measured for a tiny random
model and for the full ViT-B-32 architecture (random weights, 224 px), on scikit-image's
photos plus odd shapes (strips, 1x1, gray, RGBA, palette, CMYK, progressive, 20 MP, ...), for
bytes, paths, NumPy pixel arrays and flat Arrow list<uint8> pixels.
Writes benchmarks/results/parity-cpu-<date>.json.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pyarrow as pa
from PIL import Image
from skimage import data

from dask_clip import ImageEmbedder
from dask_clip.columns import embeddings_to_numpy
from dask_clip.testing import odd_images, parity, reference_embeddings, write_model_dir

RESULTS = Path(__file__).parent / "results"


def frames(blobs: list[bytes], folder: Path) -> dict[str, pd.DataFrame]:
    decoded = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs]
    paths = []
    for i, blob in enumerate(blobs):
        (folder / f"{i}.img").write_bytes(blob)
        paths.append(str(folder / f"{i}.img"))
    flat = pa.array([d.reshape(-1) for d in decoded], type=pa.list_(pa.uint8()))
    return {
        "bytes": pd.DataFrame({"image": blobs}),
        "path": pd.DataFrame({"image": paths}),
        "pixels (numpy arrays)": pd.DataFrame({"image": pd.Series(decoded, dtype=object)}),
        "pixels (Arrow list<uint8>)": pd.DataFrame(
            {
                "image": pd.arrays.ArrowExtensionArray(flat),
                "height": [d.shape[0] for d in decoded],
                "width": [d.shape[1] for d in decoded],
            }
        ),
    }


def main() -> None:
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field()]
    jpegs = {f"photo {i}": Image.fromarray(p) for i, p in enumerate(photos)}
    blobs_by_name = {}
    for name, img in jpegs.items():
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=90)
        blobs_by_name[name] = buffer.getvalue()
    blobs_by_name.update(odd_images(photos))
    names, blobs = list(blobs_by_name), list(blobs_by_name.values())
    result: dict = {"date": dt.date.today().isoformat(), "images": names, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = {
            "tiny (2-layer ViT, 64 px)": write_model_dir(tmp / "tiny"),
            "ViT-B-32 (random weights, 224 px)": write_model_dir(
                tmp / "b32", model_cfg=open_clip.get_model_config("ViT-B-32")
            ),
        }
        (tmp / "files").mkdir()
        inputs = frames(blobs, tmp / "files")
        for model_name, folder in models.items():
            ref = reference_embeddings(str(folder), blobs)
            per_kind = {}
            for kind, frame in inputs.items():
                out = ImageEmbedder(model_dir=str(folder)).embed_partition(frame)
                rel = parity(embeddings_to_numpy(out["embedding"]), ref)
                per_kind[kind] = {
                    "max": float(rel.max()),
                    "median": float(np.median(rel)),
                    "worst_image": names[int(rel.argmax())],
                }
                print(
                    f"{model_name:36s} {kind:28s} max {rel.max():.5f} median {np.median(rel):.5f} ({names[int(rel.argmax())]})"
                )
            result["models"][model_name] = per_kind
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"parity-cpu-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(path)


if __name__ == "__main__":
    main()
