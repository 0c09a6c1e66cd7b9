"""transformers CLIP folders (NeMo Curator's model_dir) against transformers' own pipeline, and
hf-hub: ids through open_clip."""

from __future__ import annotations

import io

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from PIL import Image

from dask_clip import ImageEmbedder, ModelLoadError, ModelSpec, TextEmbedder, embeddings_to_numpy
from dask_clip.models import get_model
from dask_clip.models.hf import _features
from dask_clip.models.model_dirs import NEMO_CLIP_SUBDIR
from dask_clip.testing import encode_image, parity, photo_crops

CROPS = photo_crops(16, seed=7)
SIZE = 64  # the tiny transformers model's input


def transformers_reference(folder: str, images: list[bytes], captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """transformers' own pipeline, as NeMo Curator's CLIPImageEmbeddings runs it: CLIPProcessor,
    get_image_features / get_text_features (either return type), L2-normalise."""
    from transformers import CLIPModel, CLIPProcessor

    processor = CLIPProcessor.from_pretrained(folder)
    model = CLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        pixels = processor(images=[Image.open(io.BytesIO(b)).convert("RGB") for b in images], return_tensors="pt")
        image = _features(model.get_image_features(pixel_values=pixels["pixel_values"]))
        tokens = processor(text=captions, return_tensors="pt", padding=True, truncation=True)
        text = _features(model.get_text_features(**tokens))
    unit = torch.nn.functional.normalize
    return unit(image, dim=-1).numpy(), unit(text, dim=-1).numpy()


def crop_offsets_agree(height: int, width: int, size: int = SIZE) -> bool:
    """Whether transformers' centre crop (offset floored) and torchvision's (offset rounded half
    to even) cut the same pixels after the shortest side is resized to ``size``."""
    short, long = min(height, width), max(height, width)
    extra = int(size * long / short) - size
    return extra // 2 == round(extra / 2)


@pytest.fixture(scope="module")
def hf_run(nemo_model_dir):
    images = [encode_image(c, quality=90) for c in CROPS]
    captions = [f"photo {i}: a crop of a picture" for i in range(len(images))]
    frame = pd.DataFrame({"image": pd.Series(images, dtype=pd.ArrowDtype(pa.binary())), "caption": captions})
    out = ImageEmbedder(model_dir=nemo_model_dir, text_column="caption").embed_partition(frame)
    ref_image, ref_text = transformers_reference(f"{nemo_model_dir}/{NEMO_CLIP_SUBDIR}", images, captions)
    agree = np.array([crop_offsets_agree(*c.shape[:2]) for c in CROPS])
    return out, ref_image, ref_text, agree


def test_image_parity_with_transformers_pipeline(hf_run):
    out, ref_image, _, agree = hf_run
    got = embeddings_to_numpy(out["embedding"])
    assert agree.sum() >= 8, "the crops must exercise the common case"
    assert parity(got, ref_image)[agree].max() <= 0.005


def test_image_parity_with_transformers_pipeline_where_crop_offsets_differ(hf_run):
    """transformers floors the centre-crop offset where torchvision rounds it half to even."""
    out, ref_image, _, agree = hf_run
    got = embeddings_to_numpy(out["embedding"])
    assert (~agree).sum() >= 2
    assert parity(got, ref_image)[~agree].max() <= 0.005


def test_text_parity_with_transformers_get_text_features(hf_run):
    out, _, ref_text, _ = hf_run
    np.testing.assert_allclose(embeddings_to_numpy(out["text_embedding"]), ref_text, atol=1e-5)


def test_long_captions_are_truncated_to_the_models_context_as_transformers_does(nemo_model_dir):
    folder = f"{nemo_model_dir}/{NEMO_CLIP_SUBDIR}"
    captions = [" ".join(["word"] * 200), "short"]  # 200 words: far beyond 77 tokens
    got = TextEmbedder(model_dir=nemo_model_dir).embed_partition(pd.DataFrame({"caption": captions}))
    from transformers import CLIPModel, CLIPProcessor

    processor, model = CLIPProcessor.from_pretrained(folder), CLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        tokens = processor(text=captions, return_tensors="pt", padding=True, truncation=True, max_length=77)
        ref = torch.nn.functional.normalize(_features(model.get_text_features(**tokens)), dim=-1).numpy()
    np.testing.assert_allclose(embeddings_to_numpy(got["text_embedding"]), ref, atol=1e-5)


def test_features_of_both_transformers_return_types(hf_model_dir):
    """transformers 4 returns the tensor, 5 a BaseModelOutputWithPooling (NeMo Curator PR #1724)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    x = torch.randn(3, 8)
    assert _features(x) is x
    hidden = torch.randn(3, 5, 16)
    assert _features(BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=x)) is x
    with pytest.raises(TypeError, match="unexpected output"):
        _features(BaseModelOutputWithPooling(last_hidden_state=hidden))
    loaded = get_model(ModelSpec(model_dir=hf_model_dir, device="cpu"))
    with torch.no_grad():
        assert loaded.model.encode_image(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 32)


def test_transformers_folder_on_a_real_cluster_with_meta(client, hf_model_dir, captioned_frame):
    from dask_clip.models import load_counts

    embedder = ImageEmbedder(model_dir=hf_model_dir, text_column="caption")
    lazy = embedder(dd.from_pandas(captioned_frame, npartitions=3))
    pd.testing.assert_series_equal(lazy._meta.dtypes, embedder.embed_partition(captioned_frame.iloc[:0]).dtypes)
    out = client.compute(lazy).result()
    pd.testing.assert_frame_equal(out, embedder.embed_partition(captioned_frame), check_exact=False, atol=1e-5)
    counts = client.run(lambda spec=embedder.spec: load_counts().get(spec, 0))
    assert set(counts.values()) <= {0, 1} and sum(counts.values()) >= 1  # both towers, one load per worker


# -- hf-hub: ids -----------------------------------------------------------------------------------


def test_hf_hub_ids_pass_validation_and_malformed_ones_do_not():
    ModelSpec(model="hf-hub:laion/CLIP-ViT-L-14-laion2B-s32B-b82K").validate()
    with pytest.raises(ValueError, match="expected hf-hub:ORG/NAME"):
        ModelSpec(model="hf-hub:not a repo").validate()
    with pytest.raises(ValueError, match="pretrained=None .*needs an architecture name"):
        ModelSpec(model="hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", pretrained=None).validate()
    assert not ModelSpec(model="hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K").random_weights


def test_hf_hub_offline_says_how_to_fetch_the_folder(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    spec = ModelSpec(model="hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", device="cpu")
    with pytest.raises(
        ModelLoadError,
        match=r"huggingface-cli download laion/CLIP-ViT-B-32-laion2B-s34B-b79K --local-dir DIR.*model_dir=DIR",
    ):
        get_model(spec)


def test_an_hf_hub_model_in_the_cache_loads_as_its_local_folder(tmp_path, monkeypatch, photo_jpegs):
    """What `hf-hub:` reads once downloaded: the hub cache's snapshot of the repository. Written here
    as huggingface_hub lays it out, offline, so that open_clip's own hub loader reads it."""
    import huggingface_hub.constants

    from dask_clip.testing import write_model_dir

    repo = "example/tiny-clip"
    snapshot = tmp_path / "hub" / "models--example--tiny-clip" / "snapshots" / ("0" * 40)
    write_model_dir(snapshot, seed=11)
    refs = tmp_path / "hub" / "models--example--tiny-clip" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    frame = pd.DataFrame({"image": pd.Series(photo_jpegs, dtype=pd.ArrowDtype(pa.binary()))})
    hub = ImageEmbedder(model=f"hf-hub:{repo}", device="cpu").embed_partition(frame)
    local = ImageEmbedder(model_dir=str(snapshot), device="cpu").embed_partition(frame)
    np.testing.assert_allclose(
        embeddings_to_numpy(hub["embedding"]), embeddings_to_numpy(local["embedding"]), atol=1e-6
    )
