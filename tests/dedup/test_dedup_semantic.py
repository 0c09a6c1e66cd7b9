"""semantic_dedup end to end against brute force (NumPy, float64).

Most tests here run plain SemDeDup (``border_aware=False``, NeMo Curator's and the paper's
algorithm) and check it against a brute force *within clusters*: the switch must keep giving
exactly that answer. Border-aware runs are checked against brute force over all pairs in
``test_dedup_border.py``; here only on the boundary pairs that plain SemDeDup misses.
"""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from local_dask import THREADS

from dask_clip.dedup import (
    dedup_summary,
    duplicate_pairs,
    keep_masks,
    semantic_dedup,
    train_centroids,
)

K = 10
ARGS = dict(n_clusters=K, eps=0.01, seed=0, max_iter=20, border_aware=False)


@pytest.fixture(scope="module")
def source(planted_df: pd.DataFrame) -> pd.DataFrame:
    """The input as Dask sees it (dask turns the str index into string[pyarrow])."""
    return dd.from_pandas(planted_df, npartitions=5, sort=False).compute()


@pytest.fixture(scope="module")
def result(planted_df: pd.DataFrame) -> pd.DataFrame:
    ddf = dd.from_pandas(planted_df, npartitions=5, sort=False)
    with dask.config.set(THREADS):
        return semantic_dedup(ddf, **ARGS).compute()


@pytest.fixture(scope="module")
def reference(planted, planted_df, result, helpers):
    """Brute force with the same centroids (k-means is seeded and sample-by-position)."""
    ddf = dd.from_pandas(planted_df, npartitions=5, sort=False)
    c = train_centroids(ddf, "embedding", K, max_iter=ARGS["max_iter"], seed=0).astype(np.float64)
    x = np.where(planted.valid[:, None], planted.x, 0).astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
    labels = np.argmax(x @ c.T, axis=1)
    keys = np.einsum("ij,ij->i", x, c[labels]).astype(np.float32)  # "hard": farthest first
    best, partner = helpers.brute_force(planted.x, planted.valid, labels, keys)
    return labels, best, partner


def test_rows_index_columns_and_dtypes(source, result):
    assert result.index.equals(source.index)
    assert list(result.columns) == [*source.columns, "cluster", "max_similarity", "duplicate", "duplicate_of"]
    pd.testing.assert_frame_equal(result[source.columns], source)
    assert result["cluster"].dtype == np.int32
    assert result["max_similarity"].dtype == np.float32
    assert result["duplicate"].dtype == bool
    assert result["duplicate_of"].dtype == source.index.dtype


def test_matches_brute_force_within_clusters(planted, result, reference):
    labels, best, partner = reference
    valid = planted.valid
    assert (result["cluster"].to_numpy()[valid] == labels[valid]).all()
    got = result["max_similarity"].to_numpy()
    assert np.array_equal(np.isnan(got), np.isnan(best))
    np.testing.assert_allclose(got[valid], best[valid], atol=2e-6, equal_nan=True)
    flagged = result["duplicate"].to_numpy()
    truth = np.nan_to_num(best, nan=-2) >= 1 - 0.01
    assert truth.sum() > 60
    assert np.array_equal(flagged, truth), "flagged set differs from brute force"
    # the partner of every duplicate is brute force's argmax, named by index label
    names = result.index.to_numpy()
    assert (result["duplicate_of"].to_numpy()[flagged] == names[partner[flagged]]).all()


def check_recall(planted, out, helpers, label, capsys):
    """Misses (both rows of a near-duplicate pair kept) may only be pairs split across clusters."""
    pairs = helpers.all_near_pairs(planted.x, planted.valid, 0.01)
    cluster = out["cluster"].to_numpy()
    flagged = out["duplicate"].to_numpy()
    same = cluster[pairs[:, 0]] == cluster[pairs[:, 1]]
    missed = ~(flagged[pairs[:, 0]] | flagged[pairs[:, 1]])
    recall = 1 - missed.mean()
    with capsys.disabled():
        print(
            f"\n[dedup {label}] near-duplicate pairs (cos >= 0.99): {len(pairs)}, split across "
            f"clusters: {int((~same).sum())}, missed (both kept): {int(missed.sum())}, "
            f"recall: {recall:.4f}"
        )
    assert not (missed & same).any()  # every within-cluster pair loses one of its rows
    # nothing flagged that has no near-duplicate at all
    has_near = np.zeros(len(flagged), bool)
    has_near[pairs.ravel()] = True
    assert not (flagged & ~has_near).any()
    return pairs, same, recall


