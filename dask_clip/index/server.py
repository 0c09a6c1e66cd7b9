"""``dask-clip serve``: a small local web page to browse an index (Starlette + uvicorn).

The page opens on a seeded random sample of the rows (with "more"); a search box (text,
through the model's text tower, loaded when the server starts), an image upload, a grid of
thumbnails with file name or key, caption and scores, "more like this" per card, and a full
view of one image with its row. The query, ``like`` id, sample seed and ``k`` live in the URL,
so a page can be bookmarked, shared, reloaded and navigated with back/forward. Bound to
127.0.0.1 by default. What it will read is fixed by the index: thumbnails come from the kept
image column (bytes, or the paths/URLs stored in the id table) by row id — a request never
names a file. Uploads are size-limited and decoded with the embedder's decompression-bomb
limit; the page renders every value from the data as text (``textContent``), and the
Content-Security-Policy allows only the app's own script.

Hostile requests (see docs/robustness.md): a ``Host`` header that is not one of the allowed
names (localhost names by default; DNS rebinding) is answered 400 before any route runs;
uploads must come as the page sends them (``Content-Type: application/octet-stream``, which a
cross-origin page cannot send without a CORS preflight this server never grants; a foreign
``Origin`` is refused too) and are decoded only when the search can run; thumbnails and
uploads decode within ``max_decode_bytes``, at most ``max_decodes`` at a time; ids outside
int64 are 404s; an unreadable thumbnail names no local path.
"""

from __future__ import annotations

import functools
import logging
import os
import posixpath
import threading
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..image.decode import DEFAULT_DECODE_BUDGET, DEFAULT_MAX_IMAGE_PIXELS
from .ids import ID
from .report import json_value, score_columns, thumbnail

