"""Output column kinds, and the pandas dtype of each (the cuDF ones are in :mod:`.cudf_backend`)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

__all__ = [
    "BINARY_DTYPE",
    "COLUMN_KINDS",
    "EMBEDDING_DTYPE",
    "ERROR_DTYPE",
    "FLOAT32",
    "LIST_FLOAT32",
    "PANDAS_DTYPES",
    "SCORE_DTYPE",
    "STRING",
    "UINT64",
]

LIST_FLOAT32 = "list<float32>"
FLOAT32 = "float32"
STRING = "string"
UINT64 = "uint64"  # perceptual hashes (embed --phash)
COLUMN_KINDS = (LIST_FLOAT32, FLOAT32, STRING, UINT64)

EMBEDDING_DTYPE = pd.ArrowDtype(pa.list_(pa.float32()))
SCORE_DTYPE = pd.ArrowDtype(pa.float32())
ERROR_DTYPE = pd.ArrowDtype(pa.string())
BINARY_DTYPE = pd.ArrowDtype(pa.binary())
#: The pandas dtype of each column kind.
PANDAS_DTYPES = {
    LIST_FLOAT32: EMBEDDING_DTYPE,
    FLOAT32: SCORE_DTYPE,
    STRING: ERROR_DTYPE,
    UINT64: pd.ArrowDtype(pa.uint64()),
}
