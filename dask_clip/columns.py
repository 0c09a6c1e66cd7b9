"""The output column types, backend-neutral, and reading an embedding column back as a matrix.

An output column has a *kind*; each backend (:mod:`dask_clip.backends`) maps a kind to its own
dtype:

======================  ==============================================  ==========================
kind                    pandas                                          cuDF
======================  ==============================================  ==========================
``"list<float32>"``     ``pd.ArrowDtype(pa.list_(pa.float32()))``       ``cudf.ListDtype("float32")``
``"float32"``           ``pd.ArrowDtype(pa.float32())``                 ``float32``
``"string"``            ``pd.ArrowDtype(pa.string())``                  ``str``
======================  ==============================================  ==========================
"""

from __future__ import annotations

from typing import Any

import numpy as np
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
    "embeddings_to_numpy",
]

LIST_FLOAT32 = "list<float32>"
FLOAT32 = "float32"
STRING = "string"
COLUMN_KINDS = (LIST_FLOAT32, FLOAT32, STRING)

EMBEDDING_DTYPE = pd.ArrowDtype(pa.list_(pa.float32()))
SCORE_DTYPE = pd.ArrowDtype(pa.float32())
ERROR_DTYPE = pd.ArrowDtype(pa.string())
BINARY_DTYPE = pd.ArrowDtype(pa.binary())
#: The pandas dtype of each column kind.
PANDAS_DTYPES = {LIST_FLOAT32: EMBEDDING_DTYPE, FLOAT32: SCORE_DTYPE, STRING: ERROR_DTYPE}


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
    from .backends import embedding_matrix

    x, valid = embedding_matrix(series, device="cpu")
    out = np.full((len(valid), x.shape[1]), np.nan, dtype=np.float32)
    out[valid.numpy()] = x.numpy()
    return out
