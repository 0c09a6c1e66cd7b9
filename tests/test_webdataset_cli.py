"""`dask-clip embed` on WebDataset tar shards: detected, embedded, resumed per shard."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cli_support import assert_same_rows, picture, run_main
from test_webdataset import write_img2dataset_shard

from dask_clip import ImageEmbedder, read_webdataset
from dask_clip.io.writer import part_name
from dask_clip.testing import encode_image


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    rng = np.random.default_rng(7)
    small_images = {f"{i:09d}": ("jpg", encode_image(picture(rng), quality=90)) for i in range(12)}
    folder = tmp_path_factory.mktemp("tar-shards")
    keys = sorted(small_images)
    for shard in range(3):
        write_img2dataset_shard(folder, shard, {k: small_images[k] for k in keys[shard * 4 : shard * 4 + 4]}, [])
    return folder


def test_tar_shards_embed_like_their_images_and_resume(shards, model_dir, tmp_path, client):
    out = tmp_path / "out"
    args = ("embed", str(shards / "*.tar"), str(out), "--model-dir", model_dir)
    proc = run_main(*args, client=client)
    assert "wrote 3 partitions (0 already there), 12 images, 0 errors" in proc.stdout
    got = pd.read_parquet(out, dtype_backend="pyarrow")
    expected = ImageEmbedder(model_dir=model_dir).embed_partition(read_webdataset(str(shards / "*.tar")).compute())
    assert_same_rows(got.reset_index(drop=True), expected.reset_index(drop=True))
    assert got["status"].eq("success").all() and got["width"].eq(64).all()  # img2dataset's sidecar, joined
    (out / part_name(1, 3)).unlink()  # an interrupted run: one shard missing
    resumed = run_main(*args, client=client)
    assert "wrote 1 partitions (2 already there), 4 images" in resumed.stdout
    assert_same_rows(pd.read_parquet(out, dtype_backend="pyarrow").reset_index(drop=True), got)
    (shards / "00003.tar").write_bytes((shards / "00000.tar").read_bytes())  # the shard list changed
    try:
        refused = run_main(*args, client=client, check=False)
        assert refused.returncode == 1 and "different job" in refused.stderr and "shards" in refused.stderr
    finally:
        (shards / "00003.tar").unlink()
