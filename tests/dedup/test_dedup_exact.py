"""Exact duplicates by content hash, checked against a plain Python first-occurrence pass."""

from __future__ import annotations

import hashlib

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from local_dask import THREADS

from dask_clip.dedup import exact_duplicates


def blobs(n: int = 500, distinct: int = 150, seed: int = 0) -> list[bytes | None]:
    rng = np.random.default_rng(seed)
    pool = [rng.bytes(int(rng.integers(50, 400))) for _ in range(distinct)]
    out: list[bytes | None] = [pool[int(i)] for i in rng.integers(0, distinct, n)]
    for i in rng.choice(n, 10, replace=False):
        out[int(i)] = None
    return out


def first_occurrence(values: list[bytes | None], labels: list) -> tuple[list[bool], list]:
    seen: dict[bytes, object] = {}
    dup, of = [], []
    for v, lab in zip(values, labels, strict=True):
        if v is None:
            dup.append(False), of.append(None)
        elif v in seen:
            dup.append(True), of.append(seen[v])
        else:
            seen[v] = lab
            dup.append(False), of.append(None)
    return dup, of


@pytest.mark.parametrize("kind", ["arrow", "object"])
@pytest.mark.parametrize("npartitions", [1, 4, 9])
def test_matches_first_occurrence(kind, npartitions):
    values = blobs()
    labels = [f"k{i}" for i in range(len(values))]
    col = (
        pd.array(values, dtype=pd.ArrowDtype(pa.binary()))
        if kind == "arrow"
        else pd.Series(values, dtype=object).to_numpy()
    )
    df = pd.DataFrame({"image": col, "v": np.arange(len(values))}, index=pd.Index(labels, dtype=object))
    with dask.config.set({**THREADS, "dataframe.convert-string": False}):
        ddf = dd.from_pandas(df, npartitions=npartitions, sort=False)
        out = exact_duplicates(ddf, "image", npartitions=3)
        assert out.npartitions == ddf.npartitions
        got = out.compute()
    dup, of = first_occurrence(values, labels)
    assert got.index.tolist() == df.index.tolist()
    assert got["exact_duplicate"].tolist() == dup
    assert [None if pd.isna(x) else x for x in got["exact_duplicate_of"]] == of
    expect_hash = [None if v is None else hashlib.sha256(v).hexdigest() for v in values]
    assert [None if pd.isna(h) else h for h in got["content_hash"]] == expect_hash
    pd.testing.assert_frame_equal(got[["image", "v"]], df, check_index_type=False)


def test_id_column_and_empty_partitions():
    values = [b"a", b"b", b"a", None, b"b", b"a"]
    df = pd.DataFrame({"image": pd.array(values, dtype=pd.ArrowDtype(pa.binary())), "id": np.arange(10, 16)})
    with dask.config.set({**THREADS, "dataframe.convert-string": False}):
        ddf = dd.from_pandas(df, npartitions=3, sort=False)
        ddf = dd.concat([ddf.partitions[0].head(0, npartitions=1, compute=False), ddf])
        got = exact_duplicates(ddf, id_column="id").compute()
    assert got["exact_duplicate"].tolist() == [False, False, True, False, True, True]
    assert got["exact_duplicate_of"].tolist()[2] == 10 and got["exact_duplicate_of"].tolist()[4] == 11
    assert str(got["exact_duplicate_of"].dtype) == "Int64"


def test_bad_arguments():
    df = pd.DataFrame({"image": pd.array([b"a"], dtype=pd.ArrowDtype(pa.binary())), "n": [1]})
    ddf = dd.from_pandas(df, npartitions=1)
    with pytest.raises(ValueError, match="columns are"):
        exact_duplicates(ddf, "img")
    with pytest.raises(TypeError, match="image bytes"):
        exact_duplicates(ddf, "n")
    with pytest.raises(ValueError, match="shuffle_method"):
        exact_duplicates(ddf, shuffle_method="fast")
