"""Input formats as a registry: the shipped ones in the order "auto" tries them, and a new format
added as one module, read by read_images, chosen by "auto" and offered by the CLI."""

from __future__ import annotations

import textwrap

import pytest

from dask_clip.io import readers as registry
from dask_clip.io.read import INPUT_FORMATS, input_format_names, read_images
from dask_clip.io.readers import get_input_format, input_formats
from dask_clip.registry import ModuleRegistry

LINES_FORMAT = textwrap.dedent(
    '''
    """Text files listing image paths, one a line (a toy format)."""
    from dask_clip.io.readers.base import PATH_COLUMN, InputFormat


    def claims(request, listing):
        return any(f.endswith(".lines") for f in listing.files)


    def read(request, listing):
        import dask.dataframe as dd
        import pandas as pd

        paths = [line.strip() for f in listing.files if f.endswith(".lines") for line in open(f) if line.strip()]
        frame = pd.DataFrame({PATH_COLUMN: pd.array(paths, dtype="string[pyarrow]")})
        return dd.from_pandas(frame, chunksize=request.partition_size, sort=False), PATH_COLUMN


    FORMAT = InputFormat(name="lines", priority=5, claims=claims, read=read, fingerprint=lambda r: {"lines": 1})
    '''
)


def test_shipped_formats_in_auto_order():
    assert [f.name for f in input_formats()] == ["webdataset", "parquet", "images"]
    assert input_format_names() == INPUT_FORMATS == ("auto", "webdataset", "parquet", "images")
    with pytest.raises(
        ValueError, match=r"input_format='lance'; expected 'auto' or one of \['images', 'parquet', 'webdataset'\]"
    ):
        get_input_format("lance")


def test_a_new_input_format_is_one_module(tmp_path, monkeypatch):
    package = tmp_path / "extra"
    package.mkdir()
    (package / "lines.py").write_text(LINES_FORMAT)
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(package)])
    monkeypatch.setattr(registry, "_FORMATS", ModuleRegistry(registry.__name__, "FORMAT", registry.InputFormat))
    folder = tmp_path / "input"
    folder.mkdir()
    (folder / "a.lines").write_text("/data/1.jpg\n/data/2.jpg\n\n/data/3.jpg\n")
    (folder / "b.jpg").write_bytes(b"not read")  # an image file too: "auto" asks "lines" first

    assert input_format_names() == ("auto", "webdataset", "lines", "parquet", "images")
    for chosen in ("auto", "lines"):
        ddf, column = read_images(folder, input_format=chosen, partition_size=2)
        assert column == "path" and ddf.npartitions == 2
        assert ddf.compute()["path"].tolist() == ["/data/1.jpg", "/data/2.jpg", "/data/3.jpg"]
    ddf, column = read_images(folder, input_format="images")  # the others still read their files
    assert ddf.compute()["path"].tolist() == [str(folder / "b.jpg")]
    assert registry.fingerprint(registry.ReadRequest(str(folder))) == {"lines": 1}

    from dask_clip.cli import build_parser

    action = next(
        a
        for a in build_parser()._subparsers._group_actions[0].choices["embed"]._actions
        if "--input-format" in a.option_strings
    )
    assert "lines" in action.choices
