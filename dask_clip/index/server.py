"""``dask-clip serve``: a small local web page to browse an index (Starlette + uvicorn).

A search box (text, through the model's text tower), an image upload, a grid of thumbnails
with caption, similarity and score columns, and "more like this" on a click. Bound to
127.0.0.1 by default. What it will read is fixed by the index: thumbnails come from the kept
image column (bytes, or the paths/URLs stored in the id table) by row id — a request never
names a file. Uploads are size-limited and decoded with the embedder's decompression-bomb
limit; the page renders every value from the data as text (``textContent``), and the
Content-Security-Policy allows only the app's own script.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from ..decode import DEFAULT_MAX_IMAGE_PIXELS, decode_bytes
from .ids import ID
from .report import json_value, score_columns, thumbnail

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "create_app", "serve"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20
DEFAULT_K = 24
MAX_K = 200
CAPTION_CANDIDATES = ("caption", "text", "TEXT", "title", "alt")
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _import_web() -> tuple[Any, Any]:
    try:
        import starlette
        import uvicorn
    except ImportError as err:
        raise ImportError(f"dask-clip serve needs the serve extra ({err}): pip install 'dask-clip[serve]'") from err
    return starlette, uvicorn


class _Bad(Exception):
    """A client error: its message goes back as JSON with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(
    index: Any,
    *,
    encode_text: Callable[[list[str]], np.ndarray] | None = None,
    embedder: Any = None,
    caption_column: str | None = "auto",
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    thumbnail_cache: int = 2048,
) -> Any:
    """The browse app (an ASGI application) for a loaded index.

    Parameters
    ----------
    index
        A :class:`~dask_clip.index.search.SearchIndex`, or an index folder to load.
    encode_text
        ``list[str] -> float32 (Q, D)`` for text queries; default: the recorded model's
        text tower (text search answers 503 where the index records no model).
    embedder
        :class:`dask_clip.ImageEmbedder` for uploads; default: one for the recorded model.
    caption_column
        Shown under each image; ``"auto"``: the first of caption, text, TEXT, title, alt.
    max_upload_bytes
        Larger uploads are refused (413) before they are decoded.
    max_pixels
        Decompression-bomb limit for uploads and thumbnails.
    thumbnail_cache
        Thumbnails kept in memory.

    Returns
    -------
    starlette.applications.Starlette
    """
    _import_web()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from .search import SearchIndex, load

    if not isinstance(index, SearchIndex):
        index = load(index)
    names = index.table.column_names
    if caption_column == "auto":
        caption_column = next((c for c in CAPTION_CANDIDATES if c in names), None)
    static = resources.files(__package__) / "static"

    def page(name: str, media_type: str) -> Callable[[Request], Response]:
        body = (static / name).read_bytes()
        return lambda request: Response(body, media_type=media_type, headers=_HEADERS)

    def k_of(request: Request) -> int:
        raw = request.query_params.get("k", str(DEFAULT_K))
        try:
            k = int(raw)
        except ValueError:
            raise _Bad(400, f"k={raw!r} is not an integer") from None
        if not 1 <= k <= MAX_K:
            raise _Bad(400, f"k must be between 1 and {MAX_K}")
        return k

    def respond(results: pd.DataFrame, query: str, started: float) -> JSONResponse:
        scores = score_columns(results, exclude=(index.key_column,))
        items = []
        for row in results.to_dict(orient="records"):
            caption = row.get(caption_column) if caption_column else None
            items.append(
                {
                    "id": str(int(row[ID])),  # a string: JavaScript numbers lose int64 precision
                    "rank": int(row["rank"]),
                    "similarity": float(row["similarity"]),
                    "key": json_value(row.get(index.key_column)) if index.key_column else None,
                    "caption": json_value(caption),
                    "scores": {c: json_value(row[c]) for c in scores},
                }
            )
        took = (time.perf_counter() - started) * 1000
        return JSONResponse({"query": query, "results": items, "took_ms": round(took, 2)}, headers=_HEADERS)

    def guarded(handler: Callable[..., Any]) -> Callable[[Request], Any]:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except _Bad as err:
                return JSONResponse({"error": str(err)}, status_code=err.status, headers=_HEADERS)

        return endpoint

    text_encoder = encode_text

    def encode(texts: list[str]) -> np.ndarray:
        nonlocal text_encoder
        if text_encoder is None:
            spec = index.model
            if spec is None:
                raise _Bad(503, "text search needs the embedding model; this index does not record it")
            from ..text_embedder import embed_texts

            text_encoder = functools.partial(embed_texts, spec)
        return np.asarray(text_encoder(texts), dtype=np.float32)

    def image_embedder() -> Any:
        """The upload embedder, with this app's decompression-bomb limit."""
        from dataclasses import replace

        if embedder is not None:
            return replace(embedder, max_image_pixels=max_pixels)
        try:
            return replace(index._embedder(None), max_image_pixels=max_pixels)
        except ValueError as err:
            raise _Bad(503, str(err)) from None

    @guarded
    async def info(request: Request) -> Response:
        body = {
            "vectors": len(index),
            "index_key": index.index_key,
            "dim": index.dim,
            "key_column": index.key_column,
            "caption_column": caption_column,
            "images": index.image_column is not None,
            "text": encode_text is not None or index.model is not None,
            "upload": embedder is not None or index.model is not None,
            "max_upload_bytes": max_upload_bytes,
        }
        return JSONResponse(body, headers=_HEADERS)

    @guarded
    async def search_text(request: Request) -> Response:
        text = request.query_params.get("q", "").strip()
        if not text:
            raise _Bad(400, "empty query")
        k, started = k_of(request), time.perf_counter()
        try:
            results = await run_in_threadpool(lambda: index.search(encode([text]), k))
        except ValueError as err:  # a model without a usable text tower, a wrong dimension
            raise _Bad(503, f"text search is unavailable: {err}") from None
        return respond(results, text, started)

    @guarded
    async def like(request: Request) -> Response:
        raw = request.query_params.get("id", "")
        try:
            id_ = int(raw)
        except ValueError:
            raise _Bad(400, f"id={raw!r} is not an integer") from None
        k, started = k_of(request), time.perf_counter()
        try:
            results = await run_in_threadpool(index.search_ids, [id_], k)
        except KeyError:
            raise _Bad(404, f"no row with id {id_}") from None
        return respond(results, f"more like #{id_}", started)

    @guarded
    async def upload(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes:
            raise _Bad(413, f"upload larger than {max_upload_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_upload_bytes:
                raise _Bad(413, f"upload larger than {max_upload_bytes} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
        k, started = k_of(request), time.perf_counter()
        pixels, reason = await run_in_threadpool(decode_bytes, data, max_pixels=max_pixels)
        if pixels is None:  # refused before the model sees it: bombs, non-images, truncation
            raise _Bad(400, f"not a usable image: {reason}")
        one = image_embedder()
        try:
            results = await run_in_threadpool(lambda: index.search_image(data, k, embedder=one))
        except ValueError as err:
            raise _Bad(400, str(err)) from None
        return respond(results, "uploaded image", started)

    @functools.lru_cache(maxsize=thumbnail_cache)
    def thumb_bytes(id_: int) -> tuple[bytes | None, str | None]:
        try:
            return thumbnail(index.image(id_), max_pixels=max_pixels)
        except LookupError as err:
            return None, str(err)

    @guarded
    async def thumb(request: Request) -> Response:
        try:
            id_ = int(request.path_params["id"])
            index.positions([id_])
        except (ValueError, KeyError):
            raise _Bad(404, "no such row") from None
        data, reason = await run_in_threadpool(thumb_bytes, id_)
        if data is None:
            raise _Bad(404, f"no image: {reason}")
        headers = {**_HEADERS, "Cache-Control": "max-age=3600"}
        return Response(data, media_type="image/jpeg", headers=headers)

    routes = [
        Route("/", page("index.html", "text/html; charset=utf-8")),
        Route("/static/app.js", page("app.js", "text/javascript; charset=utf-8")),
        Route("/static/app.css", page("app.css", "text/css; charset=utf-8")),
        Route("/api/info", info),
        Route("/api/search", search_text),
        Route("/api/like", like),
        Route("/api/image", upload, methods=["POST"]),
        Route("/thumb/{id}", thumb),
    ]
    return Starlette(routes=routes)


def serve(
    index_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    encode_text: Callable[[list[str]], np.ndarray] | None = None,
    embedder: Any = None,
    caption_column: str | None = "auto",
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    log_level: str = "info",
) -> None:
    """Serve the browse page of ``index_dir`` until interrupted (what ``dask-clip serve`` runs).

    Parameters
    ----------
    index_dir
        A finished index.
    host, port
        Where to listen; 127.0.0.1 (this machine only) by default. Another host exposes the
        index's metadata and images to whoever can reach it.
    encode_text, embedder, caption_column, max_upload_bytes, max_pixels
        As :func:`create_app`.
    log_level
        uvicorn's log level.
    """
    _, uvicorn = _import_web()
    from .search import load

    index = load(index_dir)
    app = create_app(
        index,
        encode_text=encode_text,
        embedder=embedder,
        caption_column=caption_column,
        max_upload_bytes=max_upload_bytes,
        max_pixels=max_pixels,
    )
    logger.info("serving %r on http://%s:%d", index, host, port)
    print(f"dask-clip serve: {len(index)} vectors from {os.fspath(index_dir)} on http://{host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