def test_recall_and_split_pairs(planted, result, helpers, capsys):
    pairs, _same, recall = check_recall(planted, result, helpers, f"k={K}", capsys)
    assert len(pairs) >= 60 and recall >= 0.99
    cluster, flagged = result["cluster"].to_numpy(), result["duplicate"].to_numpy()
    for g in planted.groups:  # each planted group (a clique) keeps exactly one row
        if len(set(cluster[g])) == 1:
            assert flagged[g].sum() == len(g) - 1


def straddling(planted, planted_df, helpers):
    """The planted set plus 5 pairs straddling the boundary of two given centroids."""
    ddf = dd.from_pandas(planted_df, npartitions=3, sort=False)
    c = train_centroids(ddf, "embedding", K, max_iter=ARGS["max_iter"], seed=0)
    rows = []
    for a, b in [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]:
        mid = c[a] + c[b]
        mid /= np.linalg.norm(mid)
        step = 0.04 * (c[a] - c[b]) / np.linalg.norm(c[a] - c[b])  # cosine(u, v) about 0.997
        rows += [(mid + step) / np.linalg.norm(mid + step), (mid - step) / np.linalg.norm(mid - step)]
    x = np.concatenate([planted.x, np.array(rows, np.float32)])
    more = type(planted)(x, np.concatenate([planted.valid, np.ones(len(rows), bool)]), [], np.empty((0, 2)))
    return more, helpers.frame(more), c


def test_split_pairs_are_the_only_misses(planted, planted_df, helpers, capsys):
    """Plain SemDeDup: pairs straddling the boundary of two centroids split, and are missed."""
    more, df, c = straddling(planted, planted_df, helpers)
    with dask.config.set(THREADS):
        out = semantic_dedup(dd.from_pandas(df, npartitions=4, sort=False), **ARGS, centroids=c).compute()
    cl = out["cluster"].to_numpy()
    n = len(planted.x)
    assert all(cl[n + 2 * i] != cl[n + 2 * i + 1] for i in range(5))  # really split
    pairs, same, recall = check_recall(more, out, helpers, "straddling pairs, plain", capsys)
    assert (~same).sum() == 5 and recall == pytest.approx(1 - 5 / len(pairs))


def test_border_aware_finds_the_split_pairs(planted, planted_df, helpers, capsys):
    """The same 5 straddling pairs, border-aware (the default): all found, nothing else changes."""
    more, df, c = straddling(planted, planted_df, helpers)
    ddf = dd.from_pandas(df, npartitions=4, sort=False)
    with dask.config.set(THREADS):
        plain = semantic_dedup(ddf, **ARGS, centroids=c).compute()
        out = semantic_dedup(ddf, **{**ARGS, "border_aware": True}, centroids=c).compute()
    n = len(planted.x)
    _, same, recall = check_recall(more, out, helpers, "straddling pairs, border-aware", capsys)
    assert (~same).sum() == 5 and recall == 1.0
    # each straddling pair: exactly one row flagged, naming the other, across the border
    names = out.index.to_numpy()
    for i in range(5):
        a, b = n + 2 * i, n + 2 * i + 1
        flagged = out["duplicate"].to_numpy()[[a, b]]
        assert flagged.sum() == 1
        dup, kept = (a, b) if flagged[0] else (b, a)
        assert out["duplicate_of"].iloc[dup] == names[kept]
        assert out["cluster"].iloc[dup] != out["cluster"].iloc[kept]
    # every other row: exactly the plain answer
    rest = np.ones(len(out), bool)
    rest[n:] = False
    pd.testing.assert_frame_equal(out[rest], plain[rest])


