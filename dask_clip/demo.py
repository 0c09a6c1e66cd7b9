"""``dask-clip demo``: the whole job on the bundled sample, and how to score planted duplicates.

The sample (``dask_clip/data/sample.parquet``, built by ``scripts/make_sample.py``) has
319 small images in img2dataset's layout, among them 36 planted near-duplicates (re-encoded,
slightly resized or brightened copies, each naming its original in ``planted_duplicate_of``)
and 3 broken rows. The demo starts a local cluster, embeds the sample, writes Parquet, runs
semantic dedup and reports which planted copies it caught.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "DEFAULT_EPS",
    "RANDOM_WEIGHTS_EPS",
    "planted_groups",
    "run_demo",
    "sample_path",
    "score_planted",
]

DEFAULT_EPS = 0.01
# A random network maps every picture into a narrow cone (typical nearest-neighbour cosine
# 0.99+), so only much tighter thresholds separate copies from look-alikes; measured on the
# sample with the tiny random model: eps=0.001 catches 34 of 36 planted copies.
RANDOM_WEIGHTS_EPS = 0.001
SAMPLE_ID_COLUMN = "key"
NEEDS_WEIGHTS = (
    "The demo needs CLIP weights, and none were given. Choose one:\n"
    "  --model-dir DIR       open_clip weights in a local folder, fetched elsewhere, e.g.\n"
    "                        huggingface-cli download laion/CLIP-ViT-B-32-laion2B-s34B-b79K --local-dir DIR\n"
    "  --pretrained TAG      download through open_clip (needs network), e.g. --model ViT-B-32 --pretrained openai\n"
    "  --random-weights      no pretrained weights: a tiny seeded random model. Its embeddings\n"
    "                        tell near-identical pictures apart from different ones, nothing more."
)


def sample_path() -> Path:
    """The bundled sample Parquet file."""
    return Path(str(resources.files("dask_clip") / "data" / "sample.parquet"))


def planted_groups(df: pd.DataFrame, id_column: str = SAMPLE_ID_COLUMN) -> dict[str, set[str]]:
    """Each planted original with its copies: ``{original id: {original, copy, ...}}``."""
    groups: dict[str, set[str]] = {}
    for key, original in zip(df[id_column], df["planted_duplicate_of"], strict=True):
        if isinstance(original, str):
            groups.setdefault(original, {original}).add(key)
    return groups


def score_planted(result: pd.DataFrame, id_column: str = SAMPLE_ID_COLUMN) -> dict[str, Any]:
    """How many planted copies a dedup result caught.

    A group of an original and its ``g - 1`` copies is caught in full when dedup keeps one of
    its rows and flags the others as duplicates of rows of the same group.

    Parameters
    ----------
    result
        A computed :func:`dask_clip.dedup.semantic_dedup` result of the sample, with
        ``duplicate`` and ``duplicate_of`` (ids from ``id_column``).

    Returns
    -------
    dict
        ``planted`` (copies to catch), ``caught``, ``missed_groups`` (original ids),
        ``other_flagged`` (flagged rows outside the planted pairs: copies of look-alike
        pictures or errors of the threshold) and ``pairs``, a DataFrame of the caught pairs
        (``id``, ``duplicate_of``, ``max_similarity``).
    """
    groups = planted_groups(result, id_column)
    member = {m: original for original, members in groups.items() for m in members}
    flagged = result[result["duplicate"].fillna(False).astype(bool)]
    caught: dict[str, int] = {}
    pairs, other = [], 0
    for key, partner, similarity in zip(
        flagged[id_column], flagged["duplicate_of"], flagged["max_similarity"], strict=True
    ):
        group = member.get(key)
        if group is not None and partner in groups[group]:
            caught[group] = caught.get(group, 0) + 1
            pairs.append((key, partner, float(similarity)))
        else:
            other += 1
    planted = sum(len(m) - 1 for m in groups.values())
    total = sum(min(caught.get(g, 0), len(m) - 1) for g, m in groups.items())
    return {
        "planted": planted,
        "caught": total,
        "missed_groups": sorted(g for g, m in groups.items() if caught.get(g, 0) < len(m) - 1),
        "other_flagged": other,
        "pairs": pd.DataFrame(pairs, columns=["id", "duplicate_of", "max_similarity"]),
    }


@contextlib.contextmanager
def _weights(
    model_dir: str | None, model: str, pretrained: str | None, random_weights: bool
) -> Iterator[dict[str, Any]]:
    """ImageEmbedder model arguments; a temporary tiny random model for ``random_weights``."""
    chosen = [name for name, value in (("--model-dir", model_dir), ("--pretrained", pretrained)) if value]
    if random_weights and chosen:
        raise ValueError(f"--random-weights contradicts {' and '.join(chosen)}; pass one of them")
    if random_weights:
        from .models.random_weights import write_model_dir

        with tempfile.TemporaryDirectory(prefix="dask-clip-random-model-") as folder:
            yield {"model_dir": str(write_model_dir(folder))}
        return
    if model_dir:
        yield {"model_dir": model_dir}
    elif pretrained:
        yield {"model": model, "pretrained": pretrained}
    else:
        raise ValueError(NEEDS_WEIGHTS)


def run_demo(
    output: str | os.PathLike,
    *,
    model_dir: str | None = None,
    model: str = "ViT-B-32",
    pretrained: str | None = None,
    random_weights: bool = False,
    eps: float | None = None,
    n_clusters: int = 4,
    batch_size: int = 32,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = False,
    connect_options: dict[str, Any] | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Embed the bundled sample on a cluster, write Parquet, dedup, report.

    Parameters
    ----------
    output
        Folder for ``embeddings/`` and ``dedup/`` (both rewritten on every run).
    model_dir, model, pretrained
        Real weights: an open_clip ``local-dir`` folder, or an architecture and pretrained tag.
    random_weights
        Use a tiny seeded random model instead (written to a temporary folder): only when
        asked, since its embeddings mean nothing beyond pixel-level likeness.
    eps
        Dedup threshold; default 0.01, or 0.001 with random weights.
    n_clusters
        k-means clusters of the dedup step.
    batch_size, device, precision
        As in :class:`~dask_clip.ImageEmbedder`.
    progress
        Show a progress bar.
    connect_options
        For :func:`dask_clip.runtime.cluster.connect` (a scheduler file, or local cluster options).
    echo
        Where the report goes.

    Returns
    -------
    dict
        ``rows``, ``errors``, ``images_per_second``, ``seconds``, ``embeddings`` (path),
        ``dedup`` (:func:`score_planted` without the pairs, or None without the dedup extra),
        ``steps`` (the exact -> phash -> semantic plan: per step ``rows_in``, ``duplicates``,
        ``seconds`` and ``planted_caught``; None without the dedup extra).

    Raises
    ------
    ValueError
        No weights chosen (the message lists the choices), or contradictory choices.
    """
    import dask.dataframe as dd

    from .embed.embedder import ImageEmbedder
    from .io.read import read_images
    from .io.writers.base import count_nonnull
    from .io.writers.parquet import write_parquet
    from .runtime.cluster import connect

    started = time.perf_counter()
    output = Path(output)
    with _weights(model_dir, model, pretrained, random_weights) as weights:
        if random_weights:
            echo(
                "dask-clip demo: no pretrained weights requested (--random-weights): using a tiny "
                "seeded RANDOM model (2-layer ViT, 64 px, 32-d). Its embeddings only tell near-"
                "identical pictures from different ones; pass --model-dir or --pretrained for CLIP."
            )
        embedder = ImageEmbedder(
            **weights,
            model_inference_batch_size=batch_size,
            device=device,
            precision=precision,
            image_column="jpg",
            phash_column="phash",  # from the same decode: the plan's phash step reads it
        )
        embedder.validate()
        ddf, _ = read_images(sample_path(), image_column="jpg", split_row_groups=True)
        echo(f"dask-clip demo: sample {sample_path()} ({ddf.npartitions} partitions)")
        with connect(**(connect_options or {})) as client:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            echo(f"dask-clip demo: cluster with {len(workers)} worker(s); dashboard {client.dashboard_link}")
            written = write_parquet(
                embedder(ddf),
                output / "embeddings",
                overwrite=True,
                client=client,
                progress=progress,
                job={"command": "demo", "weights": weights if not random_weights else "random"},
                partition_stats=count_nonnull(embedder.error_column, "errors"),
            )
            errors = written.counts.get("errors", 0)
            echo(
                f"dask-clip demo: embedded {written.rows} images ({errors} errors) in "
                f"{written.seconds:.1f}s, {written.rows_per_second:.1f} images/s -> {output / 'embeddings'}"
            )
            embedded = dd.read_parquet(str(output / "embeddings"), dtype_backend="pyarrow")
            reasons = embedded[embedded[embedder.error_column].notnull()][["key", embedder.error_column]].compute()
            for key, reason in zip(reasons["key"], reasons[embedder.error_column], strict=True):
                echo(f"    row {key}: {reason}")
            if eps is None:
                eps = RANDOM_WEIGHTS_EPS if random_weights else DEFAULT_EPS
            scored = _dedup(embedded, output, eps, n_clusters, echo)
            steps = _dedup_steps(embedded, output, eps, n_clusters, echo) if scored is not None else None
    seconds = time.perf_counter() - started
    echo(f"dask-clip demo: done in {seconds:.1f}s")
    return {
        "rows": written.rows,
        "errors": errors,
        "images_per_second": written.rows_per_second,
        "seconds": seconds,
        "embeddings": str(output / "embeddings"),
        "dedup": scored,
        "steps": steps,
    }


