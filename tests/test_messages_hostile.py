"""Messages of issue 21, item 8, each through the CLI in process (one line on stderr) or the
function the CLI calls: before, `filter` on a text score column printed pandas internals, `--max-nsfw
2` and `-1` were accepted (`-1` removed every row), a pickled non-tensor weights file quoted
torch's advice to load it with weights_only=False, and a missing key printed a KeyError in quotes
with a resume hint from a command that writes nothing."""

from __future__ import annotations

import pathlib
import shutil

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from cli_support import run_main

from dask_clip import write_parquet
from dask_clip.cli import main
from dask_clip.cli.failures import explain
from dask_clip.errors import ModelLoadError
from dask_clip.models import get_model
from dask_clip.models.spec import ModelSpec


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    """Scores as `embed` writes them, plus a score column that holds text."""
    n = 20
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "nsfw_score": pd.Series(rng.uniform(0, 1, n).astype(np.float32), dtype=pd.ArrowDtype(pa.float32())),
            "aesthetic_score": pd.Series([f"{v:.2f}" for v in rng.uniform(1, 10, n)], dtype=pd.ArrowDtype(pa.string())),
        }
    )
    folder = tmp_path_factory.mktemp("scores") / "in"
    write_parquet(dd.from_pandas(frame, npartitions=2), folder)
    return str(folder)


@pytest.mark.parametrize("value", ["2", "-1", "0"])
def test_max_nsfw_must_be_a_probability(scores, tmp_path, capsys, value):
    status = main(["filter", scores, str(tmp_path / "out"), f"--max-nsfw={value}"])
    assert status == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"dask-clip filter: error: max_nsfw={float(value)!r} must be a probability in (0, 1] (NeMo Curator uses 0.5)"
    )
    assert not (tmp_path / "out").exists()


def test_filter_on_a_text_score_column_says_so(scores, tmp_path, client):
    proc = run_main("filter", scores, str(tmp_path / "out"), "--min-aesthetic", "5", client=client, check=False)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith(
        "dask-clip filter: error: column 'aesthetic_score' holds string, not numbers: it cannot be compared with aesthetic_score >= 5;"
    )
    assert not any("Traceback" in line or "pandas" in line for line in err)
    assert run_main("filter", scores, str(tmp_path / "ok"), "--max-nsfw", "0.5", client=client).returncode == 0


def test_pickled_objects_in_weights_are_refused_in_plain_words(tmp_path, model_dir):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    (folder / "open_clip_model.safetensors").unlink()
    torch.save({"visual.proj": pathlib.PurePosixPath("/not/a/tensor")}, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(ModelLoadError) as caught:
        get_model(ModelSpec(model_dir=str(folder)))
    message = str(caught.value)
    assert "holds Python objects other than tensors" in message and "refused" in message
    assert "weights_only=False" not in message and "likely succeed" not in message


def test_a_missing_key_is_one_plain_line():
    line = explain(KeyError("keys not in the index (or their rows had no embedding): ['nope']"))
    assert line == "keys not in the index (or their rows had no embedding): ['nope']"


@pytest.mark.slow
@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_a_hub_model_without_network_fails_at_once(tmp_path, env):
    """Before: huggingface_hub's retries took 34 s here (60-109 s in the issue) to fail with a
    download error; now the hub is probed first (about 3 s at most) and the message says why."""
    import os
    import subprocess
    import sys

    code = (
        "from dask_clip.models import get_model; from dask_clip.models.spec import ModelSpec\n"
        "try:\n    get_model(ModelSpec('hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K'))\n"
        "except Exception as err:\n    print(type(err).__name__, err)\n"
    )
    root = str(pathlib.Path(__file__).resolve().parents[1])
    environment = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": root, **env}
    out = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=300)
    assert out.stdout.startswith("ModelLoadError could not load 'hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K'")
    why = "HF_HUB_OFFLINE is set" if "HF_HUB_OFFLINE" in env else "http://127.0.0.1:9 cannot be reached"
    assert f"it is not in the local Hugging Face cache and {why}" in out.stdout
