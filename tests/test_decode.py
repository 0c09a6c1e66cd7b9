"""Decoding one row: Pillow bytes, path reads, pixel checks. Every failure is a reason, never a raise."""

from __future__ import annotations

import numpy as np

from dask_clip.image.decode import PILLOW, check_pixels, decode_bytes, read_paths
from dask_clip.testing import encode_image


def test_check_pixels_modes():
    gray = np.zeros((4, 5), np.uint8)
    rgba = np.zeros((4, 5, 4), np.uint8)
    assert check_pixels(gray)[0].shape == (4, 5, 3)
    assert check_pixels(rgba)[0].shape == (4, 5, 3)
    assert "uint8" in check_pixels(np.zeros((4, 5, 3), np.float32))[1]
    assert "shape" in check_pixels(np.zeros((4, 5, 2), np.uint8))[1]
    assert "too large" in check_pixels(np.zeros((100, 100, 3), np.uint8), max_pixels=50)[1]


def test_decode_bytes_accepts_memoryview_and_refuses_text():
    blob = encode_image(np.zeros((8, 8, 3), np.uint8), "PNG")
    assert decode_bytes(memoryview(blob))[0].shape == (8, 8, 3)
    assert decode_bytes("a string")[1] == "expected image bytes, got str"


def test_pillow_decoder_keeps_order_and_reasons():
    blob = encode_image(np.full((6, 7, 3), 9, np.uint8), "PNG")
    got = PILLOW.decode([blob, b"", None, b"junk", blob], max_pixels=None)
    assert [r[0].shape if r[0] is not None else r[1] for r in got] == [
        (6, 7, 3),
        "empty image bytes",
        "missing image (null)",
        "not a decodable image (unknown format)",
        (6, 7, 3),
    ]


def test_read_paths_keeps_order_and_reports_each_row(tmp_path):
    (tmp_path / "a").write_bytes(b"A")
    (tmp_path / "b").write_bytes(b"B")
    got = read_paths([str(tmp_path / "b"), None, f"file://{tmp_path}/a", str(tmp_path / "c"), "nope://x"])
    assert got[0] == (b"B", None) and got[2] == (b"A", None)
    assert "missing" in got[1][1] and got[3][1].startswith("file not found")
    assert got[4][1].startswith("protocol 'nope' not allowed")  # refused before fsspec looks
    unknown = read_paths(["nope://x"], allowed_protocols=("nope",))[0][1]
    assert unknown.startswith("cannot read nope://x") and "nope" in unknown
