"""The cuDF path (GPU): same answers as the pandas path. Skipped where cuDF is not installed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

cudf = pytest.importorskip("cudf")
dask_cudf = pytest.importorskip("dask_cudf")
torch = pytest.importorskip("torch")

import dask  # noqa: E402
import dask.dataframe as dd  # noqa: E402
from local_dask import THREADS  # noqa: E402

from dask_clip.backends import embedding_matrix  # noqa: E402
from dask_clip.dedup import (  # noqa: E402
    exact_duplicates,
    semantic_dedup,
    train_centroids,
)

pytestmark = pytest.mark.cudf

ARGS = dict(n_clusters=10, eps=0.01, seed=0, max_iter=20)


def to_cudf(df: pd.DataFrame) -> cudf.DataFrame:
    return cudf.DataFrame.from_arrow(pa.Table.from_pandas(df, preserve_index=False))


def test_embedding_tensor_is_a_view_of_the_leaves(planted):
    df = to_cudf(
        pd.DataFrame({"embedding": planted.x[:50][planted.valid[:50]].tolist()}).astype(
            {"embedding": pd.ArrowDtype(pa.list_(pa.float32()))}
        )
    )
    s = df["embedding"]
    x, valid = embedding_matrix(s)
    assert x.is_cuda and x.dtype == torch.float32 and bool(valid.all())
    np.testing.assert_array_equal(x.cpu().numpy(), planted.x[:50][planted.valid[:50]])
    assert x.data_ptr() == s.list.leaves.values.data.ptr  # zero-copy


def test_nulls_in_the_list_column(planted):
    pdf = pd.DataFrame(
        {
            "embedding": pd.arrays.ArrowExtensionArray(
                pa.array(
                    [None if np.isnan(r).any() else r.tolist() for r in planted.x[:300]], type=pa.list_(pa.float32())
                )
            )
        }
    )
    x, valid = embedding_matrix(to_cudf(pdf)["embedding"])
    np.testing.assert_array_equal(valid.cpu().numpy(), planted.valid[:300])
    np.testing.assert_array_equal(x.cpu().numpy(), planted.x[:300][planted.valid[:300]])


@pytest.mark.parametrize("border_aware", [True, False])
def test_semantic_dedup_matches_pandas(planted_df, border_aware):
    pdf = planted_df.reset_index()
    with dask.config.set(THREADS):
        ddf = dd.from_pandas(pdf, npartitions=4, sort=False)
        c = train_centroids(ddf, "embedding", ARGS["n_clusters"], max_iter=20, seed=0)
        kw = dict(ARGS, centroids=c, id_column="key", border_aware=border_aware)
        ref = semantic_dedup(ddf, **kw).compute()
        gdf = dask_cudf.from_cudf(to_cudf(pdf), npartitions=4)
        out = semantic_dedup(gdf, **kw)
        got = out.compute()
    assert isinstance(got, cudf.DataFrame)
    got = got.to_pandas()
    assert got["key"].tolist() == pdf["key"].tolist()
    np.testing.assert_array_equal(got["cluster"].to_numpy(), ref["cluster"].to_numpy())
    np.testing.assert_array_equal(got["duplicate"].to_numpy(), ref["duplicate"].to_numpy())
    flagged = ref["duplicate"].to_numpy()
    assert (got["duplicate_of"][flagged].to_numpy() == ref["duplicate_of"][flagged].to_numpy()).all()
    np.testing.assert_allclose(
        got["max_similarity"].to_numpy(dtype=np.float64, na_value=np.nan),
        ref["max_similarity"].to_numpy(dtype=np.float64),
        atol=1e-5,
        equal_nan=True,
    )


def test_border_pairs_and_budget_on_cudf(helpers):
    """Border-aware with a packed shuffle (max_memory) on cuDF partitions: the pandas answer."""
    bs = helpers.make_border_set()
    pdf = helpers.frame(bs).reset_index()
    kw = dict(centroids=bs.centroids, eps=0.05, id_column="key", max_memory="1MiB")
    with dask.config.set(THREADS):
        ref = semantic_dedup(dd.from_pandas(pdf, npartitions=3, sort=False), **kw).compute()
        got = semantic_dedup(dask_cudf.from_cudf(to_cudf(pdf), npartitions=3), **kw).compute().to_pandas()
    np.testing.assert_array_equal(got["duplicate"].to_numpy(), ref["duplicate"].to_numpy())
    flagged = ref["duplicate"].to_numpy()
    assert (got["duplicate_of"][flagged].to_numpy() == ref["duplicate_of"][flagged].to_numpy()).all()


def test_exact_duplicates_cudf():
    values = ["a", "b", "a", None, "b", "a"]  # cuDF reads binary as strings
    gdf = dask_cudf.from_cudf(cudf.DataFrame({"image": values, "id": list(range(6))}), npartitions=2)
    with dask.config.set(THREADS):
        got = exact_duplicates(gdf, id_column="id").compute().to_pandas()
    assert got["exact_duplicate"].tolist() == [False, False, True, False, True, True]
    assert got["exact_duplicate_of"].tolist()[2] == 0 and got["exact_duplicate_of"].tolist()[4] == 1
