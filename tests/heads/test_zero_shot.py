"""Zero-shot labels against open_clip's own zero-shot classifier (and transformers' text tower)."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import torch

from dask_clip import ImageEmbedder, embeddings_to_numpy
from dask_clip.columns import EMBEDDING_DTYPE, ERROR_DTYPE, SCORE_DTYPE
from dask_clip.heads import ZeroShotLabel, ZeroShotProbabilities, read_labels, zero_shot_heads

LABELS = ["an astronaut", "a cup of coffee", "a cat", "a rocket", "galaxies"]
TEMPLATES = ["a photo of {}.", "a blurry photo of {}.", "{}, in a picture"]


def open_clip_probabilities(model_dir: str, embeddings: np.ndarray) -> np.ndarray:
    """open_clip's recipe with open_clip's code: build_zero_shot_classifier, logit_scale softmax."""
    import open_clip

    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    classifier = open_clip.build_zero_shot_classifier(model.eval(), tokenizer, LABELS, TEMPLATES)
    with torch.no_grad():
        logits = model.logit_scale.exp() * torch.from_numpy(embeddings) @ classifier
        return logits.softmax(dim=-1).numpy()


def test_labels_and_probabilities_equal_open_clips_classifier(text_model_dir, captioned_frame):
    heads = zero_shot_heads(LABELS, TEMPLATES, probabilities_column="zero_shot_probabilities")
    out = ImageEmbedder(model_dir=text_model_dir, heads=heads).embed_partition(captioned_frame)
    dtypes = out.dtypes
    assert (dtypes["zero_shot_label"], dtypes["zero_shot_probability"]) == (ERROR_DTYPE, SCORE_DTYPE)
    assert dtypes["zero_shot_probabilities"] == EMBEDDING_DTYPE
    ok = slice(0, 5)
    ref = open_clip_probabilities(text_model_dir, embeddings_to_numpy(out["embedding"])[ok])
    all_probabilities = embeddings_to_numpy(out["zero_shot_probabilities"])
    np.testing.assert_allclose(all_probabilities[ok], ref, atol=1e-5)
    assert out["zero_shot_label"].tolist()[ok] == [LABELS[i] for i in ref.argmax(axis=1)]
    np.testing.assert_allclose(out["zero_shot_probability"].to_numpy(dtype=np.float64)[ok], ref.max(axis=1), atol=1e-5)
    assert out["zero_shot_label"][5:].isna().all() and out["zero_shot_probability"][5:].isna().all()
    assert np.isnan(all_probabilities[5:]).all()


def test_transformers_folder_zero_shot_with_transformers_text_tower(hf_model_dir, captioned_frame):
    from transformers import CLIPModel, CLIPProcessor

    from dask_clip.models.hf import _features

    out = ImageEmbedder(model_dir=hf_model_dir, heads=zero_shot_heads(LABELS, TEMPLATES)).embed_partition(
        captioned_frame
    )
    processor, model = CLIPProcessor.from_pretrained(hf_model_dir), CLIPModel.from_pretrained(hf_model_dir).eval()
    with torch.no_grad():
        texts = [t.format(label) for label in LABELS for t in TEMPLATES]
        tokens = processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        text = torch.nn.functional.normalize(_features(model.get_text_features(**tokens)), dim=-1)
        classes = torch.nn.functional.normalize(text.view(len(LABELS), len(TEMPLATES), -1).mean(1), dim=-1)
        image = torch.from_numpy(embeddings_to_numpy(out["embedding"])[:5])
        ref = (model.logit_scale.exp() * image @ classes.T).softmax(-1).numpy()
    assert out["zero_shot_label"].tolist()[:5] == [LABELS[i] for i in ref.argmax(axis=1)]
    np.testing.assert_allclose(out["zero_shot_probability"].to_numpy(dtype=np.float64)[:5], ref.max(1), atol=1e-5)


def test_configuration_is_checked_on_the_client(text_model_dir, captioned_frame, tmp_path):
    ddf = dd.from_pandas(captioned_frame, npartitions=1)

    def refused(heads, match, error=ValueError):
        with pytest.raises(error, match=match):
            ImageEmbedder(model_dir=text_model_dir, heads=heads)(ddf)

    refused([ZeroShotLabel([])], "give at least one label")
    refused([ZeroShotLabel(["cat", "cat"])], r"labels \['cat'\] are given twice")
    refused([ZeroShotLabel(["cat", " "])], "labels must be non-empty strings")
    refused([ZeroShotLabel(["cat"], templates=["a photo"])], "must hold exactly one '{}'")
    with pytest.raises(TypeError, match="labels must be a list of strings, not one string"):
        ZeroShotLabel("cat")
    with pytest.raises(ValueError, match="every output column is None"):
        zero_shot_heads(["cat"], label_column=None, probability_column=None)
    (tmp_path / "labels.txt").write_text("# animals\ncat\n\ndog\n  bird  \n")
    assert read_labels(str(tmp_path / "labels.txt")) == ["cat", "dog", "bird"]


def test_heads_are_values_small_in_the_graph_and_shared_per_label_set(text_model_dir):
    import pickle

    heads = zero_shot_heads(LABELS, TEMPLATES, probabilities_column="p")
    assert heads[0] == zero_shot_heads(list(LABELS), list(TEMPLATES))[0] and hash(heads[0])
    embedder = ImageEmbedder(model_dir=text_model_dir, heads=heads)
    assert pickle.loads(pickle.dumps(embedder)) == embedder
    assert ZeroShotProbabilities(("a",)) != ZeroShotLabel(("a",))  # same labels, other output
    from dask_clip.heads.zero_shot import class_embeddings
    from dask_clip.models import get_model

    model = get_model(embedder.spec)
    first, _ = class_embeddings(model, LABELS, TEMPLATES)
    again, _ = class_embeddings(model, LABELS, TEMPLATES)
    assert first is again  # computed once per process for the three heads


def test_all_scores_on_a_real_cluster_with_meta(client, wide_model_dir, captioned_frame, tmp_path_factory):
    from dask_clip.heads import AestheticHead, NSFWHead
    from dask_clip.testing import write_aesthetic_weights, write_nsfw_weights

    folder = tmp_path_factory.mktemp("weights")
    heads = [
        AestheticHead(str(write_aesthetic_weights(folder / "a.pth"))),
        NSFWHead(str(write_nsfw_weights(folder / "n.pth"))),
        *zero_shot_heads(LABELS, TEMPLATES, probabilities_column="zero_shot_probabilities"),
    ]
    embedder = ImageEmbedder(model_dir=wide_model_dir, text_column="caption", heads=heads)
    frame = pd.concat([captioned_frame] * 3, ignore_index=True)
    lazy = embedder(dd.from_pandas(frame, npartitions=4))
    assert list(lazy._meta.columns)[-5:] == [
        "aesthetic_score",
        "nsfw_score",
        "zero_shot_label",
        "zero_shot_probability",
        "zero_shot_probabilities",
    ]
    got = client.compute(lazy).result()
    pd.testing.assert_frame_equal(got, embedder.embed_partition(frame), check_exact=False, atol=1e-5)
