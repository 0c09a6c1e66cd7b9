"""AestheticHead: LAION's improved aesthetic predictor, from its published checkpoint formats."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dask_clip import ImageEmbedder, embeddings_to_numpy
from dask_clip.columns import SCORE_DTYPE
from dask_clip.heads import AestheticHead
from dask_clip.testing import write_aesthetic_weights


class PublishedPredictor(torch.nn.Module):
    """The module of improved-aesthetic-predictor's simple_inference.py (and NeMo Curator's
    models/aesthetics.py), written out as published: no activations, dropouts between."""

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_size, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Seeded weights of the reference module, saved as LAION distributes them (.pth), as NeMo
    Curator downloads them (model.safetensors) and in NeMo's model_dir layout."""
    torch.manual_seed(20)
    reference = PublishedPredictor().eval()
    state = reference.state_dict()
    folder = tmp_path_factory.mktemp("aesthetic")
    torch.save(state, folder / "sac+logos+ava1-l14-linearMSE.pth")
    save_file(state, str(folder / "model.safetensors"))
    nemo = folder / "nemo-model-dir" / "ttj" / "sac-logos-ava1-l14-linearMSE"
    nemo.mkdir(parents=True)
    save_file(state, str(nemo / "model.safetensors"))
    return reference, folder


def expected(reference: torch.nn.Module, out) -> np.ndarray:
    with torch.no_grad():
        x = torch.from_numpy(np.nan_to_num(embeddings_to_numpy(out["embedding"])))
        return reference(x).squeeze(1).numpy()


@pytest.mark.parametrize(
    "where", ["sac+logos+ava1-l14-linearMSE.pth", "model.safetensors", "nemo-model-dir", "nemo-model-dir/ttj"]
)
def test_scores_equal_the_published_module(published, wide_model_dir, captioned_frame, where):
    reference, folder = published
    if where == "nemo-model-dir/ttj":
        where = "nemo-model-dir/ttj/sac-logos-ava1-l14-linearMSE"
    out = ImageEmbedder(model_dir=wide_model_dir, heads=[AestheticHead(str(folder / where))]).embed_partition(
        captioned_frame
    )
    assert out["aesthetic_score"].dtype == SCORE_DTYPE
    got = out["aesthetic_score"].to_numpy(dtype=np.float64, na_value=np.nan)
    np.testing.assert_allclose(got[:5], expected(reference, out)[:5], rtol=1e-5, atol=1e-6)
    assert np.isnan(got[5:]).all()  # no image, no score


def test_the_embedding_is_normalised_before_the_head(published, wide_model_dir, captioned_frame):
    """The predictor was trained on L2-normalised ViT-L/14 embeddings: it sees them whatever
    ``normalize`` says about the output column."""
    _, folder = published
    head = AestheticHead(str(folder / "model.safetensors"))
    unit = ImageEmbedder(model_dir=wide_model_dir, heads=[head]).embed_partition(captioned_frame)
    raw = ImageEmbedder(model_dir=wide_model_dir, heads=[head], normalize=False).embed_partition(captioned_frame)
    np.testing.assert_allclose(
        raw["aesthetic_score"].to_numpy(dtype=np.float64, na_value=np.nan),
        unit["aesthetic_score"].to_numpy(dtype=np.float64, na_value=np.nan),
        rtol=1e-5,
    )


def test_a_head_of_another_width_is_refused_on_the_client(published, text_model_dir, captioned_frame):
    _, folder = published
    ddf = dd.from_pandas(captioned_frame, npartitions=1)
    with pytest.raises(ValueError, match="head 'aesthetic_score' was made for 768-d embeddings.*gives 32-d"):
        ImageEmbedder(model_dir=text_model_dir, heads=[AestheticHead(str(folder / "model.safetensors"))])(ddf)


def test_files_not_in_the_published_layout_are_refused_on_the_client(tmp_path, wide_model_dir, captioned_frame):
    ddf = dd.from_pandas(captioned_frame, npartitions=1)

    def refused(path, error, match):
        with pytest.raises(error, match=match):
            ImageEmbedder(model_dir=wide_model_dir, heads=[AestheticHead(str(path))])(ddf)

    state = PublishedPredictor().state_dict()
    torch.save({k: v for k, v in state.items() if k != "layers.7.bias"}, tmp_path / "missing.pth")
    refused(
        tmp_path / "missing.pth",
        ValueError,
        r"not the published LAION aesthetic predictor layout: missing \['layers.7.bias'\]",
    )
    torch.save({**state, "layers.8.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    refused(tmp_path / "extra.pth", ValueError, r"unexpected \['layers.8.weight'\]")
    torch.save({**state, "layers.2.weight": torch.zeros(64, 1024)}, tmp_path / "shape.pth")
    refused(tmp_path / "shape.pth", ValueError, r"layers.2.weight \(64, 1024\) \(expected \(128, 1024\)\)")
    torch.save(PublishedPredictor(), tmp_path / "pickled-module.pth")  # code, not a state dict
    refused(tmp_path / "pickled-module.pth", ValueError, "not a torch state dict readable with weights_only=True")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    refused(tmp_path / "junk.safetensors", ValueError, "not a readable safetensors file")
    refused(tmp_path / "nowhere.pth", FileNotFoundError, "does not exist")
    (tmp_path / "empty-folder").mkdir()
    refused(tmp_path / "empty-folder", FileNotFoundError, "ttj/sac-logos-ava1-l14-linearMSE/model.safetensors")


def test_random_weights_helper_writes_the_published_layout(tmp_path):
    for name in ("a.pth", "a.safetensors"):
        head = AestheticHead(str(write_aesthetic_weights(tmp_path / name, dim=512)))
        head.validate()
        assert head.input_dim() == 512
