"""``dask-clip dedup INPUT OUTPUT``: semantic dedup (SemDeDup) of an embeddings folder."""

from __future__ import annotations

import argparse
from typing import Any

from ..validation import KEEP_RULES, check_memory
from . import options

__all__ = ["SIDE_FOLDER", "add_parser", "run"]

# --steps: the removal list and each step's checkpoint, inside OUTPUT where readers skip them
SIDE_FOLDER = "_dedup"


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "dedup",
        parents=[common],
        help="semantic dedup (SemDeDup) of an embeddings Parquet dataset",
        description="Flag near-duplicates: k-means, then cosine similarity within clusters. "
        "Run the same command again to resume: finished files are kept.",
    )
    parser.add_argument(
        "input", metavar="INPUT", help="Parquet with an embedding column (the output of `dask-clip embed`)"
    )
    parser.add_argument("output", metavar="OUTPUT", help="output folder")
    parser.add_argument(
        "--eps", type=float, default=0.01, help="duplicate when cosine similarity >= 1 - eps (default: 0.01)"
    )
    parser.add_argument(
        "--n-clusters", type=options.positive_int, default=1000, metavar="K", help="k-means clusters (default: 1000)"
    )
    parser.add_argument(
        "--max-train-rows",
        type=options.positive_int,
        metavar="N",
        help="k-means training sample (default: 256 per cluster, capped by --max-memory); more rows give "
        "smoother centroids and fewer border rows",
    )
    parser.add_argument("--embedding-column", default="embedding", metavar="NAME")
    parser.add_argument(
        "--id-column",
        metavar="NAME",
        help="column naming rows in duplicate_of (default: the key column `dask-clip embed` recorded, else the "
        "row number)",
    )
    parser.add_argument("--which-to-keep", choices=KEEP_RULES, default="hard")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drop-duplicates", action="store_true", help="write only the rows kept")
    parser.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="memory budget of one task, e.g. 4GiB: bounds the default k-means sample, the assignment blocks and "
        "the per-cluster blocks; a cluster or a partition's border rows that cannot fit is an error "
        "(default: no budget)",
    )
    parser.add_argument(
        "--plain-semdedup",
        action="store_true",
        help="compare rows only within their own cluster, as SemDeDup and NeMo Curator do (misses pairs split "
        "across cluster borders; default: border-aware, docs/dedup.md)",
    )
    parser.add_argument(
        "--border-margin",
        type=float,
        default=1.0,
        metavar="F",
        help="fraction of the guaranteed border margin (1.0 finds every pair within eps; less is cheaper)",
    )
    parser.add_argument(
        "--steps",
        default="semantic",
        metavar="S1,S2",
        help="dedup steps in order, each on the rows the earlier ones kept: exact (identical image bytes), phash "
        "(perceptual hash within --phash-k bits), semantic (default: semantic only). With more than semantic, "
        "OUTPUT also gets _dedup/duplicates.parquet (id, duplicate_of, step, similarity)",
    )
    parser.add_argument(
        "--image-column",
        metavar="NAME",
        help="image bytes (exact, phash steps; default: the image column `dask-clip embed` recorded, else image)",
    )
    parser.add_argument(
        "--hash-column",
        default="phash",
        metavar="NAME",
        help="uint64 pHash column (phash step; computed from --image-column where the input has none)",
    )
    parser.add_argument(
        "--phash-k", type=int, default=6, metavar="K", help="phash step: duplicate within K bits of 64 (default: 6)"
    )
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    options.add_cluster_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..runtime.cluster import connect

    try:
        from ..dedup import dedup_parquet
        from ..dedup.parquet import check_dedup_paths
    except ImportError as err:
        raise ImportError(f"dask-clip dedup needs the dedup extra ({err}): pip install 'dask-clip[dedup]'") from err
    max_memory = check_memory("--max-memory", args.max_memory)  # before a cluster starts
    check_dedup_paths(args.input, args.output)  # OUTPUT = INPUT: refused now, not after the whole dedup
    id_column = args.id_column
    if id_column is None or args.image_column is None:  # the columns the embeddings record
        from ..io.file_metadata import read_file_metadata

        recorded = read_file_metadata(args.input)
        if id_column is None:  # key, or a folder's file path
            id_column = recorded.get("key_column")
        if args.image_column is None:
            args.image_column = recorded.get("image_column") or "image"
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if steps != ["semantic"]:
        from ..dedup.plan import STEPS

        bad = [s for s in steps if s not in STEPS]
        if bad or not steps:
            raise ValueError(f"--steps takes names among {', '.join(STEPS)}, not {args.steps!r}")
        with connect(**options.cluster_options(args)) as client:
            options.say(f"cluster: {options.describe(client, args)}")
            summary = _run_steps(args, steps, id_column, max_memory)
        print(f"dask-clip dedup: -> {args.output} (removal list: {SIDE_FOLDER}/duplicates.parquet)")
        print(summary.to_string(index=False))
        return 0
    with connect(**options.cluster_options(args)) as client:
        options.say(f"cluster: {options.describe(client, args)}")
        summary = dedup_parquet(
            args.input,
            args.output,
            eps=args.eps,
            n_clusters=args.n_clusters,
            max_train_rows=args.max_train_rows,
            embedding_column=args.embedding_column,
            id_column=id_column,
            drop_duplicates=args.drop_duplicates,
            overwrite=args.overwrite,
            which_to_keep=args.which_to_keep,
            seed=args.seed,
            max_memory=max_memory,
            border_aware=not args.plain_semdedup,
            border_margin=args.border_margin,
        )
    print(f"dask-clip dedup: -> {args.output}")
    print(summary.to_string())
    return 0


