"""dedup_parquet: Parquet in, Parquet out, summary back (the CLI's entry point)."""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from local_dask import THREADS

from dask_clip.dedup import dedup_parquet, dedup_summary, semantic_dedup

ARGS = dict(n_clusters=10, seed=0, max_iter=20)


@pytest.fixture(scope="module")
def embeddings_dir(planted_df, tmp_path_factory) -> str:
    """Three Parquet files without a stored index, like the embed step writes."""
    d = tmp_path_factory.mktemp("emb")
    df = planted_df.reset_index()
    for i, part in enumerate(np.array_split(np.arange(len(df)), 3)):
        table = pa.Table.from_pandas(df.iloc[part], preserve_index=False)
        pq.write_table(table, d / f"part-{i}.parquet")
    return str(d)


def test_round_trip_with_row_numbers(embeddings_dir, planted_df, tmp_path):
    out_dir = tmp_path / "dedup"
    with dask.config.set(THREADS):
        summary = dedup_parquet(embeddings_dir, str(out_dir), eps=0.01, **ARGS)
        back = dd.read_parquet(str(out_dir), dtype_backend="pyarrow").compute()
        direct = semantic_dedup(dd.from_pandas(planted_df, npartitions=3, sort=False), **ARGS).compute()
    # rows numbered 0..n-1 in input order; duplicate_of names those numbers
    assert back.index.name == "row" and back.index.tolist() == list(range(len(planted_df)))
    assert back["key"].tolist() == planted_df.index.tolist()
    assert back["embedding"].dtype == pd.ArrowDtype(pa.list_(pa.float32()))
    np.testing.assert_array_equal(back["duplicate"].to_numpy(), direct["duplicate"].to_numpy())
    np.testing.assert_allclose(
        back["max_similarity"].to_numpy(dtype=np.float64, na_value=np.nan),
        direct["max_similarity"].to_numpy(dtype=np.float64),
        equal_nan=True,
    )
    flagged = direct["duplicate"].to_numpy()
    partner_keys = back["key"].to_numpy()[back["duplicate_of"][flagged].to_numpy(dtype=np.int64)]
    assert (partner_keys == direct["duplicate_of"][flagged].to_numpy()).all()
    assert list(summary.index) == [0.001, 0.01, 0.05]
    # Readable without dtype_backend too (pandas#57411 is worked around when writing).
    plain = pd.read_parquet(out_dir)
    assert len(plain) == len(back) and plain["duplicate"].tolist() == back["duplicate"].tolist()
    assert len(dd.read_parquet(str(out_dir)).compute()) == len(back)
    expect = dedup_summary(direct, [0.001, 0.01, 0.05])
    pd.testing.assert_frame_equal(summary, expect)


def test_drop_duplicates_and_id_column(embeddings_dir, tmp_path):
    out_dir = tmp_path / "kept"
    with dask.config.set(THREADS):
        summary = dedup_parquet(
            embeddings_dir, str(out_dir), eps=0.02, id_column="key", drop_duplicates=True, summary_eps=[0.02], **ARGS
        )
        back = dd.read_parquet(str(out_dir), dtype_backend="pyarrow").compute()
    assert list(summary.index) == [0.02]
    assert len(back) == summary.loc[0.02, "kept"] and not back["duplicate"].any()
    assert "row" not in back.columns


def test_bad_eps(embeddings_dir, tmp_path):
    with pytest.raises(ValueError, match="eps"):
        dedup_parquet(embeddings_dir, str(tmp_path / "x"), eps=-0.1)


def test_column_projected_read_of_many_files(planted_df, tmp_path):
    """Dask squashes a projected read of small files into fewer partitions than it reports."""
    df = planted_df.reset_index()
    for col in ("a", "b", "c"):
        df[col] = 1.0
    for i, part in enumerate(np.array_split(np.arange(len(df)), 8)):
        pq.write_table(pa.Table.from_pandas(df.iloc[part], preserve_index=False), tmp_path / f"p{i}.parquet")
    with dask.config.set(THREADS):
        ddf = dd.read_parquet(str(tmp_path), columns=["key", "embedding"], dtype_backend="pyarrow")
        assert ddf.map_partitions(len).compute().size < ddf.npartitions  # the squash happens
        got = semantic_dedup(ddf, **ARGS).compute()
        direct = semantic_dedup(dd.from_pandas(planted_df, npartitions=3, sort=False), **ARGS).compute()
    assert got["key"].tolist() == planted_df.index.tolist()
    np.testing.assert_array_equal(got["duplicate"].to_numpy(), direct["duplicate"].to_numpy())


def test_output_combines_with_itself(embeddings_dir):
    """``out[~out.duplicate]`` must not realign by index (labels repeat in every file here)."""
    with dask.config.set(THREADS):
        ddf = dd.read_parquet(embeddings_dir, dtype_backend="pyarrow")
        out = semantic_dedup(ddf, **ARGS)
        full = out.compute()
        assert not full.index.is_unique
        for _ in range(3):  # a wrong alignment shows up as a random mix-up
            kept = out[~out["duplicate"]].compute()
            assert not kept["duplicate"].any() and len(kept) == (~full["duplicate"]).sum()
            assert kept["key"].tolist() == full.loc[~full["duplicate"].to_numpy(), "key"].tolist()
        both = out.assign(twice=out["max_similarity"] * 2).compute()
        np.testing.assert_array_equal(both["twice"].to_numpy(), full["max_similarity"].to_numpy() * 2)


def test_a_rerun_resumes_and_another_job_is_refused(embeddings_dir, tmp_path):
    out_dir = tmp_path / "dedup"
    with dask.config.set(THREADS):
        first = dedup_parquet(embeddings_dir, str(out_dir), eps=0.01, **ARGS)
        parts = sorted(out_dir.glob("part-*.parquet"))
        stamps = [p.stat().st_mtime_ns for p in parts]
        again = dedup_parquet(embeddings_dir, str(out_dir), eps=0.01, **ARGS)  # all there: nothing rewritten
        assert [p.stat().st_mtime_ns for p in parts] == stamps
        pd.testing.assert_frame_equal(again, first)
        parts[1].unlink()  # an interrupted run: one file missing
        resumed = dedup_parquet(embeddings_dir, str(out_dir), eps=0.01, **ARGS)
        assert parts[1].exists() and [p.stat().st_mtime_ns for p in (parts[0], parts[2])] == [stamps[0], stamps[2]]
        pd.testing.assert_frame_equal(resumed, first)
        with pytest.raises(ValueError, match=r"different job \(eps: 0.01 there, 0.05 now.*--overwrite"):
            dedup_parquet(embeddings_dir, str(out_dir), eps=0.05, **ARGS)
        dedup_parquet(embeddings_dir, str(out_dir), eps=0.05, overwrite=True, **ARGS)
