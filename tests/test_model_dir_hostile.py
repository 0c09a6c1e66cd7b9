"""Hostile model folders (issue 21, items 1 and 4): real folders whose configs ask for the folder's
own Python code, and whose weights or tokenizer files are FIFOs. No code may run (a module that
writes a marker file when imported is planted in each folder), and nothing may block: each
case is refused with a message that names the file, before any cluster starts."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from dask_clip.cli import main
from dask_clip.embed.text import get_tokenizer
from dask_clip.models import get_model
from dask_clip.models.model_dirs import check_no_remote_code, detect_model_dir
from dask_clip.models.spec import ModelSpec

EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
from transformers import CLIPTokenizer


class EvilTokenizer(CLIPTokenizer):
    pass
"""


def plant_code(folder: Path) -> Path:
    """A module in the folder that writes ``marker`` when imported, and a tokenizer config that
    points transformers' AutoTokenizer at it (auto_map), as a hostile hub repository would."""
    marker = folder.parent / f"{folder.name}-code-ran"
    (folder / "text.py").write_text(EVIL.format(marker=str(marker)))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    config["auto_map"] = {"AutoTokenizer": ["text.EvilTokenizer", None]}
    config_path.write_text(json.dumps(config))
    return marker


def run_with_deadline(fn, seconds: float = 60.0):
    """fn() in a thread: a call that blocks (a FIFO opened for reading) fails the test instead of
    hanging it."""
    out: dict = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as err:  # handed to the test
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture
def open_clip_hf_tokenizer_dir(tmp_path, text_model_dir) -> tuple[Path, Path]:
    """The tiny text model, its config naming an HF tokenizer (the folder's own files: CLIP's
    BPE as vocab.json + merges.txt) with code planted beside it."""
    folder = tmp_path / "open-clip-model"
    shutil.copytree(text_model_dir, folder)
    from dask_clip.testing.models import _clip_bpe

    vocab, merges = _clip_bpe()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77})
    )
    marker = plant_code(folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = "local"
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder, marker


def set_text_cfg(folder: Path, **entries) -> None:
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"].update(entries)
    (folder / "open_clip_config.json").write_text(json.dumps(config))


def test_open_clip_config_asking_for_remote_code_is_refused(open_clip_hf_tokenizer_dir):
    """The issue's case: text_cfg.tokenizer_kwargs.trust_remote_code made open_clip's
    get_tokenizer import the folder's text.py (in the CLI process for search --text)."""
    folder, marker = open_clip_hf_tokenizer_dir
    set_text_cfg(folder, tokenizer_kwargs={"trust_remote_code": True})
    with pytest.raises(ValueError, match=r"model_cfg\.text_cfg\.tokenizer_kwargs\.trust_remote_code=true"):
        detect_model_dir(folder)
    with pytest.raises(ValueError, match="never does"):
        ModelSpec(model_dir=str(folder)).validate()
    assert not marker.exists()


def test_open_clip_tokenizer_never_trusts_the_folder(open_clip_hf_tokenizer_dir):
    """Past the config check (a config changed after the model loaded), the tokenizer still
    cannot run code: dask_clip's trust_remote_code=False wins over the config's."""
    folder, marker = open_clip_hf_tokenizer_dir
    model = get_model(ModelSpec(model_dir=str(folder)))
    set_text_cfg(folder, tokenizer_kwargs={"trust_remote_code": True})  # after loading: a race
    with pytest.raises(ValueError, match="never does"):
        get_tokenizer(model)
    check_no_remote_code({"a": [{"trust_remote_code": False}]}, "x")  # false is no request
    set_text_cfg(folder, tokenizer_kwargs={})
    tokenizer = get_tokenizer(model)  # the auto_map is there, but the standard CLIPTokenizer serves
    ids = tokenizer(["a photo of a cat"])["text"]
    assert ids.shape[0] == 1 and int(ids[0, 0]) == 49406  # CLIP's start-of-text token
    assert not marker.exists()


def test_transformers_folder_never_runs_its_tokenizer_code(tmp_path, hf_model_dir):
    folder = tmp_path / "hf-model"
    shutil.copytree(hf_model_dir, folder)
    marker = plant_code(folder)
    model = get_model(ModelSpec(model_dir=str(folder)))
    tokenizer = get_tokenizer(model)
    assert "CLIPTokenizer" in tokenizer.name
    assert not marker.exists()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["trust_remote_code"] = True
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"tokenizer_config\.json sets trust_remote_code=true"):
        detect_model_dir(folder)
    assert not marker.exists()


@pytest.mark.parametrize("which", ["weights", "config", "tokenizer"])
def test_fifo_in_a_model_folder_is_refused_without_blocking(tmp_path, model_dir, hf_model_dir, which):
    """Before, a FIFO as the weights made `embed` wait forever (a live, blocked worker)."""
    source = hf_model_dir if which == "tokenizer" else model_dir
    folder = tmp_path / "model"
    shutil.copytree(source, folder)
    name = {
        "weights": "open_clip_model.safetensors",
        "config": "open_clip_config.json",
        "tokenizer": "vocab.json",
    }[which]
    (folder / name).unlink()
    os.mkfifo(folder / name)
    with pytest.raises(ValueError, match=f"{name} is a FIFO; weights, configs and tokenizer files must be regular"):
        run_with_deadline(lambda: detect_model_dir(folder))


def test_embed_with_a_fifo_as_weights_fails_before_the_cluster(tmp_path, model_dir, capsys):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    (folder / "open_clip_model.safetensors").unlink()
    os.mkfifo(folder / "open_clip_model.safetensors")
    images = tmp_path / "images"
    images.mkdir()
    from dask_clip.testing import encode_image, photo_crops

    (images / "a.jpg").write_bytes(encode_image(photo_crops(1, seed=1)[0]))
    status = run_with_deadline(
        lambda: main(["embed", str(images), str(tmp_path / "out"), "--model-dir", str(folder), "--n-workers", "1"])
    )
    assert status != 0
    err = capsys.readouterr().err
    assert "open_clip_model.safetensors is a FIFO" in err
    assert not (tmp_path / "out").exists()
