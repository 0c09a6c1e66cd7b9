"""Meta-device model builds (dask_clip.models.skeleton): the same model as open_clip's own load, without
random initialisation, and nothing leaking into other threads."""

from __future__ import annotations

import threading

import open_clip
import pytest
import torch

from dask_clip import models
from dask_clip.models.skeleton import _parameters_on_meta, create_assigned, meta_tensors
from dask_clip.models.spec import ModelSpec
from dask_clip.testing import TINY_MODEL_CFG, write_model_dir


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def test_assigned_model_equals_open_clips_own_load(tmp_path):
    folder = write_model_dir(tmp_path / "m", seed=3)
    reference = open_clip.create_model(f"local-dir:{folder}").eval()
    built = create_assigned(f"local-dir:{folder}", folder / "open_clip_model.safetensors")
    assert built is not None
    built.eval()
    _same_state(built, reference)
    assert meta_tensors(built) == []
    # the non-persistent causal mask is not in the checkpoint: it must be rebuilt, not left empty
    assert torch.equal(built.attn_mask, reference.attn_mask)
    assert built.visual.preprocess_cfg == reference.visual.preprocess_cfg
    size = TINY_MODEL_CFG["vision_cfg"]["image_size"]
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    text_cfg = TINY_MODEL_CFG["text_cfg"]
    tokens = torch.randint(0, text_cfg["vocab_size"], (2, text_cfg["context_length"]), generator=torch.Generator())
    with torch.inference_mode():
        torch.testing.assert_close(built.encode_image(pixels), reference.encode_image(pixels), rtol=0, atol=0)
        torch.testing.assert_close(built.encode_text(tokens), reference.encode_text(tokens), rtol=0, atol=0)


def test_half_precision_checkpoint_becomes_a_float32_model(tmp_path):
    # assign=True would keep the checkpoint's fp16; open_clip's copy casts to the model's float32
    folder = write_model_dir(tmp_path / "m", seed=1)
    reference = open_clip.create_model(f"local-dir:{folder}")
    half = {k: v.half() for k, v in reference.state_dict().items()}
    checkpoint = tmp_path / "half.pt"
    torch.save(half, checkpoint)
    built = create_assigned(f"local-dir:{folder}", checkpoint)
    expected = open_clip.create_model(f"local-dir:{folder}")
    open_clip.load_checkpoint(expected, str(checkpoint))
    assert built is not None
    _same_state(built, expected)
    assert all(p.dtype == torch.float32 for p in built.parameters())


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    folder = write_model_dir(tmp_path / "m")
    wider = dict(TINY_MODEL_CFG, embed_dim=TINY_MODEL_CFG["embed_dim"] * 2)
    other = write_model_dir(tmp_path / "other", model_cfg=wider)
    with pytest.raises(RuntimeError, match="size mismatch"):
        create_assigned(f"local-dir:{folder}", other / "open_clip_model.safetensors")


def test_other_threads_build_real_modules_meanwhile():
    built: dict[str, torch.nn.Module] = {}

    def other_thread() -> None:
        built["other"] = torch.nn.Linear(4, 4)

    with _parameters_on_meta():
        built["here"] = torch.nn.Linear(4, 4)
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert built["here"].weight.is_meta
    assert not built["other"].weight.is_meta
    assert not torch.nn.Linear(4, 4).weight.is_meta  # restored after the block


def test_model_dir_spec_loads_the_files_weights_with_declared_width(tmp_path):
    folder = write_model_dir(tmp_path / "m", seed=5)
    spec = ModelSpec(model_dir=str(folder), device="cpu", precision="fp32")
    loaded = models._load(spec)
    reference = open_clip.create_model(f"local-dir:{folder}").eval()
    _same_state(loaded.model, reference)
    size = loaded.preprocess.size
    with torch.inference_mode():
        width = loaded.model.encode_image(torch.zeros(1, 3, *size)).shape[-1]
    assert loaded.embed_dim == width == TINY_MODEL_CFG["embed_dim"]