def _dedup(
    embedded: Any, output: Path, eps: float, n_clusters: int, echo: Callable[[str], None]
) -> dict[str, Any] | None:
    """Semantic dedup of the embeddings, written to ``output/dedup``; the planted-copy score."""
    from .dedup import semantic_dedup
    from .io.writers.parquet import write_parquet

    started = time.perf_counter()
    try:
        result = semantic_dedup(
            embedded, embedding_column="embedding", n_clusters=n_clusters, eps=eps, id_column=SAMPLE_ID_COLUMN
        )
    except ImportError as err:  # faiss (the dedup extra) is optional: say so, do not hide it
        echo(f"dask-clip demo: skipping dedup: {err}")
        return None
    write_parquet(result, output / "dedup", overwrite=True, job={"command": "demo-dedup", "eps": eps})
    frame = pd.read_parquet(output / "dedup", dtype_backend="pyarrow")
    scored = score_planted(frame)
    echo(
        f"dask-clip demo: semantic dedup (eps={eps:g}, {n_clusters} clusters) in {time.perf_counter() - started:.1f}s: "
        f"{int(frame['duplicate'].sum())} of {len(frame)} rows flagged -> {output / 'dedup'}"
    )
    echo(
        f"    planted near-duplicates caught: {scored['caught']} of {scored['planted']}; "
        f"other rows flagged: {scored['other_flagged']} (look-alikes, or copies of copies)"
    )
    for key, partner, similarity in scored["pairs"].head(5).itertuples(index=False):
        caption = frame.loc[frame["key"] == key, "caption"].iloc[0]
        echo(f"    {key} duplicates {partner} (cosine {similarity:.5f}): {caption}")
    if len(scored["pairs"]):
        images = pd.read_parquet(sample_path(), columns=[SAMPLE_ID_COLUMN, "jpg"])
        sheet = duplicate_sheet(scored["pairs"], dict(zip(images[SAMPLE_ID_COLUMN], images["jpg"], strict=True)))
        sheet.save(output / "duplicates.png")
        echo(f"    the pairs side by side (duplicate | the row it duplicates): {output / 'duplicates.png'}")
    return {k: v for k, v in scored.items() if k != "pairs"}