def test_nulls(planted, result):
    nulls = ~planted.valid
    assert nulls.sum() > 0
    assert (result["cluster"].to_numpy()[nulls] == -1).all()
    assert result["max_similarity"][nulls].isna().all()
    assert not result["duplicate"][nulls].any()
    assert result["duplicate_of"][nulls].isna().all()
    assert (result["cluster"].to_numpy()[~nulls] >= 0).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda df: dd.from_pandas(df, npartitions=1, sort=False),
        lambda df: dd.from_pandas(df, npartitions=9, sort=False),
        lambda df: dd.from_pandas(df, npartitions=2, sort=False).repartition(npartitions=6),
    ],
)
def test_same_answer_on_any_partitioning(planted_df, result, make):
    ddf = make(planted_df)
    with dask.config.set(THREADS):
        out = semantic_dedup(ddf, **ARGS, npartitions=3)
        assert out.npartitions == ddf.npartitions
        got = out.compute()
    pd.testing.assert_frame_equal(got, result)


def test_empty_partitions_and_all_null_partition(planted_df, result):
    df = planted_df.copy()
    df.loc[df.index[:400], "embedding"] = None  # first partition: no embedding at all
    ddf = dd.from_pandas(df, npartitions=6, sort=False)
    ddf = ddf[ddf["value"] % 2 == 0]  # keeps every row
    empty = dd.from_pandas(df.iloc[:0], npartitions=1)
    ddf = dd.concat([empty, ddf, empty])
    with dask.config.set(THREADS):
        out = semantic_dedup(ddf, **ARGS, npartitions=4)
        sizes = out.map_partitions(len).compute().tolist()
        got = out.compute()
    assert sizes[0] == 0 and sizes[-1] == 0
    assert list(got.index) == list(df.index)
    assert (got["cluster"].iloc[:400] == -1).all() and not got["duplicate"].iloc[:400].any()
    # the other rows still get clusters and flags
    assert (got["cluster"].iloc[400:][df["embedding"].iloc[400:].notna()] >= 0).all()
    assert got["duplicate"].sum() > 40


def test_multi_eps_helpers(planted, result, reference):
    _, best, _ = reference
    eps = [0.001, 0.01, 0.05]
    masks = keep_masks(result, eps)
    assert list(masks.columns) == ["keep_eps_0.001", "keep_eps_0.01", "keep_eps_0.05"]
    assert masks.index.equals(result.index)
    for e in eps:
        truth = np.nan_to_num(best, nan=-2) >= 1 - e
        assert np.array_equal(~masks[f"keep_eps_{e:g}"].to_numpy(), truth)
    assert np.array_equal(~masks["keep_eps_0.01"].to_numpy(), result["duplicate"].to_numpy())
    # near misses (cosine about 0.98) are duplicates at 0.05 only
    a, b = planted.near_misses[:, 0], planted.near_misses[:, 1]
    nm = lambda col: masks[col].to_numpy()  # noqa: E731
    assert (nm("keep_eps_0.01")[a] & nm("keep_eps_0.01")[b]).all()
    assert (~nm("keep_eps_0.05")[a] | ~nm("keep_eps_0.05")[b]).mean() > 0.9

    summary = dedup_summary(result, eps)
    assert list(summary.index) == eps
    assert (summary["rows"] == len(result)).all()
    assert (summary["embedded"] == planted.valid.sum()).all()
    assert (summary["clusters"] == result.loc[result.cluster >= 0, "cluster"].nunique()).all()
    assert summary.loc[0.01, "duplicates"] == result["duplicate"].sum()
    assert list(summary["duplicates"]) == [int((np.nan_to_num(best, nan=-2) >= 1 - e).sum()) for e in eps]

    lazy = dedup_summary(dd.from_pandas(result, npartitions=4, sort=False), eps)
    pd.testing.assert_frame_equal(lazy, summary)
    lazy_masks = keep_masks(dd.from_pandas(result, npartitions=4, sort=False), eps).compute()
    pd.testing.assert_frame_equal(lazy_masks, masks)


