"""Task keys read on the dashboard: each step's tasks carry its name (``key_split`` of the key
is what the task stream, progress bars and ``Client.profile`` group by). Names use underscores:
dask-expr names a fused task from the first hyphen-separated word of each step's name
("readparquet-clip_embed-parquet_write"), so "clip-embed" would show as "clip"."""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
from dask.utils import key_split
from local_dask import THREADS

from dask_clip import ImageEmbedder, TextEmbedder
from dask_clip.dedup.workflow import cluster_results, prepare
from dask_clip.filter import filter_frame
from dask_clip.index.add import add_tasks
from dask_clip.testing import embedding_array, solid_png


def _names(collection) -> set[str]:
    """The step names in the optimised graph's keys (fused keys join several with "-")."""
    return {part for k in collection.__dask_graph__() for part in key_split(k).split("-")}


def _frame(n: int = 8) -> pd.DataFrame:
    png = solid_png(8, 8)
    images = pd.Series([png] * n, dtype=pd.ArrowDtype(pa.binary()))
    captions = pd.Series([f"photo {i}" for i in range(n)], dtype=pd.ArrowDtype(pa.string()))
    return pd.DataFrame({"image": images, "caption": captions})


def test_embedding_tasks_are_named_clip_embed_and_clip_text(model_dir):
    ddf = dd.from_pandas(_frame(), npartitions=2)
    image = ImageEmbedder(model_dir=model_dir)(ddf)
    assert {key_split(k) for k in image.__dask_keys__()} == {"clip_embed"}
    text = TextEmbedder(model_dir=model_dir)(ddf)
    assert {key_split(k) for k in text.__dask_keys__()} == {"clip_text"}


def test_filter_tasks_are_named():
    df = pd.DataFrame({"aesthetic_score": np.linspace(0, 10, 10)})
    out = filter_frame(dd.from_pandas(df, npartitions=2), min_aesthetic=5)
    assert "clip_filter" in _names(out)
    assert out.compute()["aesthetic_score"].min() >= 5  # and it still filters


def test_dedup_and_index_tasks_are_named(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 8)).astype(np.float32)
    ddf = dd.from_pandas(pd.DataFrame({"embedding": embedding_array(x, np.ones(len(x), dtype=bool))}), npartitions=2)
    shuffled = {"dask_clip.dedup.single-task-bytes": 0}  # 200 rows would run in one task
    with dask.config.set({**THREADS, **shuffled}):
        plain = prepare(ddf, n_clusters=2, seed=0, shuffle_method="tasks", border_aware=False)
        border_aware = prepare(ddf, n_clusters=2, seed=0, shuffle_method="tasks")
    with dask.config.set(THREADS):
        one_task = prepare(ddf, n_clusters=2, seed=0)
    steps = {expr._name.split("-")[0] for expr in cluster_results(plain).expr.walk()}
    assert {"semdedup_assign", "semdedup_pairs"} <= steps, steps
    # border-aware runs build their blocks from delayed tasks: the names are in the graph's keys
    tasks = {key_split(key) for key in cluster_results(border_aware).__dask_graph__()}
    assert {"semdedup_assign", "semdedup_border_block"} <= tasks, tasks
    tasks = {key_split(key) for key in cluster_results(one_task).__dask_graph__()}
    assert {"semdedup_assign", "semdedup_local", "semdedup_pick"} <= tasks, tasks
    tasks = add_tasks(ddf, tmp_path / "build", "embedding", [], [0, 1])
    assert [key_split(t.key) for t in tasks] == ["index_add", "index_add"]
    assert len({t.key for t in tasks}) == 2
