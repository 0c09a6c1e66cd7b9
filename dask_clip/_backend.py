"""Which dataframe library a partition comes from, without importing cuDF."""

from __future__ import annotations

__all__ = ["is_cudf"]


def is_cudf(obj: object) -> bool:
    """True for cuDF objects (``cudf.DataFrame``/``Series``/``Index``), by module name only."""
    return type(obj).__module__.partition(".")[0] == "cudf"
