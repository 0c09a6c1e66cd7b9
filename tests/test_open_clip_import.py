"""open_clip imported without transformers and timm for models that do not need them, and
both back (open_clip's modules imported again) when a later model in the process does."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from dask_clip.models.open_clip_import import OPTIONAL, folder_needs
from dask_clip.testing import TINY_MODEL_CFG


def _folder(tmp_path, model_cfg) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    return str(tmp_path)


def test_folder_needs_reads_the_towers(tmp_path):
    assert folder_needs(_folder(tmp_path / "native", TINY_MODEL_CFG)) == set()
    hf_text = {**TINY_MODEL_CFG, "text_cfg": {"hf_model_name": "xlm-roberta-base", "hf_tokenizer_name": "x"}}
    assert folder_needs(_folder(tmp_path / "hf", hf_text)) == {"transformers"}
    timm_image = {**TINY_MODEL_CFG, "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "image_size": 224}}
    assert folder_needs(_folder(tmp_path / "timm", timm_image)) == {"timm"}
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "open_clip_config.json").write_text("{not json")
    assert folder_needs(str(broken)) == set(OPTIONAL)


SCRIPT = textwrap.dedent(
    """
    import sys, json
    import torch
    from dask_clip import models
    from dask_clip.models.spec import ModelSpec
    from dask_clip.models.open_clip_import import import_open_clip
    out = {}
    oc = models.get_model(ModelSpec(model_dir=sys.argv[1], device="cpu", precision="fp32"))
    out["after_open_clip_folder"] = ["transformers" in sys.modules, "timm" in sys.modules]
    hf = models.get_model(ModelSpec(model_dir=sys.argv[2], device="cpu", precision="fp32"))
    with torch.inference_mode():
        out["hf_width"] = int(hf.model.encode_image(torch.zeros(1, 3, *hf.preprocess.size)).shape[-1])
    out["hf_declared"] = hf.embed_dim
    open_clip = import_open_clip()
    out["restored"] = [open_clip.hf_model.transformers is not None, open_clip.timm_model.timm is not None]
    out["same_classes"] = [open_clip.model.HFTextEncoder is open_clip.hf_model.HFTextEncoder,
                           open_clip.model.TimmModel is open_clip.timm_model.TimmModel]
    cfg = {"embed_dim": 32, "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
           "timm_pool": "", "timm_proj": "linear", "image_size": 224},
           "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    timm_clip = open_clip.model.CLIP(**cfg)
    with torch.inference_mode():
        out["timm_width"] = int(timm_clip.encode_image(torch.zeros(1, 3, 224, 224)).shape[-1])
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_a_fresh_worker_imports_only_what_its_model_needs(tmp_path):
    from dask_clip.testing import write_model_dir, write_transformers_model_dir

    oc = write_model_dir(tmp_path / "oc")
    hf = write_transformers_model_dir(tmp_path / "hf")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(oc), str(hf)], capture_output=True, text=True, timeout=240, check=True
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["after_open_clip_folder"] == [False, False]
    assert out["hf_width"] == out["hf_declared"]
    assert out["restored"] == [True, True]
    assert out["same_classes"] == [True, True]
    assert out["timm_width"] == 32
