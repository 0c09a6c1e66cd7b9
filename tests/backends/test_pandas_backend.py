"""The pandas backend: output columns from flat buffers, embeddings read back, lazy registration."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dask_clip import backends, embeddings_to_numpy
from dask_clip.columns import EMBEDDING_DTYPE, FLOAT32, LIST_FLOAT32, SCORE_DTYPE, STRING


def test_embedding_column_is_one_flat_buffer_with_nulls():
    emb = np.arange(6, dtype=np.float32).reshape(3, 2)
    valid = np.array([True, False, True, True])
    column = backends.output_column(pd.DataFrame(index=range(4)), LIST_FLOAT32, emb, valid)
    assert column.dtype == EMBEDDING_DTYPE
    lists = column.__arrow_array__().combine_chunks()
    assert lists.offsets.to_pylist() == [0, 2, 2, 4, 6]
    assert lists.is_null().to_pylist() == [False, True, False, False]
    # The values buffer is the embeddings' bytes, not per-row Python objects.
    assert np.frombuffer(lists.values.buffers()[1], np.float32).tolist() == emb.ravel().tolist()
    back = embeddings_to_numpy(pd.Series(column))
    np.testing.assert_array_equal(back[[0, 2, 3]], emb)
    assert np.isnan(back[1]).all()


def test_score_and_string_columns():
    like = pd.DataFrame(index=[7, 8, 9])
    scores = backends.output_column(like, FLOAT32, np.array([0.5, 2.0], np.float32), np.array([True, False, True]))
    assert scores.dtype == SCORE_DTYPE and pd.Series(scores).tolist()[0] == 0.5
    assert pd.Series(scores).isna().tolist() == [False, True, False]
    strings = backends.output_column(like, STRING, ["a", None, "c"])
    assert pa.array(strings).to_pylist() == ["a", None, "c"]
    for kind in (LIST_FLOAT32, FLOAT32, STRING):
        empty = backends.empty_column(like, kind)
        assert len(empty) == 0 and empty.dtype == pd.Series(backends.output_column(like.iloc[:0], kind, [], None)).dtype


def test_embeddings_to_numpy_reads_object_columns_from_plain_pandas():
    series = pd.Series([np.array([1, 2], np.float32), np.array([3, 4], np.float32)], dtype=object)
    np.testing.assert_array_equal(embeddings_to_numpy(series), [[1, 2], [3, 4]])


def test_embedding_matrix_skips_null_empty_and_non_finite_rows():
    series = pd.Series([[1.0, 0.0], None, [], [np.nan, 1.0], [0.0, 2.0]], dtype=pd.ArrowDtype(pa.list_(pa.float32())))
    x, valid = backends.embedding_matrix(series)
    assert valid.tolist() == [True, False, False, False, True]
    assert x.tolist() == [[1.0, 0.0], [0.0, 2.0]]
    with pytest.raises(ValueError, match="different lengths"):
        backends.embedding_matrix(pd.Series([[1.0], [1.0, 2.0]], dtype=pd.ArrowDtype(pa.list_(pa.float32()))))


def test_unsupported_objects_get_a_clear_error():
    with pytest.raises(TypeError, match="column_type: expected a pandas or cuDF DataFrame, Series or Index, got list"):
        backends.column_type([1, 2])


@pytest.mark.slow  # a fresh interpreter: what it imports is what is tested
def test_dispatch_on_pandas_imports_no_cudf():
    code = (
        "import sys, pandas as pd; from dask_clip import backends; "
        "backends.column_type(pd.Series([b'x'])); print('cudf' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_packed_floats_are_one_binary_column_read_back_as_a_matrix():
    """``pack_floats``: a float32 matrix as one ``large_binary`` value per row (the border
    sketches' shuffle column), read back unchanged by ``embedding_matrix``, also after a take."""
    import torch

    x = torch.arange(12, dtype=torch.float32).reshape(4, 3) / 7
    col = backends.pack_floats(pd.DataFrame(index=range(4)), x)
    assert col.dtype == pd.ArrowDtype(pa.large_binary())
    back, valid = backends.embedding_matrix(col)
    assert valid.all() and torch.equal(back, x)
    picked, _ = backends.embedding_matrix(backends.take(col, np.array([3, 1])))
    assert torch.equal(picked, x[[3, 1]])
    assert len(backends.pack_floats(pd.DataFrame(), torch.zeros((0, 3)))) == 0
