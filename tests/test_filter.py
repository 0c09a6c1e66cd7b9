"""filter_parquet / dask-clip filter: thresholds on score columns, resumable, with a summary."""

from __future__ import annotations

import json

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dask_clip import embeddings_to_numpy, filter_parquet, write_parquet
from dask_clip.columns import EMBEDDING_DTYPE, SCORE_DTYPE
from dask_clip.filter import SUMMARY_FILE, filter_frame
from dask_clip.io.writer import MANIFEST

N = 120
LABELS = ["cat", "dog", "car"]


def scored_frame(seed: int = 0) -> pd.DataFrame:
    """What `dask-clip embed` with scores writes: embeddings and score columns, some rows null
    (failed images) in every score."""
    rng = np.random.default_rng(seed)
    failed = rng.random(N) < 0.1

    def score(values: np.ndarray) -> pd.Series:
        return pd.Series(pd.arrays.ArrowExtensionArray(pa.array(values.astype(np.float32), mask=failed)))

    embeddings = rng.standard_normal((N, 8)).astype(np.float32)
    return pd.DataFrame(
        {
            "key": pd.Series([f"{i:04d}" for i in range(N)], dtype=pd.ArrowDtype(pa.string())),
            "embedding": pd.arrays.ArrowExtensionArray(
                pa.array(list(embeddings), type=pa.list_(pa.float32()), mask=failed)
            ),
            "aesthetic_score": score(rng.uniform(1, 10, N)),
            "nsfw_score": score(rng.uniform(0, 1, N)),
            "clip_score": score(rng.uniform(0.05, 0.45, N)),
            "zero_shot_label": pd.Series(
                pa.array([LABELS[i] for i in rng.integers(0, 3, N)], mask=failed), dtype=pd.ArrowDtype(pa.string())
            ),
        }
    )


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    frame = scored_frame()
    folder = tmp_path_factory.mktemp("scored") / "embeddings"
    write_parquet(dd.from_pandas(frame, npartitions=5), folder)
    return frame, folder


def reference(frame: pd.DataFrame) -> pd.Series:
    """The rows the thresholds below keep, by plain pandas."""
    return (
        (frame["aesthetic_score"] >= 5).fillna(False)
        & (frame["nsfw_score"] < 0.5).fillna(False)
        & (frame["clip_score"] >= 0.28).fillna(False)
        & frame["zero_shot_label"].isin(["cat", "dog"]).fillna(False)
    ).astype(bool)


THRESHOLDS = dict(min_aesthetic=5, max_nsfw=0.5, min_clip_score=0.28, labels=["cat", "dog"])


def test_filter_keeps_what_pandas_keeps_and_counts_each_threshold(scored, tmp_path):
    frame, folder = scored
    summary = filter_parquet(folder, tmp_path / "kept", **THRESHOLDS)
    keep = reference(frame)
    got = pd.read_parquet(tmp_path / "kept", dtype_backend="pyarrow")
    assert got["key"].tolist() == frame.loc[keep, "key"].tolist()  # the rows, in order
    assert got["embedding"].dtype == EMBEDDING_DTYPE and got["aesthetic_score"].dtype == SCORE_DTYPE
    np.testing.assert_array_equal(
        embeddings_to_numpy(got["embedding"]), embeddings_to_numpy(frame.loc[keep, "embedding"])
    )
    assert pd.read_parquet(tmp_path / "kept")["embedding"].dtype == object  # plain pandas reads it too
    assert len(list((tmp_path / "kept").glob("part-*.parquet"))) == 5
    assert (summary.rows, summary.kept, summary.written) == (N, int(keep.sum()), 5)
    failing = {
        "aesthetic_score >= 5": ~(frame["aesthetic_score"] >= 5).fillna(False),
        "nsfw_score < 0.5": ~(frame["nsfw_score"] < 0.5).fillna(False),
        "clip_score >= 0.28": ~(frame["clip_score"] >= 0.28).fillna(False),
        "zero_shot_label in ['cat', 'dog']": ~frame["zero_shot_label"].isin(["cat", "dog"]).fillna(False),
    }
    assert summary.rules == list(failing)
    assert summary.removed == [int(f.sum()) for f in failing.values()]
    nulls = int(frame["aesthetic_score"].isna().sum())
    assert nulls > 0 and summary.missing == [nulls] * 4  # a row with no score is removed, and counted as such
    fails = np.array([f.to_numpy(dtype=bool) for f in failing.values()])
    assert summary.only == [int((f & (fails.sum(axis=0) == 1)).sum()) for f in fails]
    table = summary.to_string()
    assert "aesthetic_score >= 5" in table and f"{N} rows: {int(keep.sum())} kept" in table


def test_a_rerun_resumes_and_a_different_filter_is_refused(scored, tmp_path):
    frame, folder = scored
    out = tmp_path / "kept"
    first = filter_parquet(folder, out, **THRESHOLDS)
    (out / "part-00002.parquet").unlink()  # an interrupted run
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    again = filter_parquet(folder, out, **THRESHOLDS)
    assert (again.written, again.skipped) == (1, 4)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet") if p.name in before} == before
    assert (again.kept, again.removed) == (first.kept, first.removed)
    assert pd.read_parquet(out)["key"].tolist() == frame.loc[reference(frame), "key"].tolist()
    done = filter_parquet(folder, out, **THRESHOLDS)  # nothing left: the stored summary
    assert (done.written, done.kept, done.only) == (0, first.kept, first.only)
    assert json.loads((out / SUMMARY_FILE).read_text())["kept"] == first.kept
    assert json.loads((out / MANIFEST).read_text())["job"]["command"] == "filter"
    with pytest.raises(ValueError, match="holds the output of a different job"):
        filter_parquet(folder, out, min_aesthetic=6)
    redone = filter_parquet(folder, out, min_aesthetic=6, overwrite=True)
    assert redone.kept == int((frame["aesthetic_score"] >= 6).fillna(False).sum())


def test_bad_thresholds_and_missing_columns_fail_before_anything_runs(scored, tmp_path):
    _, folder = scored
    with pytest.raises(ValueError, match="give at least one threshold"):
        filter_parquet(folder, tmp_path / "o")
    with pytest.raises(TypeError, match="min_aesthetic must be a finite number"):
        filter_parquet(folder, tmp_path / "o", min_aesthetic="5")
    with pytest.raises(ValueError, match="labels must be a non-empty list"):
        filter_parquet(folder, tmp_path / "o", labels="cat")
    with pytest.raises(ValueError, match=r"columns \['score'\] are not in the input"):
        filter_parquet(folder, tmp_path / "o", min_aesthetic=5, aesthetic_column="score")
    assert not (tmp_path / "o").exists()


def test_filter_frame_is_lazy_python(scored):
    frame, folder = scored
    ddf = dd.read_parquet(folder, dtype_backend="pyarrow")
    kept = filter_frame(ddf, **THRESHOLDS)
    assert kept.npartitions == ddf.npartitions
    assert kept.compute()["key"].tolist() == frame.loc[reference(frame), "key"].tolist()


def test_filter_on_a_real_cluster(client, scored, tmp_path):
    frame, folder = scored
    summary = filter_parquet(folder, tmp_path / "kept", **THRESHOLDS)
    assert summary.kept == int(reference(frame).sum())
    assert pd.read_parquet(tmp_path / "kept")["key"].tolist() == frame.loc[reference(frame), "key"].tolist()
