"""The Parquet writer's former module: its names, re-exported.

New code imports :mod:`dask_clip.io.writers.parquet` (``write_parquet``, ``write_tasks``,
``check_output``, ...), :mod:`dask_clip.io.writers.base` (``MANIFEST``, ``WriteSummary``,
``location``, ...) and :mod:`dask_clip.io.writers.arrow` (``to_arrow``, ``arrow_types``).
"""

from __future__ import annotations

from .writers.arrow import _fix_pandas_metadata, arrow_types, to_arrow
from .writers.base import (
    EMBEDDING_METADATA,
    MANIFEST,
    WRITER,
    WriteSummary,
    _input_roots,
    check_not_input,
    count_nonnull,
    location,
)
from .writers.parquet import (
    check_output,
    looks_complete,
    part_name,
    remove_temporaries,
    write_parquet,
    write_tasks,
)

__all__ = [
    "EMBEDDING_METADATA",
    "MANIFEST",
    "WRITER",
    "WriteSummary",
    "_fix_pandas_metadata",
    "_input_roots",
    "arrow_types",
    "check_not_input",
    "check_output",
    "count_nonnull",
    "location",
    "looks_complete",
    "part_name",
    "remove_temporaries",
    "to_arrow",
    "write_parquet",
    "write_tasks",
]
