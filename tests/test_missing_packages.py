"""A transformers folder without transformers installed: one ImportError that says what to install."""

from __future__ import annotations

import sys

import pytest

from dask_clip.models.families._siglip_model import load_transformers_siglip
from dask_clip.models.families._transformers_files import transformers_image_config
from dask_clip.models.hf import load_transformers_clip


def test_transformers_clip_without_transformers_says_what_to_install(hf_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # what an uninstalled package looks like
    with pytest.raises(
        ImportError, match=r"holds a transformers CLIP model, which needs transformers .*'dask-clip\[hf\]'$"
    ):
        load_transformers_clip(hf_model_dir)


def test_transformers_siglip_without_transformers_says_what_to_install(hf_model_dir, monkeypatch):
    image = transformers_image_config(hf_model_dir)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(
        ImportError, match=r"holds a transformers SigLIP model, which needs transformers .*'dask-clip\[hf\]'$"
    ):
        load_transformers_siglip(hf_model_dir, image)