def score_steps(removal: pd.DataFrame, groups: dict[str, set[str]]) -> dict[str, int]:
    """Planted copies each step of a dedup plan caught (flagged as a duplicate of its own group).

    Parameters
    ----------
    removal
        The plan's removal list (``id``, ``duplicate_of``, ``step``, ``similarity``).
    groups
        :func:`planted_groups` of the sample.
    """
    member = {m: original for original, members in groups.items() for m in members}
    caught: dict[str, int] = {}
    for key, partner, step in zip(removal["id"], removal["duplicate_of"], removal["step"], strict=True):
        group = member.get(key)
        if group is not None and partner in groups[group]:
            caught[step] = caught.get(step, 0) + 1
    return caught


def _dedup_steps(
    embedded: Any, output: Path, eps: float, n_clusters: int, echo: Callable[[str], None]
) -> dict[str, Any]:
    """The three-step plan on the embeddings: per-step summary, planted copies per step, a picture."""
    from .dedup.plan import dedup_steps

    removal, summary = dedup_steps(
        embedded.persist(),
        ("exact", "phash", "semantic"),
        id_column=SAMPLE_ID_COLUMN,
        image_column="jpg",
        eps=eps,
        n_clusters=n_clusters,
    )
    frame = pd.read_parquet(sample_path(), columns=[SAMPLE_ID_COLUMN, "jpg", "planted_duplicate_of"])
    caught = score_steps(removal, planted_groups(frame))
    planted = sum(len(m) - 1 for m in planted_groups(frame).values())
    echo("dask-clip demo: dedup plan exact -> phash -> semantic (each step on the rows the earlier kept):")
    steps: dict[str, Any] = {}
    for row in summary.itertuples(index=False):
        steps[row.step] = {
            "rows_in": int(row.rows_in),
            "duplicates": int(row.duplicates),
            "seconds": float(row.seconds),
            "planted_caught": caught.get(row.step, 0),
        }
        echo(
            f"    {row.step:8s} {row.rows_in} rows in, {row.duplicates} flagged in {row.seconds:.1f}s; "
            f"planted copies caught: {caught.get(row.step, 0)}"
        )
    echo(f"    planted copies caught by the plan: {sum(caught.values())} of {planted}")
    pairs = removal.groupby("step", sort=False).head(3)[["id", "duplicate_of", "similarity", "step"]]
    if len(pairs):
        images = dict(zip(frame[SAMPLE_ID_COLUMN], frame["jpg"], strict=True))
        duplicate_sheet(pairs, images, rows=9).save(output / "duplicates-steps.png")
        echo(f"    pairs of each step side by side: {output / 'duplicates-steps.png'}")
    return steps


