"""Model families as a registry: the shipped ones in priority order, and a new family added as one
module, detected, loaded and run through the embedder with nothing else changed."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dask_clip import ImageEmbedder, ModelSpec
from dask_clip.columns import BINARY_DTYPE, embeddings_to_numpy
from dask_clip.models import families as registry
from dask_clip.models.cache import get_model
from dask_clip.models.families import detect_model_dir, families, get_family
from dask_clip.registry import ModuleRegistry

TOY_FAMILY = textwrap.dedent(
    '''
    """A toy family: a folder with toy.json; the model projects the mean colour to D values."""
    from dask_clip.models.families.base import ModelDir, ModelFamily, read_json
    from dask_clip.image.preprocess import PreprocessConfig


    def detect(folder):
        if not (folder / "toy.json").is_file():
            return None
        return ModelDir("toy", folder, (folder / "toy.json",), "toy folder")


    def create(spec, found):
        import torch

        cfg = read_json(found.folder / "toy.json")

        class Toy(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = torch.nn.Linear(3, cfg["dim"])
                with torch.no_grad():
                    self.proj.weight.copy_(torch.tensor(cfg["weight"]))
                    self.proj.bias.zero_()

            def encode_image(self, pixels):
                return self.proj(pixels.mean(dim=(2, 3)))

        return Toy()


    FAMILY = ModelFamily(
        name="toy",
        priority=50,
        layout_hint="a toy folder (toy.json)",
        detect=detect,
        dir_embed_dim=lambda found: read_json(found.folder / "toy.json")["dim"],
        describe=lambda found: {"preprocess": {"size": [32, 32]}, "loads_with": "toy"},
        create=create,
        model_embed_dim=lambda model: None,  # found by running one image through it
        preprocess=lambda model: PreprocessConfig(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        tokenizer=lambda model: None,
    )
    '''
)


def test_shipped_families_in_priority_order_and_unknown_names_listed():
    assert [f.name for f in families()] == ["open_clip", "transformers_siglip", "transformers"]
    assert get_family("transformers").needs == ("transformers", "dask-clip[hf]")
    with pytest.raises(ValueError, match=r"no model family 'onnx'; the families are \['open_clip', 'transformers', "):
        get_family("onnx")


def test_a_folder_no_family_knows_lists_every_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"open_clip's local-dir layout .*transformers CLIP folder.*NeMo"):
        detect_model_dir(tmp_path)


def test_a_new_family_is_one_module(tmp_path, monkeypatch, photos):
    """Drop the module into the package's path: detection, loading, the embed width and the
    embedder pick it up (nothing else in dask_clip names it)."""
    package = tmp_path / "extra"
    package.mkdir()
    (package / "toy.py").write_text(TOY_FAMILY)
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(package)])
    monkeypatch.setattr(registry, "_FAMILIES", ModuleRegistry(registry.__name__, "FAMILY", registry.ModelFamily))
    weight = [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, -1.0], [1.0, 1.0, 1.0]]
    folder = tmp_path / "toy-model"
    folder.mkdir()
    (folder / "toy.json").write_text(json.dumps({"dim": 4, "weight": weight}))

    assert [f.name for f in families()] == ["open_clip", "transformers_siglip", "transformers", "toy"]
    found = detect_model_dir(folder)
    assert (found.kind, found.layout, found.embed_dim()) == ("toy", "toy folder", 4)
    spec = ModelSpec(model_dir=str(folder), device="cpu")
    loaded = get_model(spec)
    assert (loaded.kind, loaded.embed_dim, loaded.preprocess.size) == ("toy", 4, (32, 32))

    frame = pd.DataFrame({"image": pd.Series([_png(p) for p in photos[:3]], dtype=BINARY_DTYPE)})
    out = ImageEmbedder(model_dir=str(folder), device="cpu").embed_partition(frame)
    assert out["embedding_error"].isna().all()
    got = embeddings_to_numpy(out["embedding"])
    # reference: the mean colour of the 32 x 32 centre crop (PIL), normalised, through the weight
    reference = []
    for photo in photos[:3]:
        image = Image.fromarray(photo)
        scale = 32 / min(image.size)
        resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        left, top = (resized.width - 32) // 2, (resized.height - 32) // 2
        crop = np.asarray(resized.crop((left, top, left + 32, top + 32)), dtype=np.float32) / 255
        mean = (crop.reshape(-1, 3).mean(axis=0) - 0.5) / 0.25
        vector = np.asarray(weight, dtype=np.float32) @ mean
        reference.append(vector / np.linalg.norm(vector))
    np.testing.assert_allclose(got, np.stack(reference), atol=0.02)
    assert torch.allclose(torch.from_numpy(np.linalg.norm(got, axis=1)), torch.ones(3), atol=1e-5)


def _png(pixels: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
