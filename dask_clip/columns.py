"""The output column types, backend-neutral, and reading an embedding column back as a matrix.

An output column has a *kind*; each backend (:mod:`dask_clip.backends`) maps a kind to its own
dtype:

======================  ==============================================  ==========================
kind                    pandas                                          cuDF
======================  ==============================================  ==========================
``"list<float32>"``     ``pd.ArrowDtype(pa.list_(pa.float32()))``       ``cudf.ListDtype("float32")``
``"float32"``           ``pd.ArrowDtype(pa.float32())``                 ``float32``
``"string"``            ``pd.ArrowDtype(pa.string())``                  ``str``
``"uint64"``            ``pd.ArrowDtype(pa.uint64())``                  ``uint64``
======================  ==============================================  ==========================
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends import embedding_matrix
from .backends.kinds import (
    BINARY_DTYPE,
    COLUMN_KINDS,
    EMBEDDING_DTYPE,
    ERROR_DTYPE,
    FLOAT32,
    LIST_FLOAT32,
    PANDAS_DTYPES,
    SCORE_DTYPE,
    STRING,
    UINT64,
)

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
    "embeddings_to_numpy",
]


def embeddings_to_numpy(series: Any) -> np.ndarray:
    """Read an embedding column back as float32 (N, D); rows without an embedding are NaN.

    Parameters
    ----------
    series
        A ``list<float32>`` column: pandas (Arrow list dtype, or an object column of arrays as
        plain ``pd.read_parquet`` gives) or cuDF (copied to the host).

    Returns
    -------
    numpy.ndarray
        float32 (N, D). A row that is null, empty or holds a non-finite value is all NaN.

    Raises
    ------
    ValueError
        Rows hold embeddings of different lengths.
    """
    x, valid = embedding_matrix(series, device="cpu")
    out = np.full((len(valid), x.shape[1]), np.nan, dtype=np.float32)
    out[valid.numpy()] = x.numpy()
    return out