def duplicate_sheet(pairs: pd.DataFrame, images: dict[str, bytes], *, rows: int = 8, tile: int = 160) -> Any:
    """A picture of duplicate pairs: each line shows a flagged image and the one it duplicates.

    Parameters
    ----------
    pairs
        ``id``, ``duplicate_of``, ``max_similarity`` (as :func:`score_planted` returns), and
        optionally a fourth column, the step that flagged the pair (shown in its label).
    images
        Encoded image bytes by id.
    rows, tile
        At most ``rows`` pairs, each image fitted into a ``tile`` x ``tile`` square.

    Returns
    -------
    PIL.Image.Image
        RGB, (2 * tile + margins) wide.
    """
    import io

    from PIL import Image, ImageDraw

    shown = pairs.head(rows)
    label = 16
    sheet = Image.new("RGB", (2 * tile + 30, len(shown) * (tile + label + 10) + 10), "white")
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(shown.itertuples(index=False)):
        key, partner, similarity = row[:3]
        top = 10 + i * (tile + label + 10)
        step = f"{row[3]}: " if len(row) > 3 else ""
        draw.text((10, top), f"{step}{key} ~ {partner}  similarity {similarity:.4f}", fill="black")
        for j, name in enumerate((key, partner)):
            picture = Image.open(io.BytesIO(images[name])).convert("RGB")
            picture.thumbnail((tile, tile))
            sheet.paste(picture, (10 + j * (tile + 10), top + label))
    return sheet
