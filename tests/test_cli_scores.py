"""``dask-clip embed`` with captions and scores, then ``dask-clip filter``, as users run them:
the CLI on the session cluster (in this process), real Parquet; the hub's offline message in a
subprocess of its own (huggingface_hub reads HF_HUB_OFFLINE once, at import)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_support import assert_same_rows, reference, run_cli, run_main, subprocess_env, write_image_parquet

from dask_clip.columns import embeddings_to_numpy
from dask_clip.heads import AestheticHead, NSFWHead, zero_shot_heads
from dask_clip.testing import write_aesthetic_weights, write_nsfw_weights

LOCAL = ("--n-workers", "1", "--dashboard-address", "127.0.0.1:0")
LABELS = ["a gradient", "a rectangle", "a photo"]


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory, wide_model_dir, client):
    """`dask-clip embed` with --text-column, both heads and --labels on img2dataset-like shards."""
    folder = tmp_path_factory.mktemp("scores")
    shards = write_image_parquet(folder / "shards", 4, 6, bad_every=7)
    aesthetic = write_aesthetic_weights(folder / "sac+logos+ava1-l14-linearMSE.pth")
    nsfw = write_nsfw_weights(folder / "clip_autokeras_binary_nsfw.pth")
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    out = folder / "embeddings"
    proc = run_main(
        "embed",
        str(shards),
        str(out),
        "--model-dir",
        wide_model_dir,
        "--text-column",
        "caption",
        "--aesthetic-model",
        str(aesthetic),
        "--nsfw-model",
        str(nsfw),
        "--labels",
        str(folder / "labels.txt"),
        "--label-probabilities",
        client=client,
    )
    heads = [
        AestheticHead(str(aesthetic)),
        NSFWHead(str(nsfw)),
        *zero_shot_heads(LABELS, probabilities_column="zero_shot_probabilities"),
    ]
    expected = reference(shards, wide_model_dir, text_column="caption", heads=heads)
    return {"folder": folder, "out": out, "proc": proc, "expected": expected}


def test_embed_writes_text_embeddings_and_every_score(scored_run):
    got = pd.read_parquet(scored_run["out"], dtype_backend="pyarrow")
    expected = scored_run["expected"]
    assert list(got.columns)[-10:] == [
        "embedding",
        "embedding_error",
        "text_embedding",
        "text_embedding_error",
        "clip_score",
        "aesthetic_score",
        "nsfw_score",
        "zero_shot_label",
        "zero_shot_probability",
        "zero_shot_probabilities",
    ]
    assert got["key"].tolist() == expected["key"].tolist()
    for column in ("embedding", "text_embedding", "zero_shot_probabilities"):
        a, b = embeddings_to_numpy(got[column]), embeddings_to_numpy(expected[column])
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b), atol=1e-5)
    for column in ("clip_score", "aesthetic_score", "nsfw_score", "zero_shot_probability"):
        np.testing.assert_allclose(
            got[column].to_numpy(dtype=np.float64, na_value=np.nan),
            expected[column].to_numpy(dtype=np.float64, na_value=np.nan),
            atol=1e-5,
        )
    assert got["zero_shot_label"].tolist() == expected["zero_shot_label"].tolist()
    assert got["embedding_error"].notna().sum() > 0 and got["clip_score"].isna().sum() > 0


def test_filter_command_keeps_what_pandas_keeps_and_prints_the_summary(scored_run, client):
    scored = pd.read_parquet(scored_run["out"], dtype_backend="pyarrow")
    # Thresholds at each score's median: every one of them removes rows.
    a, n, c = (float(scored[k].median()) for k in ("aesthetic_score", "nsfw_score", "clip_score"))
    label = scored["zero_shot_label"].mode()[0]
    out = scored_run["folder"] / "filtered"
    args = ["filter", str(scored_run["out"]), str(out), "--min-aesthetic", repr(a), "--max-nsfw", repr(n)]
    args += ["--min-clip-score", repr(c), "--keep-label", label]
    proc = run_main(*args, client=client)
    keep = (
        (scored["aesthetic_score"] >= a).fillna(False)
        & (scored["nsfw_score"] < n).fillna(False)
        & (scored["clip_score"] >= c).fillna(False)
        & (scored["zero_shot_label"] == label).fillna(False)
    ).astype(bool)
    got = pd.read_parquet(out, dtype_backend="pyarrow")
    assert_same_rows(got.reset_index(drop=True), scored[keep].reset_index(drop=True))
    lines = proc.stdout.splitlines()
    assert f"{len(scored)} rows: {int(keep.sum())} kept, {len(scored) - int(keep.sum())} removed" in lines
    row = next(line for line in lines if line.startswith("aesthetic_score >="))
    assert int(row.split()[3]) == int((~(scored["aesthetic_score"] >= a).fillna(False)).sum())
    again = run_main(*args, client=client)
    assert "wrote 0 partitions (4 already there)" in again.stdout
    assert f"{int(keep.sum())} kept" in again.stdout


def test_a_nemo_model_dir_through_the_cli(tmp_path, nemo_model_dir, client):
    info = json.loads(run_main("info", "--model-dir", nemo_model_dir, "--json").stdout)
    assert (info["kind"], info["layout"]) == ("transformers", "NeMo Curator model_dir")
    shards = write_image_parquet(tmp_path / "shards", 2, 3)
    run_main(
        "embed",
        str(shards),
        str(tmp_path / "o"),
        "--model-dir",
        nemo_model_dir,
        "--text-column",
        "caption",
        client=client,
    )
    got = pd.read_parquet(tmp_path / "o", dtype_backend="pyarrow")
    assert_same_rows(got, reference(shards, nemo_model_dir, text_column="caption"))


@pytest.mark.slow
def test_hf_hub_offline_tells_how_to_fetch_the_folder(tmp_path):
    shards = write_image_parquet(tmp_path / "shards", 1, 2)
    env = {**subprocess_env(), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    proc = run_cli(
        "embed",
        str(shards),
        str(tmp_path / "o"),
        "--model",
        "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        *LOCAL,
        check=False,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    assert "huggingface-cli download laion/CLIP-ViT-B-32-laion2B-s34B-b79K --local-dir DIR" in proc.stderr
    assert "--model-dir DIR" in proc.stderr
    assert not list(Path(tmp_path / "o").glob("part-*.parquet"))