def test_duplicate_pairs(planted, result):
    pairs = duplicate_pairs(result, columns=["name"])
    assert list(pairs.columns) == ["name", "duplicate_of", "max_similarity", "cluster"]
    assert len(pairs) == result["duplicate"].sum()
    # a planted pair: the flagged row points at its twin
    for g in planted.groups[:40]:
        a, b = (f"img-{i}" for i in g)
        if a in pairs.index:
            assert pairs.loc[a, "duplicate_of"] == b
        elif b in pairs.index:
            assert pairs.loc[b, "duplicate_of"] == a
    assert len(duplicate_pairs(result, eps=0.05)) > len(pairs)


@pytest.mark.parametrize("rule", ["easy", "random"])
def test_other_keep_rules(planted_df, planted, result, rule):
    with dask.config.set(THREADS):
        a = semantic_dedup(dd.from_pandas(planted_df, npartitions=3, sort=False), **ARGS, which_to_keep=rule).compute()
        b = semantic_dedup(dd.from_pandas(planted_df, npartitions=7, sort=False), **ARGS, which_to_keep=rule).compute()
    pd.testing.assert_frame_equal(a, b)  # partition-independent, also for "random"
    assert (a["cluster"] == result["cluster"]).all()
    # same groups caught, another member kept in some of them
    assert a["duplicate"].sum() == result["duplicate"].sum()
    assert not (a["duplicate"] == result["duplicate"]).all()


def test_id_column_names_partners(planted_df, result):
    with dask.config.set(THREADS):
        out = semantic_dedup(dd.from_pandas(planted_df, npartitions=4, sort=False), **ARGS, id_column="name").compute()
    flagged = out["duplicate"].to_numpy()
    expect = result["duplicate_of"][flagged].str.replace("img-", "n")
    assert (out["duplicate_of"][flagged].to_numpy() == expect.to_numpy()).all()


def test_object_embeddings_and_int_index(planted):
    n = 600
    x = planted.x[:n]
    df = pd.DataFrame({"embedding": [None if np.isnan(r).any() else r for r in x]})
    with dask.config.set({**THREADS, "dataframe.convert-string": False}):
        out = semantic_dedup(dd.from_pandas(df, npartitions=3, sort=False), n_clusters=3, max_iter=10).compute()
    assert out.index.equals(df.index)
    assert str(out["duplicate_of"].dtype) == "Int64"
    assert out["duplicate"].sum() >= 1


def test_bad_arguments(planted_df):
    ddf = dd.from_pandas(planted_df, npartitions=2, sort=False)
    with pytest.raises(ValueError, match="hard"):
        semantic_dedup(ddf, which_to_keep="hardest")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        semantic_dedup(ddf, eps=1.5)
    with pytest.raises(TypeError, match="eps"):
        semantic_dedup(ddf, eps="0.1")
    with pytest.raises(ValueError, match="n_clusters"):
        semantic_dedup(ddf, n_clusters=0)
    with pytest.raises(TypeError, match="n_clusters"):
        semantic_dedup(ddf, n_clusters=2.5)
    with pytest.raises(ValueError, match="columns are"):
        semantic_dedup(ddf, embedding_column="emb")
    with pytest.raises(ValueError, match="id_column"):
        semantic_dedup(ddf, id_column="nope")
    with pytest.raises(TypeError, match="convert-string"):
        semantic_dedup(ddf, embedding_column="name")
    with pytest.raises(TypeError, match="dask DataFrame"):
        semantic_dedup(planted_df)
    with pytest.raises(ValueError, match="output columns"):
        semantic_dedup(ddf.assign(duplicate=True))
    with pytest.raises(ValueError, match="block_size"):
        semantic_dedup(ddf, block_size=0)


def test_no_embedding_at_all(planted_df):
    df = planted_df.iloc[:50].copy()
    df["embedding"] = None
    df["embedding"] = df["embedding"].astype(planted_df["embedding"].dtype)
    with dask.config.set(THREADS), pytest.warns(UserWarning, match="no row has an embedding"):
        out = semantic_dedup(dd.from_pandas(df, npartitions=2, sort=False), n_clusters=3).compute()
    assert (out["cluster"] == -1).all() and not out["duplicate"].any() and len(out) == 50
