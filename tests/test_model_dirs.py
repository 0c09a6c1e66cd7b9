"""model_dir kinds, detected from the files on the client: open_clip, transformers, NeMo Curator's root."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dask_clip import ImageEmbedder, ModelLoadError, ModelSpec
from dask_clip.cli import main
from dask_clip.models import get_model
from dask_clip.models.model_dirs import NEMO_CLIP_SUBDIR, detect_model_dir, transformers_image_config
from dask_clip.testing import write_model_dir


def test_each_layout_is_detected(model_dir, hf_model_dir, nemo_model_dir):
    open_clip_dir = detect_model_dir(model_dir)
    assert (open_clip_dir.kind, open_clip_dir.layout) == ("open_clip", "open_clip local-dir")
    assert [p.name for p in open_clip_dir.weights] == ["open_clip_model.safetensors"]
    hf = detect_model_dir(hf_model_dir)
    assert (hf.kind, hf.layout, hf.folder) == ("transformers", "transformers", Path(hf_model_dir))
    assert [p.name for p in hf.weights] == ["model.safetensors"]
    nemo = detect_model_dir(nemo_model_dir)
    assert (nemo.kind, nemo.layout) == ("transformers", "NeMo Curator model_dir")
    assert nemo.folder == Path(nemo_model_dir) / NEMO_CLIP_SUBDIR
    assert hf.embed_dim() == nemo.embed_dim() == 32


def test_a_folder_with_both_models_is_read_as_open_clip_reads_it(tmp_path, model_dir, hf_model_dir):
    """LAION's hub repositories hold open_clip's files and transformers' side by side."""
    both = tmp_path / "both"
    shutil.copytree(hf_model_dir, both)
    for f in Path(model_dir).iterdir():
        shutil.copy(f, both / f.name)
    assert detect_model_dir(both).kind == "open_clip"


def test_the_preprocessing_comes_from_the_folders_config(tmp_path, hf_model_dir):
    folder = tmp_path / "m"
    shutil.copytree(hf_model_dir, folder)
    config = transformers_image_config(folder)
    assert (config.size, config.resize_mode, config.interpolation) == ((64, 64), "shortest", "bicubic")
    assert config.mean == (0.48145466, 0.4578275, 0.40821073)
    cfg_path = folder / "preprocessor_config.json"
    published = json.loads(cfg_path.read_text())
    # transformers 5 writes {"shortest_edge": n} / {"height", "width"} and a bilinear model says 2.
    cfg_path.write_text(
        json.dumps(
            {
                **published,
                "size": {"shortest_edge": 64},
                "crop_size": {"height": 64, "width": 64},
                "resample": 2,
                "image_mean": [0.5, 0.5, 0.5],
            }
        )
    )
    config = transformers_image_config(folder)
    assert (config.size, config.interpolation, config.mean) == ((64, 64), "bilinear", (0.5, 0.5, 0.5))
    cfg_path.write_text(json.dumps({**published, "size": {"height": 48, "width": 80}, "do_center_crop": False}))
    assert (transformers_image_config(folder).size, transformers_image_config(folder).resize_mode) == (
        (48, 80),
        "squash",
    )
    # transformers 5's save_pretrained nests it in processor_config.json.
    cfg_path.unlink()
    (folder / "processor_config.json").write_text(json.dumps({"image_processor": {**published, "size": 64}}))
    assert transformers_image_config(folder).size == (64, 64)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"size": 256, "crop_size": 224}, "resize the shortest edge to 256, then crop 224x224"),
        ({"do_center_crop": False}, "without a centre crop"),
        ({"resample": 1}, r"resample=1; dask_clip reproduces 3 \(bicubic\) and 2 \(bilinear\)"),
        ({"rescale_factor": 0.5}, "rescale_factor=0.5"),
        ({"do_resize": False}, "do_resize=false"),
    ],
)
def test_preprocessing_dask_clip_cannot_reproduce_is_refused_on_the_client(tmp_path, hf_model_dir, change, match):
    folder = tmp_path / "m"
    shutil.copytree(hf_model_dir, folder)
    cfg = folder / "preprocessor_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), **change}))
    with pytest.raises(ValueError, match=match):
        ModelSpec(model_dir=str(folder)).validate()