def _run_steps(args: argparse.Namespace, steps: list[str], id_column: str | None, max_memory: int | None) -> Any:
    """``--steps``: the plan on one read of INPUT, the removal list, then the output written."""
    import os
    import shutil

    import dask.dataframe as dd
    import pandas as pd

    from ..dedup.parquet import with_row_numbers
    from ..dedup.plan import _write_atomic, dedup_steps
    from ..io.writers.parquet import write_tasks

    # under a "_" folder, which Parquet readers skip: OUTPUT still reads as one dataset
    side = os.path.join(args.output, SIDE_FOLDER)
    if args.overwrite and os.path.isdir(side):
        shutil.rmtree(side)
    ddf = dd.read_parquet(args.input, dtype_backend="pyarrow")
    if id_column is None and ddf._meta.index.name is None and isinstance(ddf._meta.index, pd.RangeIndex):
        ddf = with_row_numbers(ddf)  # ids: the row number, index "row"
    removal, summary = dedup_steps(
        ddf,
        steps,
        id_column=id_column,
        image_column=args.image_column,
        hash_column=args.hash_column,
        embedding_column=args.embedding_column,
        k=args.phash_k,
        checkpoint=side,
        eps=args.eps,
        n_clusters=args.n_clusters,
        max_train_rows=args.max_train_rows,
        which_to_keep=args.which_to_keep,
        seed=args.seed,
        max_memory=max_memory,
        border_aware=not args.plain_semdedup,
        border_margin=args.border_margin,
    )
    _write_atomic(removal, os.path.join(side, "duplicates.parquet"), len(removal))
    out = _mark(ddf, removal, id_column)
    if args.drop_duplicates:
        out = out[~out["duplicate"]]
    job = {"command": "dedup", "steps": steps, "input": os.fspath(args.input), "eps": args.eps, "k": args.phash_k}
    import dask

    dask.compute(write_tasks(out, args.output, overwrite=args.overwrite, job=job))
    return summary


def _mark(ddf: Any, removal: Any, id_column: str | None) -> Any:
    """Every input row with ``duplicate``, ``duplicate_of``, ``dedup_step``, ``similarity`` from the removal list."""
    import dask
    import pandas as pd
    import pyarrow as pa

    table = removal.set_index("id")
    ids = ddf._meta[id_column] if id_column is not None else ddf._meta.index
    dtype = ids.dtype
    if isinstance(dtype, pd.ArrowDtype):
        pass
    elif pd.api.types.is_integer_dtype(dtype):
        dtype = pd.ArrowDtype(pa.int64())
    else:
        dtype = pd.ArrowDtype(pa.string())

    def mark(df: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
        key = df[id_column] if id_column is not None else df.index.to_series(index=df.index)
        hit = table.reindex(key.to_numpy())
        out = df.copy()
        out["duplicate"] = hit["step"].notna().to_numpy()
        of = hit["duplicate_of"].astype(object).where(hit["duplicate_of"].notna(), None)
        out["duplicate_of"] = pd.array(of.tolist(), dtype=dtype)
        out["dedup_step"] = pd.array(
            hit["step"].astype(object).where(hit["step"].notna(), None).tolist(), dtype=pd.ArrowDtype(pa.string())
        )
        out["similarity"] = hit["similarity"].to_numpy(dtype="float32", na_value=float("nan"))
        return out

    meta = mark(ddf._meta, table.iloc[:0])
    return ddf.map_partitions(mark, dask.delayed(table, traverse=False), meta=meta)
