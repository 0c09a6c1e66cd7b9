"""SigLIP and SigLIP 2 (fixed resolution) against their own reference pipelines: open_clip
``local-dir:`` folders (open_clip's transform, tokenizer and logits) and transformers ``SiglipModel``
folders (``SiglipProcessor`` + ``SiglipModel``), with tiny seeded models
(:mod:`dask_clip.testing.families`). Zero-shot probabilities are the sigmoid of the family's own
logits; SigLIP 2's NaFlex folders are refused."""

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

from dask_clip import ImageEmbedder, ModelSpec
from dask_clip.columns import embeddings_to_numpy
from dask_clip.heads import AestheticHead, NSFWHead, zero_shot_heads
from dask_clip.models.families import detect_model_dir
from dask_clip.models.hf import _features
from dask_clip.testing import encode_image, parity, photo_crops, write_aesthetic_weights, write_nsfw_weights
from dask_clip.testing.families import write_open_clip_family_dir, write_transformers_siglip_dir

LABELS = ("cat", "rocket", "cup of coffee")
TEMPLATE = "a photo of a {}."
CAPTIONS = [
    "a photo of a cat.",
    "a red rocket on a launch pad",
    "an astronaut in a white suit, smiling at the camera with the flag behind",
    "zebra",  # words the tiny tokenizers never saw
    "a cup of coffee on a table",
    "the deep field of the hubble telescope, with many galaxies and stars and nothing else at all",  # truncated
]


@pytest.fixture(scope="module")
def images(photo_jpegs) -> list[bytes]:
    crops = [encode_image(c, quality=90) for c in photo_crops(1, seed=3)]
    return [*photo_jpegs, *crops]  # 5 photos of several aspect ratios, and one crop


@pytest.fixture(scope="module")
def frame(images) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image": pd.Series(images, dtype=pd.ArrowDtype(pa.binary())),
            "caption": pd.Series(CAPTIONS[: len(images)], dtype=pd.ArrowDtype(pa.string())),
        }
    )


@pytest.fixture(scope="module")
def open_clip_siglip(tmp_path_factory) -> str:
    return str(write_open_clip_family_dir(tmp_path_factory.mktemp("siglip-open-clip"), "siglip"))


@pytest.fixture(scope="module", params=["gemma", "sentencepiece"])
def hf_siglip(request, tmp_path_factory) -> str:
    """A transformers SiglipModel folder with SigLIP 2's Gemma tokenizer.json or SigLIP's spiece.model."""
    if request.param == "sentencepiece":
        pytest.importorskip("sentencepiece", reason="SigLIP's spiece.model needs sentencepiece (dask-clip[siglip])")
    return str(
        write_transformers_siglip_dir(tmp_path_factory.mktemp(f"siglip-{request.param}"), tokenizer=request.param)
    )


def pil(blobs: list[bytes]) -> list[Image.Image]:
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]


