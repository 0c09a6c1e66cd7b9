"""Output formats, a registry: each module here that defines ``FORMAT`` (an
:class:`~dask_clip.io.writers.base.OutputFormat`) is one format.

===========  ===================================================================================
format       what it writes
===========  ===================================================================================
``parquet``  ``part-NNNNN.parquet``, one file per partition (:mod:`.parquet`; the default)
``lance``    a Lance dataset, one fragment per partition, one commit (:mod:`.lance`)
``laion``    ``img_emb/*.npy`` + ``metadata/*.parquet``, LAION's layout (:mod:`.laion`)
===========  ===================================================================================

Each format module implements :class:`~dask_clip.io.writers.partitioned.PartitionFormat`;
:func:`~dask_clip.io.writers.partitioned.write_format` runs every one of them with the same
atomic commits, resume, manifest and input checks (:mod:`.partitioned`, :mod:`.base`). Adding a
format is one module in this package plus its test: ``embed_parquet(output_format=...)`` and
the CLI's ``--output-format`` choices read the registry.
"""

from __future__ import annotations

from typing import Any

from ...registry import ModuleRegistry
from .base import OutputFormat

__all__ = ["OutputFormat", "get_output_format", "output_format_names", "output_formats"]

_FORMATS = ModuleRegistry(__name__, "FORMAT", OutputFormat)


def output_formats() -> list[OutputFormat]:
    """Every output format of this package, in order (found on first call, then kept)."""
    return _FORMATS.all()


def output_format_names() -> tuple[str, ...]:
    """The ``output_format`` choices, the default (``"parquet"``) first."""
    return tuple(_FORMATS.names())


def get_output_format(name: str) -> OutputFormat:
    """The format called ``name``.

    Raises
    ------
    ValueError
        No such format (the message lists them).
    """
    found = _FORMATS.find(name)
    if found is None:
        raise ValueError(f"output_format={name!r}: use one of {', '.join(output_format_names())}")
    return found


def build_output_format(name: str, embedder: Any, options: dict[str, Any] | None = None) -> Any:
    """The :class:`~dask_clip.io.writers.partitioned.PartitionFormat` ``name`` for ``embedder``'s columns."""
    return get_output_format(name).build(embedder, options or {})
