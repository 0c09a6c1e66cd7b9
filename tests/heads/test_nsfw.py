"""NSFWHead: LAION's CLIP-based NSFW detector in the torch layout NeMo Curator loads."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dask_clip import ImageEmbedder, embeddings_to_numpy
from dask_clip.heads import NSFWHead
from dask_clip.testing import write_nsfw_weights


def published_state(seed: int, dim: int = 768) -> dict[str, torch.Tensor]:
    """Seeded tensors under the names of NeMo Curator's torch port: norm.mean, norm.variance
    (Keras' Normalization statistics) and linear_1..4 (Dense 64, 512, 256, 1)."""
    g = torch.Generator().manual_seed(seed)
    state = {
        "norm.mean": torch.randn(dim, generator=g) * 0.02,
        "norm.variance": torch.rand(dim, generator=g) * 2e-3 + 5e-4,
    }
    width = dim
    for i, out in enumerate((64, 512, 256, 1), start=1):
        state[f"linear_{i}.weight"] = torch.randn(out, width, generator=g) / width**0.5
        state[f"linear_{i}.bias"] = torch.randn(out, generator=g) * 0.1
        width = out
    return state


def reference(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The detector's forward pass written out: standardise, three Dense+ReLU, Dense, sigmoid."""
    x = (x - state["norm.mean"]) / torch.sqrt(state["norm.variance"])
    for i in (1, 2, 3):
        x = torch.relu(x @ state[f"linear_{i}.weight"].T + state[f"linear_{i}.bias"])
    return torch.sigmoid(x @ state["linear_4.weight"].T + state["linear_4.bias"]).squeeze(1)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    state = published_state(3)
    folder = tmp_path_factory.mktemp("nsfw")
    torch.save(state, folder / "clip_autokeras_binary_nsfw.pth")
    nemo = folder / "nemo-model-dir" / "laion" / "clip-autokeras-binary-nsfw"
    nemo.mkdir(parents=True)
    torch.save(state, nemo / "clip_autokeras_binary_nsfw.pth")
    save_file(state, str(folder / "nsfw.safetensors"))
    return state, folder


@pytest.mark.parametrize("where", ["clip_autokeras_binary_nsfw.pth", "nemo-model-dir", "nsfw.safetensors"])
def test_probabilities_equal_the_published_forward_pass(published, wide_model_dir, captioned_frame, where):
    state, folder = published
    out = ImageEmbedder(model_dir=wide_model_dir, heads=[NSFWHead(str(folder / where))]).embed_partition(
        captioned_frame
    )
    got = out["nsfw_score"].to_numpy(dtype=np.float64, na_value=np.nan)
    x = torch.from_numpy(np.nan_to_num(embeddings_to_numpy(out["embedding"])))
    np.testing.assert_allclose(got[:5], reference(state, x).numpy()[:5], rtol=1e-5, atol=1e-7)
    assert ((got[:5] >= 0) & (got[:5] <= 1)).all() and got[:5].std() > 1e-3  # not saturated: a real comparison
    assert np.isnan(got[5:]).all()


def test_layout_and_width_are_checked_on_the_client(
    tmp_path, published, text_model_dir, wide_model_dir, captioned_frame
):
    state, folder = published
    ddf = dd.from_pandas(captioned_frame, npartitions=1)
    with pytest.raises(ValueError, match="head 'nsfw_score' was made for 768-d embeddings.*gives 32-d"):
        ImageEmbedder(model_dir=text_model_dir, heads=[NSFWHead(str(folder / "nemo-model-dir"))])(ddf)
    keras_named = {k.replace("linear_", "dense_"): v for k, v in state.items()}  # another port's names
    torch.save(keras_named, tmp_path / "renamed.pth")
    with pytest.raises(
        ValueError, match=r"not the published LAION CLIP-based NSFW detector layout: missing \['linear_1.bias'"
    ):
        ImageEmbedder(model_dir=wide_model_dir, heads=[NSFWHead(str(tmp_path / "renamed.pth"))])(ddf)
    torch.save({**state, "norm.variance": torch.ones(512)}, tmp_path / "width.pth")
    with pytest.raises(ValueError, match=r"norm.variance \(512,\) \(expected \(768,\)\)"):
        ImageEmbedder(model_dir=wide_model_dir, heads=[NSFWHead(str(tmp_path / "width.pth"))])(ddf)


def test_random_weights_helper_writes_the_published_layout(tmp_path):
    head = NSFWHead(str(write_nsfw_weights(tmp_path / "n.pth", dim=512)))
    head.validate()
    assert head.input_dim() == 512
