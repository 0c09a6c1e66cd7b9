"""Config objects where signatures were copied: DedupConfig, ClusterOptions, EmbedSettings and
the embedders' shared ModelSettings; the old keyword arguments still work and mean the same."""

from __future__ import annotations

import dataclasses

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dask_clip import ImageEmbedder, TextEmbedder
from dask_clip.dedup import DedupConfig, semantic_dedup
from dask_clip.embed.jobs import EmbedSettings, embed_settings
from dask_clip.embed.model_settings import ModelSettings
from dask_clip.runtime.cluster import ClusterOptions, plan_local_cluster

MACHINE = {"n_gpus": 0, "dask_cuda_installed": False, "cores": 8}


def test_cluster_options_plan_as_the_keywords_do():
    by_keywords = plan_local_cluster("cpu", n_workers=2, torch_threads=3, processes=False, **MACHINE)
    options = ClusterOptions(kind="cpu", n_workers=2, torch_threads=3, overrides={"processes": False})
    assert plan_local_cluster(options=options, **MACHINE) == by_keywords
    assert ClusterOptions.of(kind="cpu", n_workers=2, torch_threads=3, processes=False) == options
    assert by_keywords.options["n_workers"] == 2 and "host" not in by_keywords.options  # in-process: no host
    # keywords override the object
    assert plan_local_cluster(options=options, n_workers=1, **MACHINE).options["n_workers"] == 1
    with pytest.raises(ValueError, match="kind"):
        plan_local_cluster(options=ClusterOptions(kind="tpu"), **MACHINE)


def test_dedup_config_gives_what_the_keywords_give():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 8)).astype(np.float32)
    x[30:40] = x[:10] + 1e-4  # near-copies
    column = pd.array(list(x), dtype=pd.ArrowDtype(pa.list_(pa.float32())))
    ddf = dd.from_pandas(pd.DataFrame({"embedding": column}), npartitions=3)
    keywords = semantic_dedup(ddf, n_clusters=1, eps=0.01, seed=1).compute()
    config = semantic_dedup(ddf, DedupConfig(n_clusters=1, eps=0.01, seed=1)).compute()
    pd.testing.assert_frame_equal(config, keywords)
    dup = keywords["duplicate"].to_numpy()
    # brute force: of each planted pair exactly one is flagged, no other row is
    assert (dup[:10] ^ dup[30:40]).all() and not dup[10:30].any() and not dup[40:].any()
    with pytest.raises(TypeError, match=r"unexpected dedup arguments \['n_cluster'\]"):
        semantic_dedup(ddf, n_cluster=2)


def test_embed_settings_refuse_unknown_names_and_keep_the_defaults():
    assert embed_settings() == EmbedSettings()
    assert embed_settings(EmbedSettings(partition_size=8), overwrite=True) == EmbedSettings(
        partition_size=8, overwrite=True
    )
    with pytest.raises(TypeError, match=r"unexpected arguments \['partitions'\]"):
        embed_settings(partitions=3)


def test_the_embedders_share_their_model_fields_in_the_same_order():
    shared = [f.name for f in dataclasses.fields(ModelSettings)]
    assert shared[:3] == ["model", "pretrained", "model_dir"] and len(shared) == 9
    assert [f.name for f in dataclasses.fields(ImageEmbedder)][:9] == shared
    assert [f.name for f in dataclasses.fields(TextEmbedder)][:9] == shared
    # positional construction as before, and the same spec for the same model
    image = ImageEmbedder("ViT-B-32", None, None, "fp32", "cpu")
    text = TextEmbedder("ViT-B-32", None, None, "fp32", "cpu")
    assert image.spec == text.spec and image.fingerprint()["model"] == text.fingerprint()["model"]
    with pytest.raises(ValueError, match="model_inference_batch_size"):
        TextEmbedder(model_inference_batch_size=0).validate()
