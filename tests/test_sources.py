"""Image sources: detection from dtypes and values, rows, the registry as an extension point."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from dask_clip import ImageEmbedder
from dask_clip.columns import BINARY_DTYPE, embeddings_to_numpy
from dask_clip.image.sources import SOURCES, BytesSource, detect_source, get_source, image_kinds, register_source
from dask_clip.testing import encode_image


@pytest.mark.parametrize(
    ("series", "kind"),
    [
        (pd.Series([b"x"], dtype=BINARY_DTYPE), "bytes"),
        (pd.Series([b"x"], dtype=object), "bytes"),
        (pd.Series(["a.jpg"]), "path"),
        (pd.Series(["a.jpg"], dtype=pd.ArrowDtype(pa.string())), "path"),
        (pd.Series([np.zeros((2, 2, 3), np.uint8)], dtype=object), "pixels"),
        (pd.Series([[1, 2]], dtype=pd.ArrowDtype(pa.list_(pa.uint8()))), "pixels"),
        (pd.Series([None], dtype=object), None),
    ],
)
def test_detect_image_kind(series, kind):
    source = detect_source(series)
    assert (source.kind if source is not None else None) == kind


def test_detect_image_kind_rejects_non_images():
    with pytest.raises(TypeError, match="holds no images"):
        detect_source(pd.Series([1.0, 2.0]))
    with pytest.raises(TypeError, match="holds no images"):
        detect_source(pd.Series([[1.5]], dtype=pd.ArrowDtype(pa.list_(pa.float32()))))


def test_flat_pixel_lists_are_views_of_the_arrow_buffer():
    images = [np.arange(24, dtype=np.uint8).reshape(2, 4, 3), np.full((3, 1, 3), 7, np.uint8)]
    array = pa.array([i.ravel() for i in images] + [None], type=pa.list_(pa.uint8())).slice(0, 3)
    frame = pd.DataFrame({"image": pd.arrays.ArrowExtensionArray(array), "h": [2, 3, 1], "w": [4, 1, 1]})
    rows = get_source("pixels").rows(frame, "image", height_column="h", width_column="w")
    assert isinstance(rows[0], torch.Tensor) and rows[0].shape == (2, 4, 3)
    np.testing.assert_array_equal(rows[1].numpy(), images[1])
    assert rows[2] is None
    base = np.frombuffer(array.values.buffers()[1], np.uint8)
    assert rows[0].data_ptr() == base.ctypes.data  # no copy


def test_arrow_bytes_rows_are_views_not_copies():
    blobs = [encode_image(np.full((8, 8, 3), i, np.uint8), "PNG") for i in range(3)]
    frame = pd.DataFrame({"image": pd.Series([*blobs, None], dtype=BINARY_DTYPE)})
    rows = get_source("bytes").rows(frame, "image", height_column="h", width_column="w")
    assert [None if r is None else bytes(r) for r in rows] == [*blobs, None]
    data = frame["image"].array.__arrow_array__().chunk(0).buffers()[2]
    assert np.frombuffer(rows[0], np.uint8).__array_interface__["data"][0] == data.address


def test_unknown_kind_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"image_kind='svg'; choose one of \('auto', 'bytes', 'path', 'pixels'\)"):
        get_source("svg")


class HexSource(BytesSource):
    """A new kind for the test: images stored as hex text in a string column."""

    kind = "hex"

    def matches_type(self, arrow_type: pa.DataType) -> bool:
        return False  # only on request: strings are paths by default

    def matches_value(self, value: object) -> bool:
        return False

    def rows(self, df, column, *, height_column, width_column):
        return [None if v is None else bytes.fromhex(v) for v in df[column].tolist()]

    def keep(self, series):
        return series


def test_a_new_kind_is_one_class(model_dir, photo_jpegs):
    register_source(HexSource())
    try:
        assert "hex" in image_kinds()
        frame = pd.DataFrame({"image": pd.Series([b.hex() for b in photo_jpegs[:2]], dtype=pd.ArrowDtype(pa.string()))})
        out = ImageEmbedder(model_dir=model_dir, image_kind="hex").embed_partition(frame)
        reference = ImageEmbedder(model_dir=model_dir).embed_partition(
            pd.DataFrame({"image": pd.Series(photo_jpegs[:2], dtype=BINARY_DTYPE)})
        )
        np.testing.assert_allclose(
            embeddings_to_numpy(out["embedding"]), embeddings_to_numpy(reference["embedding"]), atol=1e-6
        )
        assert out["image"].tolist() == frame["image"].tolist()  # kept as it was
    finally:
        SOURCES.pop("hex")
