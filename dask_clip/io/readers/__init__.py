"""Input formats, a registry: each module here that defines ``FORMAT`` (an
:class:`~dask_clip.io.readers.base.InputFormat`) is one format.

================  ==============================================================================
format            what it reads
================  ==============================================================================
``webdataset``    tar shards (``.tar``, ``.tar.gz`` ..., brace lists), one partition per shard
``parquet``       Parquet tables of images (img2dataset), one partition per file or row group
``images``        folders or globs of image files, a ``path`` column
================  ==============================================================================

``input_format="auto"`` asks them in priority order (the order above). Adding a format is one
module in this package plus its test: :func:`dask_clip.io.read.read_images`, ``embed_parquet``'s
resume fingerprint and the CLI's ``--input-format`` choices all read the registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...registry import ModuleRegistry
from .base import InputFormat, Listing, ReadRequest, no_input

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = ["InputFormat", "ReadRequest", "get_input_format", "input_formats", "read", "resolve"]

_FORMATS = ModuleRegistry(__name__, "FORMAT", InputFormat)


def input_formats() -> list[InputFormat]:
    """Every format of this package, in priority order (found on first call, then kept)."""
    return _FORMATS.all()


def get_input_format(name: str) -> InputFormat:
    """The format called ``name``.

    Raises
    ------
    ValueError
        No such format (the message lists them).
    """
    by_name = {fmt.name: fmt for fmt in input_formats()}
    if name not in by_name:
        raise ValueError(f"input_format={name!r}; expected 'auto' or one of {sorted(by_name)}")
    return by_name[name]


def resolve(request: ReadRequest, input_format: str = "auto", listing: Listing | None = None) -> InputFormat:
    """The format that reads ``request``: the one named, or for ``"auto"`` the first that claims it.

    Raises
    ------
    FileNotFoundError
        ``"auto"`` and no format claims the path.
    """
    if input_format != "auto":
        return get_input_format(input_format)
    listing = listing or Listing(request)
    for fmt in input_formats():
        if fmt.claims(request, listing):
            return fmt
    raise no_input(request)


def read(request: ReadRequest, input_format: str = "auto") -> tuple[dd.DataFrame, str]:
    """Read ``request`` with its format; see :func:`dask_clip.io.read.read_images`."""
    listing = Listing(request)
    return resolve(request, input_format, listing).read(request, listing)


def fingerprint(request: ReadRequest, input_format: str = "auto") -> dict[str, Any]:
    """What, beyond the path and options, defines the input for a resumable job."""
    return resolve(request, input_format).fingerprint(request)
