"""EVA-02 and MobileCLIP: open_clip ``local-dir:`` folders whose image tower is timm's (tiny seeded
models, :mod:`dask_clip.testing.families`), against open_clip's own pipeline — images, captions
(open_clip's CLIP tokenizer) and zero-shot (a softmax: these are CLIP-loss models)."""

from __future__ import annotations

import io
import json
import shutil
import sys

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from cli_support import run_main
from PIL import Image

from dask_clip import ImageEmbedder, ModelLoadError, ModelSpec
from dask_clip.columns import embeddings_to_numpy
from dask_clip.heads import zero_shot_heads
from dask_clip.models import get_model
from dask_clip.models.families import detect_model_dir
from dask_clip.testing import parity
from dask_clip.testing.families import write_open_clip_family_dir

LABELS = ("cat", "rocket", "cup of coffee")
TEMPLATE = "a photo of a {}."
CAPTIONS = ["a photo of a cat.", "a red rocket", "an astronaut in a white suit", ""]
FAMILIES = {"eva02": ("EVA-02", "eva02_tiny_patch14_224"), "mobileclip": ("MobileCLIP", "fastvit_mci0")}


# Measured at a load average of 1.5-1.9: the parity test 1.5 s (EVA-02) / 2.6 s (MobileCLIP), the
# cluster + CLI test 3 s / 15 s (the latter with the session cluster's start); at a load of 7-10
# MobileCLIP's took 26-36 s.
@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_dir(request, tmp_path_factory) -> tuple[str, str]:
    return request.param, str(write_open_clip_family_dir(tmp_path_factory.mktemp(request.param), request.param))


@pytest.fixture(scope="module")
def frame(photo_jpegs) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image": pd.Series(photo_jpegs[: len(CAPTIONS)], dtype=pd.ArrowDtype(pa.binary())),
            "caption": pd.Series(CAPTIONS, dtype=pd.ArrowDtype(pa.string())),
        }
    )


def open_clip_reference(folder: str, images: list[bytes], texts: list[str]):
    """open_clip's transform, tokenizer and forward: unit features and ``softmax(scale * logits)``."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    pixels = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
    with torch.no_grad():
        image, text, scale = model.eval()(pixels, tokenizer(texts))
    return image.numpy(), text.numpy(), torch.softmax(scale * image @ text.T, dim=-1).numpy()


def test_detected_and_reported_with_their_timm_tower(family_dir):
    name, folder = family_dir
    found = detect_model_dir(folder).describe()
    family, tower = FAMILIES[name]
    assert (found["kind"], found["family"], found["image_tower"]) == ("open_clip", family, f"timm {tower}")
    assert found["needs"] == ["timm"] and found["tokenizer"].startswith("open_clip's CLIP BPE")
    assert found["zero_shot"].startswith("softmax")


def test_images_captions_and_zero_shot_match_open_clip(family_dir, frame):
    _, folder = family_dir
    heads = zero_shot_heads(LABELS, (TEMPLATE,), probabilities_column="zero_shot_probabilities")
    out = ImageEmbedder(model_dir=folder, text_column="caption", heads=heads, device="cpu").embed_partition(frame)
    prompts, texts = [TEMPLATE.format(label) for label in LABELS], [c for c in CAPTIONS if c]
    ref_image, ref_text, probabilities = open_clip_reference(folder, list(frame["image"]), [*prompts, *texts])
    assert parity(embeddings_to_numpy(out["embedding"]), ref_image).max() <= 0.005
    got_text = embeddings_to_numpy(out["text_embedding"])[[bool(c) for c in CAPTIONS]]
    assert parity(got_text, ref_text[len(prompts) :]).max() <= 0.005
    np.testing.assert_allclose(got_text, ref_text[len(prompts) :], atol=1e-5)
    assert out["text_embedding_error"].tolist()[3] == "empty caption"
    got = np.stack(out["zero_shot_probabilities"].to_list())
    # softmax over the labels of the model's own logits (logit_scale 100 turns the images' parity
    # distance, ~3e-4, into ~4e-5 of probability)
    reference = probabilities[:, : len(prompts)] / probabilities[:, : len(prompts)].sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, reference, atol=5e-4)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_preprocessing_is_read_from_the_folder(family_dir):
    name, folder = family_dir
    cfg = get_model(ModelSpec(model_dir=folder, device="cpu")).preprocess
    expected = {
        "eva02": ((224, 224), "bicubic", (0.48145466, 0.4578275, 0.40821073)),
        "mobileclip": ((128, 128), "bilinear", (0.0, 0.0, 0.0)),
    }[name]
    assert (cfg.size, cfg.interpolation, cfg.mean) == expected
    assert cfg.resize_mode == "shortest"


def test_without_timm_the_error_names_it(family_dir, tmp_path, monkeypatch):
    name, folder = family_dir
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    monkeypatch.setitem(sys.modules, "timm", None)  # what an uninstalled package looks like to importlib
    tower = FAMILIES[name][1]
    with pytest.raises(ModelLoadError, match=rf"needs timm: its image tower is timm's '{tower}'; pip install timm$"):
        get_model(ModelSpec(model_dir=str(copy), device="cpu"))


def test_on_a_real_cluster_and_through_the_cli(client, family_dir, frame, tmp_path):
    name, folder = family_dir
    embedder = ImageEmbedder(model_dir=folder, text_column="caption", device="cpu")
    out = client.compute(embedder(dd.from_pandas(frame, npartitions=2))).result()
    pd.testing.assert_frame_equal(out, embedder.embed_partition(frame), check_exact=False, atol=1e-5)
    frame.to_parquet(tmp_path / "in.parquet")
    info = json.loads(run_main("info", "--model-dir", folder, "--json").stdout)
    assert info["family"] == FAMILIES[name][0]
    run_main(
        "embed",
        str(tmp_path / "in.parquet"),
        str(tmp_path / "out"),
        "--model-dir",
        folder,
        "--image-column",
        "image",
        "--device",
        "cpu",  # the spec of the lines above: the workers' model is reused
        client=client,
    )
    written = pd.read_parquet(tmp_path / "out", dtype_backend="pyarrow")
    got = embeddings_to_numpy(written["embedding"])
    np.testing.assert_allclose(got, embeddings_to_numpy(out["embedding"]), atol=1e-5)
