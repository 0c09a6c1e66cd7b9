"""The low-precision paths under CUDA's dtype rules, on CPU (issue 19, item 1).

CPU kernels accept ``F.layer_norm(half_x, weight=float)``; CUDA's raise. Every test here runs the
model load and both towers inside :func:`dask_clip.models.cuda_rules.cuda_dtype_rules`, so a model whose
norms keep float32 weights under half/bf16 activations fails here as it would on a GPU.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from dask_clip import ImageEmbedder, TextEmbedder, embeddings_to_numpy, models
from dask_clip.columns import BINARY_DTYPE
from dask_clip.models.cuda_rules import MixedDtypeError, cuda_dtype_rules
from dask_clip.testing import CAPTIONS, TINY_TEXT_MODEL_CFG, parity, write_model_dir, write_transformers_model_dir

# "auto" on CUDA holds the weights in fp16 without autocast: what "pure_fp16" does everywhere
# (test_auto_on_cuda_is_pure_fp16); autocast precisions keep float32 weights.
LOW_PRECISIONS = ("pure_fp16", "pure_bf16", "fp16", "bf16")
HALF = torch.float16


# -- the mode itself -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: F.layer_norm(torch.randn(2, 8, dtype=HALF), (8,), weight=torch.ones(8)),
        lambda: F.group_norm(torch.randn(2, 4, 3, dtype=HALF), 2, weight=torch.ones(4)),
        lambda: F.linear(torch.randn(2, 8, dtype=HALF), torch.randn(4, 8)),
        lambda: torch.randn(2, 8, dtype=HALF) @ torch.randn(8, 3),
        lambda: torch.bmm(torch.randn(1, 2, 8, dtype=HALF), torch.randn(1, 8, 3)),
        lambda: torch.addmm(torch.zeros(3), torch.randn(2, 8, dtype=HALF), torch.randn(8, 3, dtype=HALF)),
        lambda: F.conv2d(torch.randn(1, 3, 8, 8, dtype=torch.bfloat16), torch.randn(4, 3, 3, 3)),
        lambda: F.scaled_dot_product_attention(*[torch.randn(1, 2, 8, dtype=HALF)] * 2, torch.randn(1, 2, 8)),
    ],
    ids=["layer_norm", "group_norm", "linear", "matmul", "bmm", "addmm", "conv", "sdpa"],
)
def test_mixed_dtypes_that_cuda_rejects_raise(call):
    with pytest.raises(MixedDtypeError, match="CUDA raises"), torch.inference_mode(), cuda_dtype_rules():
        call()


def test_cpu_kernels_take_the_mixed_norms_that_cuda_rejects():
    """Why the mode exists: pytorch#135969 (CUDA: "expected scalar type Half but found Float")."""
    x = torch.randn(2, 8, dtype=HALF)
    assert F.layer_norm(x, (8,), weight=torch.ones(8), bias=torch.zeros(8)).dtype == HALF
    assert F.group_norm(torch.randn(2, 4, 3, dtype=HALF), 2, weight=torch.ones(4)).dtype == HALF


def test_what_cuda_accepts_passes():
    x = torch.randn(2, 8, dtype=HALF)
    with torch.inference_mode(), cuda_dtype_rules():
        F.layer_norm(x, (8,), weight=torch.ones(8, dtype=HALF))
        F.linear(x, torch.randn(4, 8, dtype=HALF))
        x + torch.randn(8)  # type promotion, as on CUDA
        # a float32 mask beside half q/k/v (CUDA's SDPA takes bool, float32 or the query's dtype)
        F.scaled_dot_product_attention(x[None], x[None], x[None], attn_mask=torch.zeros(2, 2))
        # batch_norm's CUDA kernels take half input with float32 parameters
        F.batch_norm(torch.randn(2, 3, 4, 4, dtype=HALF), torch.zeros(3), torch.ones(3), torch.ones(3))