def test_what_is_not_a_clip_folder_is_refused_with_the_layouts_named(tmp_path, hf_model_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="open_clip_config.json.*config.json.*openai/clip-vit-large-patch14"):
        ModelSpec(model_dir=str(tmp_path / "empty")).validate()
    blip = tmp_path / "blip"  # SigLIP is a family of its own (tests/test_families_siglip.py)
    shutil.copytree(hf_model_dir, blip)
    config = json.loads((blip / "config.json").read_text())
    (blip / "config.json").write_text(json.dumps({**config, "model_type": "blip"}))
    with pytest.raises(ValueError, match="model_type 'blip'.*CLIP.*SigLIP"):
        ModelSpec(model_dir=str(blip)).validate()
    bare = tmp_path / "no-weights"
    shutil.copytree(hf_model_dir, bare)
    (bare / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="holds no PyTorch weights.*refusing to use random weights"):
        ModelSpec(model_dir=str(bare)).validate()
    no_processor = tmp_path / "no-processor"
    shutil.copytree(hf_model_dir, no_processor)
    (no_processor / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no preprocessor_config.json or processor_config.json"):
        ModelSpec(model_dir=str(no_processor)).validate()


def test_transformers_weights_vanishing_after_validation_is_an_error_not_random(tmp_path, hf_model_dir):
    folder = tmp_path / "m"
    shutil.copytree(hf_model_dir, folder)
    spec = ModelSpec(model_dir=str(folder), device="cpu")
    spec.validate()
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="holds no PyTorch weights"):
        get_model(spec)


def test_transformers_folder_loads_the_files_weights(hf_model_dir, nemo_model_dir):
    """The loaded tensors are the file's, and NeMo's root loads the same model as its subfolder."""
    from safetensors.torch import load_file

    loaded = get_model(ModelSpec(model_dir=hf_model_dir, device="cpu"))
    assert loaded.kind == "transformers" and loaded.embed_dim == 32
    assert loaded.preprocess.size == (64, 64)
    on_disk = load_file(str(Path(hf_model_dir) / "model.safetensors"))
    state = loaded.model.clip.state_dict()
    assert on_disk.keys() <= state.keys()
    for name, tensor in on_disk.items():
        assert tensor.dtype == state[name].dtype
        assert bool((tensor == state[name]).all()), name
    nemo = get_model(ModelSpec(model_dir=nemo_model_dir, device="cpu"))
    nemo_state = nemo.model.clip.state_dict()
    assert all(bool((nemo_state[k] == v).all()) for k, v in state.items())


def test_the_head_width_check_reads_the_transformers_config(hf_model_dir, captioned_frame):
    import dask.dataframe as dd

    from dask_clip.testing import ProjectionHead

    ddf = dd.from_pandas(captioned_frame, npartitions=1)
    ImageEmbedder(model_dir=hf_model_dir, heads=[ProjectionHead(dim=32)])(ddf)
    with pytest.raises(ValueError, match="made for 768-d embeddings.*gives 32-d"):
        ImageEmbedder(model_dir=hf_model_dir, heads=[ProjectionHead(dim=768)])(ddf)


def test_info_reports_the_detected_kind(capsys, model_dir, hf_model_dir, nemo_model_dir, tmp_path):
    for folder, kind, layout in [
        (model_dir, "open_clip", "open_clip local-dir"),
        (hf_model_dir, "transformers", "transformers"),
        (nemo_model_dir, "transformers", "NeMo Curator model_dir"),
    ]:
        assert main(["info", "--model-dir", folder, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert (report["kind"], report["layout"]) == (kind, layout)
        assert report["embed_dim"] == 32
    assert main(["info", "--model-dir", nemo_model_dir]) == 0
    text = capsys.readouterr().out
    assert "NeMo Curator model_dir" in text and "openai/clip-vit-large-patch14" in text
    assert main(["info", "--model-dir", str(tmp_path / "nowhere")]) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_an_open_clip_folder_without_weights_is_still_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        detect_model_dir(write_model_dir(tmp_path / "m", weights=None))
