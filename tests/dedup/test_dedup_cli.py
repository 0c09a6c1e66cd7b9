"""``dask-clip dedup``'s dedup switches, through the CLI on the session cluster."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_support import run_main

from dask_clip.dedup import dedup_parquet

FLAGS = ("--eps", "0.05", "--n-clusters", "16", "--id-column", "key")


@pytest.fixture(scope="module")
def border_folder(tmp_path_factory, helpers):
    """The border set (near-duplicates planted across k-means borders) as 3 Parquet files."""
    x = helpers.make_border_set().x
    folder = tmp_path_factory.mktemp("border")
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]).cast(pa.list_(pa.float32()))
    table = pa.table({"key": pa.array([f"{i:05d}" for i in range(len(x))]), "embedding": emb})
    for i, part in enumerate(np.array_split(np.arange(len(x)), 3)):
        pq.write_table(table.take(pa.array(part)), folder / f"part-{i}.parquet")
    return folder


def flagged(folder) -> pd.Series:
    out = pd.read_parquet(folder, dtype_backend="pyarrow").set_index("key").sort_index()
    return out["duplicate"].astype(bool)


def test_border_aware_by_default_and_plain_semdedup_one_switch_away(border_folder, tmp_path, client):
    sample = ("--max-train-rows", "1500")  # k-means on a 1,500-row sample of the 3,200 rows
    budget = ("--max-memory", "256MiB")
    run_main("dedup", str(border_folder), str(tmp_path / "border"), *FLAGS, *sample, *budget, client=client)
    run_main("dedup", str(border_folder), str(tmp_path / "plain"), *FLAGS, *sample, "--plain-semdedup", client=client)
    for name, border_aware in (("ref-border", True), ("ref-plain", False)):  # the library: the same results
        dedup_parquet(
            str(border_folder),
            str(tmp_path / name),
            eps=0.05,
            n_clusters=16,
            id_column="key",
            border_aware=border_aware,
            max_train_rows=1500,
        )
    border, plain = flagged(tmp_path / "border"), flagged(tmp_path / "plain")
    pd.testing.assert_series_equal(border, flagged(tmp_path / "ref-border"))
    pd.testing.assert_series_equal(plain, flagged(tmp_path / "ref-plain"))
    assert border.sum() > plain.sum()  # the pairs split across clusters
    assert not (plain & ~border).any()  # border-aware only adds


def test_a_memory_budget_that_is_not_a_size_is_one_line(border_folder, tmp_path, client):
    proc = run_main(
        "dedup", str(border_folder), str(tmp_path / "x"), "--max-memory", "lots", client=client, check=False
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "dask-clip dedup: error: --max-memory='lots' is not a size; write bytes or e.g. '4GiB', '500MB'"
    ]