__all__ = ["DEFAULT_MAX_DECODES", "DEFAULT_MAX_UPLOAD_BYTES", "LOCAL_HOSTS", "create_app", "serve"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20
#: Images decoded at once (thumbnails and uploads together); others wait their turn.
DEFAULT_MAX_DECODES = 2
#: Host names the server answers by default: this machine's. Any other name in ``Host`` is a
#: page on another site reaching 127.0.0.1 through DNS rebinding.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
UPLOAD_TYPE = "application/octet-stream"  # what static/app.js sends
_INT64 = (-(2**63), 2**63 - 1)
DEFAULT_K = 24
MAX_K = 200
CAPTION_CANDIDATES = ("caption", "text", "TEXT", "title", "alt")
# Text columns shown on a card beside the numeric scores (the zero-shot head's label).
LABEL_COLUMNS = ("zero_shot_label",)
FULL_IMAGE_SIZE = 1280
MAX_SAMPLE_OFFSET = 10**12
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


class TextTower:
    """The text encoder of the page: loaded once, on first use or ahead of it (:meth:`load`,
    which ``serve`` runs in a thread as the server starts), behind a lock.

    Attributes
    ----------
    state : str
        ``"idle"`` (not loaded yet), ``"loading"``, ``"ready"``, ``"unavailable"`` (the index
        records no model) or ``"failed"``.
    error : str or None
        Why it is unavailable or failed.
    seconds : float or None
        How long loading took.
    """

    def __init__(self, index: Any, encode_text: Callable[[list[str]], np.ndarray] | None) -> None:
        self._encode = encode_text
        self._index = index
        self._lock = threading.Lock()
        self.state = "ready" if encode_text is not None else "idle"
        self.error: str | None = None
        self.seconds: float | None = None
        if encode_text is None and index.model is None:
            self.state, self.error = "unavailable", "the index records no model"

    @property
    def available(self) -> bool:
        """Text search can work (loaded, or loadable)."""
        return self.state in ("idle", "loading", "ready")

    def load(self) -> None:
        """Load the model and tokenizer now (a one-word query warms both); idempotent."""
        with self._lock:
            if self.state != "idle":
                return
            self.state, started = "loading", time.perf_counter()
            try:
                from ..embed.text_embedder import embed_texts

                self._index.check_weights()  # weights replaced since the index was built: say so
                encode = functools.partial(embed_texts, self._index.model)
                encode(["a photo"])
            except Exception as err:  # shown on the page and in the terminal, never a crash
                self.state, self.error = "failed", f"{type(err).__name__}: {err}"
                logger.exception("the text tower did not load")
                return
            self._encode, self.state = encode, "ready"
            self.seconds = time.perf_counter() - started

    def __call__(self, texts: list[str]) -> np.ndarray:
        """float32 (Q, D) for ``texts``; loads first if needed.

        Raises
        ------
        ValueError
            The text tower is unavailable or failed to load (with the reason).
        """
        self.load()
        if self._encode is None:
            raise ValueError(self.error or "no text tower")
        return np.asarray(self._encode(texts), dtype=np.float32)


def create_app(
    index: Any,
    *,
    encode_text: Callable[[list[str]], np.ndarray] | None = None,
    embedder: Any = None,
    caption_column: str | None = "auto",
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    thumbnail_cache: int = 2048,
    max_decode_bytes: int | None = DEFAULT_DECODE_BUDGET,
    max_decodes: int = DEFAULT_MAX_DECODES,
    allowed_hosts: Sequence[str] = LOCAL_HOSTS,
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
    max_decode_bytes
        Decoded bytes one thumbnail or upload may take (the embedder's budget, 256 MiB): a
        larger JPEG is decoded at a reduced scale, anything else larger is refused.
    max_decodes
        Images decoded at once; with ``max_decode_bytes`` this bounds what decoding can hold
        (about ``max_decodes x 2.7 x max_decode_bytes``, see docs/robustness.md).
    allowed_hosts
        Names the ``Host`` header may give (a port is ignored; ``*.example.com`` patterns,
        ``"*"`` for any); others get 400. Localhost names by default.

    Returns
    -------
    starlette.applications.Starlette
    """
    _import_web()
    import asyncio

    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from .search import SearchIndex, load

    if not isinstance(max_decodes, int) or isinstance(max_decodes, bool) or max_decodes < 1:
        raise ValueError(f"max_decodes must be a positive int, got {max_decodes!r}")
    if isinstance(allowed_hosts, str):
        raise TypeError(f"allowed_hosts must be a list of host names, got {allowed_hosts!r}")
    hosts = [h.lower().strip() for h in allowed_hosts]
    if not isinstance(index, SearchIndex):
        index = load(index)
    decode_slots = asyncio.Semaphore(max_decodes)

    async def decoding(fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) in a worker thread, at most ``max_decodes`` at a time."""
        async with decode_slots:
            return await run_in_threadpool(fn, *args)

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

    loaded = index.image_column is not None and index.image_column in names  # bytes stay on disk
    image_type = index.table.schema.field(index.image_column).type if loaded else None
    image_is_path = image_type is not None and (pa.types.is_string(image_type) or pa.types.is_large_string(image_type))
    labels = [c for c in LABEL_COLUMNS if c in names]

    def display_name(row: dict[str, Any]) -> str | None:
        """A file name (the last part of the image path) where images are paths, else the key."""
        if image_is_path and isinstance(row.get(index.image_column), str):
            return posixpath.basename(str(row[index.image_column]).replace("\\", "/").rstrip("/")) or None
        key = json_value(row.get(index.key_column)) if index.key_column else None
        return None if key is None else str(key)

    def row_id(raw: str) -> int:
        """A row id from the request: an int64, else 404 (no row can have it)."""
        try:
            id_ = int(raw)
        except ValueError:
            raise _Bad(400, f"id={raw[:40]!r} is not an integer") from None
        if not _INT64[0] <= id_ <= _INT64[1]:
            raise _Bad(404, f"no row with id {raw[:40]}")
        return id_

    def respond(results: pd.DataFrame, query: str, started: float, extra: dict | None = None) -> JSONResponse:
        scores = score_columns(results, exclude=(index.key_column,))
        items = []
        for row in results.to_dict(orient="records"):
            caption = row.get(caption_column) if caption_column else None
            similarity = row.get("similarity")
            items.append(
                {
                    "id": str(int(row[ID])),  # a string: JavaScript numbers lose int64 precision
                    "rank": int(row["rank"]),
                    "similarity": None if similarity is None else float(similarity),
                    "key": json_value(row.get(index.key_column)) if index.key_column else None,
                    "name": display_name(row),
                    "caption": json_value(caption),
                    "scores": {c: json_value(row[c]) for c in scores},
                    "labels": {c: json_value(row[c]) for c in labels},
                }
            )
        took = (time.perf_counter() - started) * 1000
        body = {"query": query, "results": items, "took_ms": round(took, 2), **(extra or {})}
        return JSONResponse(body, headers=_HEADERS)

    def id_of(raw: str) -> int:
        """A row id of this index, or 404."""
        try:
            id_ = row_id(raw)
            index.positions([id_])
        except (_Bad, KeyError, OverflowError):
            raise _Bad(404, "no such row") from None
        return id_

    def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
        raw = request.query_params.get(name, str(default))
        try:
            value = int(raw)
        except ValueError:
            raise _Bad(400, f"{name}={raw!r} is not an integer") from None
        if not low <= value <= high:
            raise _Bad(400, f"{name} must be between {low} and {high}")
        return value

    def guarded(handler: Callable[..., Any]) -> Callable[[Request], Any]:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except _Bad as err:
                return JSONResponse({"error": str(err)}, status_code=err.status, headers=_HEADERS)

        return endpoint

    tower = TextTower(index, encode_text)
    index.result_images = False  # the page gets images from /thumb and /image, not in results

    def encode(texts: list[str]) -> np.ndarray:
        if tower.state == "unavailable":
            raise _Bad(503, "text search needs the embedding model; this index does not record it")
        return tower(texts)

    def image_embedder() -> Any:
        """The upload embedder, with this app's decompression-bomb limit and decode budget."""
        from dataclasses import replace

        limits = {"max_image_pixels": max_pixels, "max_decode_bytes": max_decode_bytes}
        if embedder is not None:
            return replace(embedder, **limits)
        try:
            return replace(index._embedder(None), **limits)
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
            "text": tower.available,
            "text_state": tower.state,
            "text_error": tower.error,
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
        id_ = row_id(request.query_params.get("id", ""))
        k, started = k_of(request), time.perf_counter()
        try:
            results = await run_in_threadpool(index.search_ids, [id_], k)
        except (KeyError, OverflowError):
            raise _Bad(404, f"no row with id {id_}") from None
        return respond(results, f"more like #{id_}", started)

    @guarded
    async def upload(request: Request) -> Response:
        # Only as the page sends it: a cross-origin form or fetch without a preflight can send
        # text/plain or form types, never this one; browsers name the sending page in Origin.
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != UPLOAD_TYPE:
            raise _Bad(415, f"upload the image bytes as {UPLOAD_TYPE} (got {media_type or 'no content type'!r})")
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
            raise _Bad(403, "uploads are accepted from this server's own page only")
        k = k_of(request)
        one = image_embedder()  # 503 before the body is read or decoded when no model is recorded
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
        started = time.perf_counter()

        try:  # decoded once, by the embedder, within its limits: bombs, non-images are a 400
            results = await decoding(lambda: index.search_image(data, k, embedder=one))
        except ValueError as err:
            raise _Bad(400, f"not a usable image: {err}") from None
        return respond(results, "uploaded image", started)

    @guarded
    async def sample(request: Request) -> Response:
        """A seeded random page of the rows: row ``offset`` to ``offset + k`` of one shuffle."""
        k, started = k_of(request), time.perf_counter()
        seed = int_param(request, "seed", 0, 0, 2**32 - 1)
        offset = int_param(request, "offset", 0, 0, MAX_SAMPLE_OFFSET)
        order = shuffled(seed)
        positions = order[offset : offset + k]
        rows = index.frame.take(positions).reset_index(drop=True)
        rows.insert(0, "rank", np.arange(offset + 1, offset + 1 + len(positions), dtype=np.int64))
        extra = {"seed": seed, "offset": offset, "total": len(order)}
        return respond(rows, f"a random sample (seed {seed})", started, extra)

    @functools.lru_cache(maxsize=4)
    def shuffled(seed: int) -> np.ndarray:
        return np.random.default_rng(seed).permutation(len(index.frame))

    @guarded
    async def row(request: Request) -> Response:
        """Every column of one row (binary ones dropped), for the full view."""
        id_ = id_of(request.path_params["id"])
        record = {str(c): json_value(v) for c, v in index.rows([id_]).iloc[0].items()}
        record[ID] = str(id_)
        body = {"id": str(id_), "name": display_name(record), "row": record}
        return JSONResponse(body, headers=_HEADERS)

    @functools.lru_cache(maxsize=64)
    def full_bytes(id_: int) -> tuple[bytes | None, str | None]:
        try:
            return thumbnail(index.image(id_), size=FULL_IMAGE_SIZE, max_pixels=max_pixels)
        except LookupError as err:
            return None, str(err)

    @guarded
    async def full(request: Request) -> Response:
        """One row's image, re-encoded at most FULL_IMAGE_SIZE px on its longest side."""
        id_ = id_of(request.path_params["id"])
        data, reason = await run_in_threadpool(full_bytes, id_)
        if data is None:
            raise _Bad(404, f"no image: {reason}")
        headers = {**_HEADERS, "Cache-Control": "max-age=3600"}
        return Response(data, media_type="image/jpeg", headers=headers)

    @functools.lru_cache(maxsize=thumbnail_cache)
    def thumb_bytes(id_: int) -> tuple[bytes | None, str | None]:
        try:
            data = index.image(id_)
        except LookupError as err:
            if index.image_column is None:
                return None, str(err)
            # The reason may name a local file (a path column): the log has it, the answer not.
            logger.info("thumbnail of row %d: %s", id_, err)
            return None, "the row's image is missing or cannot be read"
        return thumbnail(data, max_pixels=max_pixels, max_bytes=max_decode_bytes)

    @guarded
    async def thumb(request: Request) -> Response:
        raw = request.path_params["id"]
        try:
            id_ = row_id(raw)
            index.positions([id_])
        except (_Bad, KeyError, OverflowError):
            raise _Bad(404, "no such row") from None
        data, reason = await decoding(thumb_bytes, id_)
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
        Route("/api/sample", sample),
        Route("/api/row/{id}", row),
        Route("/thumb/{id}", thumb),
        Route("/image/{id}", full),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])
    app.state.text_tower = tower
    return app


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
    preload_text: bool = True,
    max_decode_bytes: int | None = DEFAULT_DECODE_BUDGET,
    max_decodes: int = DEFAULT_MAX_DECODES,
    allow_hosts: Sequence[str] = (),
) -> None:
    """Serve the browse page of ``index_dir`` until interrupted (what ``dask-clip serve`` runs).

    Parameters
    ----------
    index_dir
        A finished index.
    host, port
        Where to listen; 127.0.0.1 (this machine only) by default. Another host exposes the
        index's metadata and images to whoever can reach it.
    encode_text, embedder, caption_column, max_upload_bytes, max_pixels, max_decode_bytes, max_decodes
        As :func:`create_app`.
    allow_hosts
        Names the ``Host`` header may give besides the localhost names and ``host`` itself
        (unless it is a wildcard address, ``0.0.0.0`` or ``::``); ``"*"`` allows any.
    log_level
        uvicorn's log level.
    preload_text
        Load the text tower in a thread as the server starts (a terminal line says so, and
        the page shows it while it loads), instead of on the first text query.
    """
    _, uvicorn = _import_web()
    from .search import load

    index = load(index_dir)
    bound = [] if host in ("0.0.0.0", "::", "") else [f"[{host}]" if ":" in host else host]
    allowed_hosts = [*LOCAL_HOSTS, *bound, *allow_hosts]
    app = create_app(
        index,
        encode_text=encode_text,
        embedder=embedder,
        caption_column=caption_column,
        max_upload_bytes=max_upload_bytes,
        max_pixels=max_pixels,
        max_decode_bytes=max_decode_bytes,
        max_decodes=max_decodes,
        allowed_hosts=allowed_hosts,
    )
    logger.info("serving %r on http://%s:%d", index, host, port)
    print(f"dask-clip serve: {len(index)} vectors from {os.fspath(index_dir)} on http://{host}:{port}/", flush=True)
    if preload_text:
        threading.Thread(target=_load_text_tower, args=(app.state.text_tower, index), daemon=True).start()
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def _load_text_tower(tower: TextTower, index: Any) -> None:
    """Load the text tower now, so the first query does not wait for it; say so in the terminal."""
    if tower.state != "idle":
        return
    model = index.model
    name = model.model_dir or f"{model.model} ({model.pretrained})"
    print(f"dask-clip serve: loading the text tower of {name} (the page shows it while it loads)", flush=True)
    tower.load()
    if tower.state == "ready":
        print(f"dask-clip serve: text search ready ({tower.seconds:.1f} s)", flush=True)
    else:
        print(f"dask-clip serve: text search unavailable: {tower.error}", flush=True)
