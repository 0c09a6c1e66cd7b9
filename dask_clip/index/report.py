"""Results for people and programs: JSON-safe records, thumbnails, a static HTML page.

Everything taken from the data (captions, keys, URLs, column names) is untrusted: the HTML
escapes it, and images are re-encoded thumbnails (decoded with the embedder's
decompression-bomb limit), never the stored bytes themselves.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

import numpy as np
import pandas as pd

from ..image.decode import DEFAULT_DECODE_BUDGET, DEFAULT_MAX_IMAGE_PIXELS, decode_bytes
from .ids import ID, PARTITION, PARTITION_ROW, SOURCE_ROW

__all__ = ["json_value", "results_html", "results_records", "score_columns", "thumbnail"]

THUMBNAIL_SIZE = 256


def json_value(value: Any) -> Any:
    """A plain JSON value: NumPy scalars as Python numbers, NaN/NA as None, bytes dropped."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (pd.Timestamp,)):
        return value.isoformat()
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_value(v) for v in value]
    return value


def _binary_columns(results: pd.DataFrame) -> list[str]:
    out = []
    for name in results.columns:
        values = results[name].dropna()
        if len(values) and isinstance(values.iloc[0], (bytes, bytearray, memoryview)):
            out.append(name)
    return out


def results_records(results: pd.DataFrame) -> list[dict[str, Any]]:
    """Search results as JSON-safe dicts, one per row; binary columns (image bytes) dropped.

    Parameters
    ----------
    results
        A :meth:`SearchIndex.search <dask_clip.index.search.SearchIndex.search>` result.
    """
    kept = results.drop(columns=_binary_columns(results))
    return [{str(k): json_value(v) for k, v in row.items()} for row in kept.to_dict(orient="records")]


def score_columns(results: pd.DataFrame, exclude: tuple[str | None, ...] = ()) -> list[str]:
    """Numeric metadata columns worth showing beside a result (not ids, positions, sizes or
    the columns in ``exclude``, such as an integer key)."""
    skip = {"query", "rank", "similarity", ID, PARTITION, PARTITION_ROW, SOURCE_ROW, "width", "height", *exclude}
    return [
        str(c)
        for c in results.columns
        if c not in skip and pd.api.types.is_numeric_dtype(results[c]) and not pd.api.types.is_bool_dtype(results[c])
    ]


def thumbnail(
    data: bytes,
    size: int = THUMBNAIL_SIZE,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    max_bytes: int | None = DEFAULT_DECODE_BUDGET,
) -> tuple[bytes | None, str | None]:
    """A JPEG thumbnail (longest side ``size``) of encoded image bytes.

    Decoded by :func:`dask_clip.image.decode.decode_bytes` with the same decompression-bomb limit and
    decode budget (``max_bytes`` of RGB; a JPEG beyond it is decoded at a reduced scale) as
    embedding.

    Returns
    -------
    (bytes or None, reason or None)
    """
    from PIL import Image

    pixels, reason = decode_bytes(data, max_pixels=max_pixels, max_bytes=max_bytes)
    if pixels is None:
        return None, reason
    large = pixels.nbytes > 64 * 2**20  # dask_clip.image.prepare.RELEASE_AFTER_BYTES (prepare imports torch)
    image = Image.fromarray(pixels)
    del pixels  # Image.fromarray copies: one full-size copy at a time
    image.thumbnail((size, size), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    del image
    if large:  # as the embedder does: glibc would keep the freed full-size copies mapped
        from ..worker_setup import release_freed_memory

        release_freed_memory()
    return out.getvalue(), None


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 12px; }}
figure {{ margin: 0; border: 1px solid #ddd; border-radius: 6px; padding: 6px; background: #fafafa; }}
figure img {{ width: 100%; height: 160px; object-fit: contain; background: #eee; }}
.noimg {{ height: 160px; display: flex; align-items: center; justify-content: center; background: #eee; color: #888; }}
figcaption {{ font-size: 0.85rem; overflow-wrap: anywhere; }}
.meta {{ color: #555; font-size: 0.75rem; }}
</style></head><body>
<h1>{title}</h1>
{sections}
</body></html>
"""


def results_html(
    results: pd.DataFrame,
    index: Any = None,
    *,
    queries: list[str] | None = None,
    caption_column: str | None = "caption",
    title: str = "dask-clip search results",
    thumbnail_size: int = 160,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> str:
    """A self-contained HTML page (thumbnails inlined) showing search results as grids.

    Parameters
    ----------
    results
        A search result.
    index
        The :class:`~dask_clip.index.search.SearchIndex` it came from, for the images (its
        kept image column); without it, or without images, cards show text only.
    queries
        A label per query number (the texts, file names or keys searched).
    caption_column
        Shown under each image when present.
    title
        Page title.
    thumbnail_size, max_pixels
        Thumbnail size; decompression-bomb limit of the decode.

    Returns
    -------
    str
        The page; every value from the data is HTML-escaped.
    """
    scores = score_columns(results, exclude=(index.key_column,) if index is not None else ())
    sections = []
    for number, group in results.groupby("query", sort=True):
        label = queries[int(number)] if queries is not None and int(number) < len(queries) else f"query {number}"
        cards = [
            _card(row, index, caption_column=caption_column, scores=scores, size=thumbnail_size, max_pixels=max_pixels)
            for _, row in group.iterrows()
        ]
        sections.append(f"<h2>{html.escape(str(label))}</h2>\n<div class=grid>\n" + "\n".join(cards) + "\n</div>")
    if not sections:
        sections.append("<p>No results.</p>")
    return _PAGE.format(title=html.escape(title), sections="\n".join(sections))


def _card(
    row: pd.Series,
    index: Any,
    *,
    caption_column: str | None,
    scores: list[str],
    size: int,
    max_pixels: int | None,
) -> str:
    picture = '<div class="noimg">no image</div>'
    if index is not None and index.image_column is not None:
        try:
            thumb, reason = thumbnail(index.image(int(row[ID])), size, max_pixels)
        except LookupError as err:
            thumb, reason = None, str(err)
        if thumb is not None:
            encoded = base64.b64encode(thumb).decode("ascii")
            picture = f'<img alt="" src="data:image/jpeg;base64,{encoded}">'
        else:
            picture = f'<div class="noimg">{html.escape(str(reason))}</div>'
    caption = ""
    if caption_column is not None and caption_column in row.index and pd.notna(row[caption_column]):
        caption = f"<div>{html.escape(str(row[caption_column]))}</div>"
    meta = [f"#{int(row['rank'])}", f"similarity {float(row['similarity']):.3f}"]
    meta += [f"{html.escape(c)} {json_value(row[c])}" for c in scores if pd.notna(row[c])]
    return f"<figure>{picture}<figcaption>{caption}<div class=meta>{' · '.join(meta)}</div></figcaption></figure>"
