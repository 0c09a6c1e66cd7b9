"""WebDataset tar shards (img2dataset's ``--output_format webdataset``): one partition per shard
or byte range of one (:func:`dask_clip.io.webdataset.read_webdataset`), image bytes in ``image``."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from .base import InputFormat, Listing, ReadRequest

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = ["FORMAT"]


def claims(request: ReadRequest, listing: Listing) -> bool:
    from ..webdataset import is_webdataset_input

    return is_webdataset_input(request.path, request.storage_options)


def read(request: ReadRequest, listing: Listing) -> tuple[dd.DataFrame, str]:
    from ..webdataset import read_webdataset

    column = request.image_column or "image"
    shards = read_webdataset(
        request.path,
        image_column=column,
        split_shards=request.split_shards,
        storage_options=request.storage_options,
        max_member_bytes=request.max_member_bytes,
    )
    return shards, column


def fingerprint(request: ReadRequest) -> dict[str, Any]:
    """The shards and their byte ranges: a changed shard list would otherwise be mixed into the
    output under the same partition count."""
    from ..webdataset import webdataset_partitions

    plan = [
        (p.shard, p.size, p.start, p.end)
        for p in webdataset_partitions(
            request.path, split_shards=request.split_shards, storage_options=request.storage_options
        )
    ]
    return {"shards": hashlib.sha256(json.dumps(plan).encode()).hexdigest()}


FORMAT = InputFormat(name="webdataset", priority=0, claims=claims, read=read, fingerprint=fingerprint)
