"""Retrieval over the embeddings: a faiss kNN index built on Dask, and search by embedding,
row key, image or text.

One module per step: :mod:`.keys` (choose the index from rows, dimension and a memory budget),
:mod:`.train` (seeded sample, training), :mod:`.add` (shards per partition, on the workers),
:mod:`.merge` (in memory or on-disk inverted lists), :mod:`.ids` (the id -> row table),
:mod:`.layout` (the folder and its manifest, published atomically), :mod:`.builder` (all of it),
:mod:`.search` (load and query; text queries through :func:`dask_clip.embed.text_embedder.embed_texts`),
:mod:`.report` (HTML results) and
:mod:`.server` (a local page to browse). Names are imported on first use: faiss, torch and the
web framework only load when needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .builder import BuildSummary, build
    from .keys import IndexChoice, choose_index_key
    from .layout import IndexNotFoundError
    from .report import results_html, results_records
    from .search import SearchIndex, load
    from .server import create_app, serve

_EXPORTS = {
    "BuildSummary": "builder",
    "IndexChoice": "keys",
    "IndexNotFoundError": "layout",
    "SearchIndex": "search",
    "build": "builder",
    "choose_index_key": "keys",
    "create_app": "server",
    "load": "search",
    "results_html": "report",
    "results_records": "report",
    "serve": "server",
}
__all__ = [
    "BuildSummary",
    "IndexChoice",
    "IndexNotFoundError",
    "SearchIndex",
    "build",
    "choose_index_key",
    "create_app",
    "load",
    "results_html",
    "results_records",
    "serve",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dask_clip.index' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
