"""The ``dask_clip`` namespace of dask.config: shipped defaults, environment variables,
dask.config.set, explicit arguments winning, and ``dask-clip info --config``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dask.config
import pytest

from dask_clip import ImageEmbedder, TextEmbedder, config
from dask_clip.cli import build_parser, main
from dask_clip.image.decode import DEFAULT_DECODE_BUDGET, DEFAULT_MAX_IMAGE_PIXELS
from dask_clip.io.fetch import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_PROTOCOLS, DEFAULT_READ_TIMEOUT
from dask_clip.runtime.watchdog import DEFAULT_WORKER_TIMEOUT
from dask_clip.validation import DEFAULT_BATCH_SIZE


def test_shipped_defaults_are_the_librarys_constants():
    assert config.get("batch-size") == DEFAULT_BATCH_SIZE
    assert config.get("precision") == "auto"
    assert config.get("read.max-image-bytes") == DEFAULT_MAX_IMAGE_BYTES
    assert config.get("read.max-image-pixels") == DEFAULT_MAX_IMAGE_PIXELS
    assert config.get("read.max-decode-bytes") == DEFAULT_DECODE_BUDGET
    assert config.get("read.timeout") == DEFAULT_READ_TIMEOUT
    assert tuple(config.get("read.allowed-protocols")) == DEFAULT_PROTOCOLS
    assert config.get("watchdog.worker-timeout") == DEFAULT_WORKER_TIMEOUT
    assert config.get("model-cache") is None


def test_dask_config_set_fills_what_the_caller_left_out():
    with dask.config.set(
        {
            "dask_clip.batch-size": 7,
            "dask_clip.precision": "bf16",
            "dask_clip.read.timeout": 3.5,
            "dask_clip.read.allowed-protocols": ["file", "https"],
        }
    ):
        embedder = ImageEmbedder(pretrained=None)
        explicit = ImageEmbedder(pretrained=None, model_inference_batch_size=5, precision="fp32", read_timeout=9.0)
        text = TextEmbedder(pretrained=None)
    assert embedder.model_inference_batch_size == 7
    assert embedder.precision == "bf16"
    assert embedder.read_timeout == 3.5
    assert embedder.allowed_protocols == ("file", "https")
    assert text.model_inference_batch_size == 7
    # explicit arguments win
    assert (explicit.model_inference_batch_size, explicit.precision, explicit.read_timeout) == (5, "fp32", 9.0)
    # read when the object is made, not when the module was imported
    assert ImageEmbedder(pretrained=None).model_inference_batch_size == DEFAULT_BATCH_SIZE


def test_a_bad_configured_value_is_refused_like_a_bad_argument():
    with dask.config.set({"dask_clip.batch-size": 0}):
        embedder = ImageEmbedder(pretrained=None)
    with pytest.raises(ValueError, match="model_inference_batch_size"):
        embedder.validate()


def test_environment_variables_nest_on_double_underscores():
    env = {
        "DASK_CLIP__BATCH_SIZE": "64",
        "DASK_CLIP__READ__TIMEOUT": "5",
        "DASK_CLIP__MODEL_CACHE": "/models",
        "HOME": "/x",
    }
    assert config._from_env(env) == {"dask_clip": {"batch_size": 64, "read": {"timeout": 5}, "model_cache": "/models"}}
    assert config._from_env({"PATH": "/bin"}) == {}


def test_cli_defaults_follow_the_config_and_options_win(tmp_path):
    with dask.config.set({"dask_clip.batch-size": 12, "dask_clip.read.timeout": 4.0}):
        parser = build_parser()
    args = parser.parse_args(["embed", "in.parquet", "out"])
    assert (args.batch_size, args.read_timeout) == (12, 4.0)
    args = parser.parse_args(["embed", "in.parquet", "out", "--batch-size", "3"])
    assert args.batch_size == 3


def test_info_prints_the_effective_values(capsys):
    with dask.config.set({"dask_clip.batch-size": 48}):
        assert main(["info", "--config", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["batch-size"] == 48
    assert printed["read.timeout"] == DEFAULT_READ_TIMEOUT
    assert main(["info", "--config"]) == 0
    assert "batch-size" in capsys.readouterr().out


@pytest.mark.slow
def test_environment_variables_reach_a_fresh_process():
    env = {**os.environ, "DASK_CLIP__BATCH_SIZE": "64", "DASK_DASK_CLIP__READ__TIMEOUT": "7.5"}
    out = subprocess.run(
        [sys.executable, "-m", "dask_clip.cli", "info", "--config", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    printed = json.loads(out)
    assert printed["batch-size"] == 64
    assert printed["read.timeout"] == 7.5
    assert "torch" not in out