def test_autocast_policy_lets_norms_through_as_cuda_autocast_casts_them():
    """CUDA autocast runs layer_norm in float32; CPU autocast leaves it mixed: not an error."""
    with torch.inference_mode(), cuda_dtype_rules(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = F.linear(torch.randn(2, 8), torch.randn(4, 8))  # cast by autocast: bf16
        F.layer_norm(y, (4,), weight=torch.ones(4))
    with pytest.raises(MixedDtypeError), torch.inference_mode(), cuda_dtype_rules():
        F.layer_norm(y, (4,), weight=torch.ones(4))  # the same call without autocast


def test_auto_on_cuda_is_pure_fp16():
    cuda = torch.device("cuda:0")
    assert models.weights_dtype("auto", cuda) is models.weights_dtype("pure_fp16", cuda) is HALF
    assert models._autocast_dtype("auto", cuda) is models._autocast_dtype("pure_fp16", cuda) is None


# -- both families, both towers, every low precision ----------------------------------------------


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict[str, str]:
    """Model folders of their own: their specs are loaded here first, inside the mode."""
    root = tmp_path_factory.mktemp("cuda-rules")
    return {
        "open_clip": str(write_model_dir(root / "open_clip", model_cfg=TINY_TEXT_MODEL_CFG, seed=7)),
        "transformers": str(write_transformers_model_dir(root / "transformers", seed=7)),
    }


@pytest.mark.parametrize("precision", LOW_PRECISIONS)
@pytest.mark.parametrize("family", ["open_clip", "transformers"])
def test_low_precision_loads_and_runs_both_towers_under_cuda_rules(families, photo_jpegs, family, precision):
    folder = families[family]
    images = pd.DataFrame({"image": pd.Series(photo_jpegs, dtype=BINARY_DTYPE)})
    captions = pd.DataFrame({"caption": [c for c in CAPTIONS if c]})
    image_embedder = ImageEmbedder(model_dir=folder, device="cpu", precision=precision)
    text_embedder = TextEmbedder(model_dir=folder, device="cpu", precision=precision)
    with cuda_dtype_rules():  # the load (and its probe forward pass) too
        got_images = embeddings_to_numpy(image_embedder.embed_partition(images)["embedding"])
        got_texts = embeddings_to_numpy(text_embedder.embed_partition(captions)["text_embedding"])
    ref_images = embeddings_to_numpy(
        ImageEmbedder(model_dir=folder, device="cpu", precision="fp32").embed_partition(images)["embedding"]
    )
    ref_texts = embeddings_to_numpy(
        TextEmbedder(model_dir=folder, device="cpu", precision="fp32").embed_partition(captions)["text_embedding"]
    )
    assert np.isfinite(got_images).all() and np.isfinite(got_texts).all()
    assert parity(got_images, ref_images).max() < 0.05
    assert parity(got_texts, ref_texts).max() < 0.05


@pytest.mark.parametrize("precision", ["pure_fp16", "pure_bf16"])
def test_low_precision_weights_are_open_clips_own_fp16(families, precision):
    """The model held in fp16/bf16 computes what open_clip's ``precision="fp16"``/``"bf16"`` model does."""
    import open_clip
    from open_clip.transformer import LayerNormFp32

    from dask_clip.models.spec import ModelSpec

    folder = families["open_clip"]
    loaded = models.get_model(ModelSpec(model_dir=folder, device="cpu", precision=precision))
    dtype = models.weights_dtype(precision, loaded.device)
    theirs = open_clip.create_model(f"local-dir:{folder}", precision=precision.removeprefix("pure_")).eval()
    norms = [m for m in loaded.model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(type(m) is LayerNormFp32 and m.weight.dtype == torch.float32 for m in norms)
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(dtype)
    tokens = open_clip.get_tokenizer(f"local-dir:{folder}")(CAPTIONS[:3])
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model.encode_image(pixels), theirs.encode_image(pixels), rtol=0, atol=0)
        torch.testing.assert_close(loaded.model.encode_text(tokens), theirs.encode_text(tokens), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["auto", "pure_bf16", "fp16", "bf16"])
@pytest.mark.parametrize("family", ["open_clip", "transformers"])
def test_low_precision_runs_both_towers_on_cuda(families, photo_jpegs, family, precision):
    """The same, on a real GPU: the default precision loads and embeds (issue 19, item 1)."""
    folder = families[family]
    images = pd.DataFrame({"image": pd.Series(photo_jpegs, dtype=BINARY_DTYPE)})
    captions = pd.DataFrame({"caption": [c for c in CAPTIONS if c]})
    got = embeddings_to_numpy(
        ImageEmbedder(model_dir=folder, device="cuda", precision=precision).embed_partition(images)["embedding"]
    )
    texts = TextEmbedder(model_dir=folder, device="cuda", precision=precision).embed_partition(captions)
    ref = embeddings_to_numpy(
        ImageEmbedder(model_dir=folder, device="cpu", precision="fp32").embed_partition(images)["embedding"]
    )
    assert np.isfinite(embeddings_to_numpy(texts["text_embedding"])).all()
    assert parity(got, ref).max() < 0.05  # nvJPEG's chroma upsampling and low precision together