def open_clip_reference(folder: str, images: list[bytes], texts: list[str]):
    """open_clip's pipeline: its transform and tokenizer, the model's forward (unit features,
    ``logit_scale.exp()``, ``logit_bias``)."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    with torch.no_grad():
        image, text, scale, bias = model.eval()(torch.stack([preprocess(i) for i in pil(images)]), tokenizer(texts))
    return image.numpy(), text.numpy(), torch.sigmoid(scale * image @ text.T + bias).detach().numpy()


def transformers_reference(folder: str, images: list[bytes], texts: list[str]):
    """transformers' pipeline: AutoProcessor (SiglipProcessor, padding="max_length" as the model
    card says) and SiglipModel; unit features and ``sigmoid(logits_per_image)``."""
    from transformers import AutoProcessor, SiglipModel

    processor, model = AutoProcessor.from_pretrained(folder), SiglipModel.from_pretrained(folder).eval()
    length = model.config.text_config.max_position_embeddings
    unit = torch.nn.functional.normalize
    with torch.no_grad():
        pixels = processor(images=pil(images), return_tensors="pt")
        tokens = processor(text=texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        image = unit(_features(model.get_image_features(**pixels)), dim=-1)
        text = unit(_features(model.get_text_features(**tokens)), dim=-1)
        logits = model(**pixels, **tokens).logits_per_image
    return image.numpy(), text.numpy(), torch.sigmoid(logits).numpy()


def embed(folder: str, frame: pd.DataFrame) -> pd.DataFrame:
    heads = zero_shot_heads(LABELS, (TEMPLATE,), probabilities_column="zero_shot_probabilities")
    return ImageEmbedder(model_dir=folder, text_column="caption", heads=heads, device="cpu").embed_partition(frame)


def check_against(reference, out: pd.DataFrame, images: list[bytes]) -> None:
    ref_image, ref_text, _ = reference(images, list(out["caption"]))
    got_image, got_text = embeddings_to_numpy(out["embedding"]), embeddings_to_numpy(out["text_embedding"])
    assert parity(got_image, ref_image).max() <= 0.005
    assert parity(got_text, ref_text).max() <= 0.005
    np.testing.assert_allclose(got_text, ref_text, atol=1e-5)
    # the CLIP score stays the cosine of the unit embeddings, whatever the family's logits
    np.testing.assert_allclose(out["clip_score"].to_numpy(dtype=float), (got_image * got_text).sum(axis=1), atol=1e-5)
    _, _, probabilities = reference(images, [TEMPLATE.format(label) for label in LABELS])
    got = np.stack(out["zero_shot_probabilities"].to_list())
    np.testing.assert_allclose(got, probabilities, atol=1e-5)  # sigmoid of the family's own logits
    assert not np.allclose(got.sum(axis=1), 1.0, atol=1e-3)  # independent per label, not a softmax
    best = got.argmax(axis=1)
    assert out["zero_shot_label"].tolist() == [LABELS[i] for i in best]
    np.testing.assert_allclose(out["zero_shot_probability"].to_numpy(), got.max(axis=1), atol=1e-6)


# -- open_clip SigLIP ------------------------------------------------------------------------------


def test_open_clip_siglip_folder_is_detected_and_reported(open_clip_siglip):
    found = detect_model_dir(open_clip_siglip).describe()
    assert (found["kind"], found["family"], found["embed_dim"]) == ("open_clip", "SigLIP", 64)
    assert found["preprocess"]["resize_mode"] == "squash" and found["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert found["tokenizer"] == "Hugging Face tokenizer.json in the folder"
    assert found["zero_shot"].startswith("sigmoid") and found["text_length"] == 16
    assert found["needs"] == ["timm", "transformers"]


def test_open_clip_siglip_images_captions_and_sigmoid_zero_shot_match_open_clip(open_clip_siglip, frame, images):
    out = embed(open_clip_siglip, frame)
    assert out["embedding_error"].isna().all() and out["text_embedding_error"].isna().all()
    check_against(lambda i, t: open_clip_reference(open_clip_siglip, i, t), out, images)


def test_open_clip_siglip_preprocessing_is_a_square_resize_without_crop(open_clip_siglip):
    from dask_clip.models import get_model

    cfg = get_model(ModelSpec(model_dir=open_clip_siglip, device="cpu")).preprocess
    assert (cfg.size, cfg.resize_mode, cfg.interpolation, cfg.mean, cfg.std) == (
        (160, 160),
        "squash",
        "bicubic",
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
    )


def test_open_clip_siglip_without_its_tokenizer_files_names_them(open_clip_siglip, tmp_path, frame):
    folder = tmp_path / "no-tokenizer"
    shutil.copytree(open_clip_siglip, folder)
    (folder / "tokenizer.json").unlink()
    assert (
        "no tokenizer.json, spiece.model, tokenizer.model or vocab.json + merges.txt"
        in detect_model_dir(folder).describe()["tokenizer"]
    )
    images_only = ImageEmbedder(model_dir=str(folder), device="cpu").embed_partition(frame[["image"]])
    assert images_only["embedding_error"].isna().all()  # the image tower needs no tokenizer
    with pytest.raises(FileNotFoundError, match=r"names a Hugging Face tokenizer.*no tokenizer.json, spiece.model"):
        ImageEmbedder(model_dir=str(folder), text_column="caption", device="cpu").embed_partition(frame)


def test_a_missing_package_is_named_in_one_line(open_clip_siglip, tmp_path, frame, monkeypatch):
    from dask_clip import ModelLoadError
    from dask_clip.models import get_model

    folder = tmp_path / "copy"
    shutil.copytree(open_clip_siglip, folder)
    monkeypatch.setitem(sys.modules, "timm", None)  # what an uninstalled package looks like to importlib
    with pytest.raises(ModelLoadError, match=r"needs timm: its image tower is timm's 'test_vit'; pip install timm"):
        get_model(ModelSpec(model_dir=str(folder), device="cpu"))


def test_open_clip_naflex_towers_are_refused(open_clip_siglip, tmp_path):
    folder = tmp_path / "naflex"
    shutil.copytree(open_clip_siglip, folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"]["timm_model_name"] = "naflexvit_base_patch16_siglip"
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="NaFlex ViT.*fixed-resolution"):
        ModelSpec(model_dir=str(folder)).validate()


# -- transformers SiglipModel -----------------------------------------------------------------------


def test_transformers_siglip_folder_is_detected_and_reported(hf_siglip):
    found = detect_model_dir(hf_siglip).describe()
    assert (found["kind"], found["layout"], found["embed_dim"]) == ("transformers_siglip", "transformers SigLIP", 64)
    assert found["preprocess"] == {
        "size": [64, 64],
        "resize_mode": "squash",
        "interpolation": "bicubic",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }
    spiece = (detect_model_dir(hf_siglip).folder / "spiece.model").is_file()
    assert found["tokenizer"] == (
        "spiece.model (sentencepiece), needs protobuf and sentencepiece" if spiece else "tokenizer.json (tokenizers)"
    )


def test_transformers_siglip_images_captions_and_sigmoid_zero_shot_match_transformers(hf_siglip, frame, images):
    out = embed(hf_siglip, frame)
    assert out["embedding_error"].isna().all() and out["text_embedding_error"].isna().all()
    check_against(lambda i, t: transformers_reference(hf_siglip, i, t), out, images)


def test_sentencepiece_missing_is_named_in_one_line(tmp_path, frame, monkeypatch):
    pytest.importorskip("sentencepiece")
    folder = write_transformers_siglip_dir(tmp_path / "spiece", tokenizer="sentencepiece")
    images_only = ImageEmbedder(model_dir=str(folder), device="cpu").embed_partition(frame[["image"]])
    assert images_only["embedding_error"].isna().all()
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    with pytest.raises(ImportError, match=r"spiece.model \(sentencepiece\), which needs sentencepiece: pip install"):
        ImageEmbedder(model_dir=str(folder), text_column="caption", device="cpu").embed_partition(frame)


def test_a_transformers_siglip_folder_missing_a_file_names_it(hf_siglip, tmp_path):
    no_weights, no_processor = tmp_path / "no-weights", tmp_path / "no-processor"
    shutil.copytree(hf_siglip, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"holds no PyTorch weights \(model.safetensors.*refusing to use random"
    ):
        ModelSpec(model_dir=str(no_weights)).validate()
    shutil.copytree(hf_siglip, no_processor)
    (no_processor / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no preprocessor_config.json or processor_config.json"):
        ModelSpec(model_dir=str(no_processor)).validate()


def test_siglip2_naflex_folders_are_refused_with_the_fixed_resolution_alternative(hf_siglip, tmp_path):
    folder = tmp_path / "naflex"
    shutil.copytree(hf_siglip, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "siglip2"}))
    with pytest.raises(ValueError, match=r"SigLIP 2 NaFlex model.*google/siglip2-base-patch16-224"):
        ModelSpec(model_dir=str(folder)).validate()


# -- both ------------------------------------------------------------------------------------------


def test_heads_trained_on_another_width_are_refused(open_clip_siglip, tmp_path, frame):
    hf = write_transformers_siglip_dir(tmp_path / "hf", tokenizer="gemma")
    aesthetic = AestheticHead(str(write_aesthetic_weights(tmp_path / "a.safetensors", dim=768)))
    nsfw = NSFWHead(str(write_nsfw_weights(tmp_path / "n.safetensors", dim=768)))
    ddf = dd.from_pandas(frame, npartitions=1)
    for folder in (open_clip_siglip, str(hf)):
        for head in (aesthetic, nsfw):
            with pytest.raises(ValueError, match=rf"head '{head.column}' was made for 768-d embeddings.*gives 64-d"):
                ImageEmbedder(model_dir=folder, heads=[head])(ddf)


def test_siglip_families_on_a_real_cluster(client, open_clip_siglip, tmp_path, frame):
    hf = str(write_transformers_siglip_dir(tmp_path / "hf", tokenizer="gemma"))
    for folder in (open_clip_siglip, hf):
        embedder = ImageEmbedder(
            model_dir=folder, text_column="caption", heads=zero_shot_heads(LABELS, (TEMPLATE,)), device="cpu"
        )
        lazy = embedder(dd.from_pandas(frame, npartitions=3))
        out = client.compute(lazy).result()
        pd.testing.assert_frame_equal(out, embedder.embed_partition(frame), check_exact=False, atol=1e-5)


def test_cli_embeds_with_a_siglip_folder_and_info_reports_it(client, open_clip_siglip, tmp_path, frame):
    frame.to_parquet(tmp_path / "in.parquet")
    (tmp_path / "labels.txt").write_text("\n".join(LABELS))
    info = run_main("info", "--model-dir", open_clip_siglip, "--json")
    assert json.loads(info.stdout)["family"] == "SigLIP"
    run_main(
        "embed",
        str(tmp_path / "in.parquet"),
        str(tmp_path / "out"),
        "--model-dir",
        open_clip_siglip,
        "--image-column",
        "image",
        "--text-column",
        "caption",
        "--labels",
        str(tmp_path / "labels.txt"),
        "--device",
        "cpu",  # the spec of test_siglip_families_on_a_real_cluster: the workers' model is reused
        client=client,
    )
    out = pd.read_parquet(tmp_path / "out", dtype_backend="pyarrow")
    ref_image, _, _ = open_clip_reference(open_clip_siglip, list(frame["image"]), CAPTIONS[:1])
    _, _, probabilities = open_clip_reference(
        open_clip_siglip, list(frame["image"]), [TEMPLATE.format(label) for label in LABELS]
    )
    assert parity(embeddings_to_numpy(out["embedding"]), ref_image).max() <= 0.005
    np.testing.assert_allclose(out["zero_shot_probability"].to_numpy(dtype=float), probabilities.max(axis=1), atol=1e-5)


def test_an_hf_hub_siglip_in_the_cache_loads_as_its_local_folder(tmp_path, monkeypatch, frame):
    """``hf-hub:ORG/NAME`` of a SigLIP repository (its config names the repository as its tokenizer,
    as timm/ViT-B-16-SigLIP does), read offline from the hub cache as huggingface_hub lays it out."""
    import huggingface_hub.constants

    repo = "example/tiny-siglip"
    snapshot = tmp_path / "hub" / "models--example--tiny-siglip" / "snapshots" / ("0" * 40)
    write_open_clip_family_dir(snapshot, "siglip", seed=5, hf_tokenizer_name=repo)
    # timm's config.json, which timm/ViT-B-16-SigLIP holds too: AutoTokenizer reads it from the hub
    (snapshot / "config.json").write_text(json.dumps({"architecture": "test_vit", "num_classes": 0}))
    refs = tmp_path / "hub" / "models--example--tiny-siglip" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    heads = zero_shot_heads(LABELS, (TEMPLATE,), probabilities_column="zero_shot_probabilities")
    kwargs = {"text_column": "caption", "heads": heads, "device": "cpu"}
    hub = ImageEmbedder(model=f"hf-hub:{repo}", **kwargs).embed_partition(frame)
    local = ImageEmbedder(model_dir=str(snapshot), **kwargs).embed_partition(frame)
    for column in ("embedding", "text_embedding", "zero_shot_probabilities"):
        np.testing.assert_allclose(np.stack(hub[column].to_list()), np.stack(local[column].to_list()), atol=1e-6)
