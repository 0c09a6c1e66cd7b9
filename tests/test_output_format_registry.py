"""Output formats as a registry: a new format is one module (its FORMAT), and the writer base
gives it resume, the manifest and atomic commits; the job and the CLI offer it."""

from __future__ import annotations

import json
import os
import textwrap

import dask
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dask_clip import ImageEmbedder
from dask_clip.embed.jobs import embed_parquet
from dask_clip.io import writers as registry
from dask_clip.io.writers.base import MANIFEST
from dask_clip.registry import ModuleRegistry

# One JSON line per row with an embedding: key and embedding. The last rename commits it.
JSONL_FORMAT = textwrap.dedent(
    """
    import json
    from dataclasses import dataclass, field

    from dask_clip.io.writers.base import OutputFormat, _listing, put


    @dataclass(frozen=True)
    class JsonLines:
        column: str = "embedding"
        name: str = field(default="jsonl", init=False)

        @property
        def options(self):
            return {"column": self.column}

        def foreign(self, fs, root, names, manifest):
            return [] if manifest is not None else [n for n in names if n.endswith(".jsonl")]

        def prepare(self, fs, root, npartitions, overwrite):
            for name in _listing(fs, root):
                if name.endswith(".tmp") or (overwrite and name.endswith(".jsonl")):
                    fs.rm(f"{root}/{name}")

        def committed(self, fs, root, npartitions):
            present = set(_listing(fs, root))
            return {i for i in range(npartitions) if f"{i:05d}.jsonl" in present}

        def write_partition(self, table, fs, root, index, npartitions):
            rows = [r for r in table.select(["key", self.column]).to_pylist() if r[self.column] is not None]
            text = "".join(json.dumps(r) + "\\n" for r in rows)
            put(fs, root, f"{index:05d}.jsonl", lambda f: f.write(text), mode="w")
            return {"lines": len(rows)}

        def finish(self, fs, root, npartitions):
            pass


    FORMAT = OutputFormat("jsonl", lambda embedder, options: JsonLines(embedder.output_column), "JSON lines")
    """
)


@pytest.fixture
def jsonl(tmp_path, monkeypatch):
    """The module, found by the registry in this process; the job runs on Dask's synchronous
    scheduler here (the session cluster's workers cannot import a module added at run time)."""
    import distributed

    def no_client():
        raise ValueError("no client")

    monkeypatch.setattr(distributed, "default_client", no_client)
    package = tmp_path / "extra"
    package.mkdir()
    (package / "jsonl.py").write_text(JSONL_FORMAT)
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(package)])
    monkeypatch.setattr(registry, "_FORMATS", ModuleRegistry(registry.__name__, "FORMAT", registry.OutputFormat))
    with dask.config.set(scheduler="sync"):
        yield


def test_the_shipped_formats_in_order_and_a_clear_error():
    assert registry.output_format_names() == ("parquet", "lance", "laion")
    with pytest.raises(ValueError, match="output_format='csv': use one of parquet, lance, laion"):
        registry.get_output_format("csv")


def test_a_new_output_format_is_one_module(jsonl, tmp_path, model_dir, photo_jpegs):
    source = tmp_path / "in"
    source.mkdir()
    keys = [f"k{i}" for i in range(5)]
    blobs = [*photo_jpegs[:4], b"not an image"]
    table = pa.table({"key": keys, "jpg": pa.array(blobs, pa.binary())})
    pq.write_table(table.slice(0, 3), source / "a.parquet")
    pq.write_table(table.slice(3), source / "b.parquet")
    embedder = ImageEmbedder(model_dir=model_dir, device="cpu")
    out = tmp_path / "out"

    summary = embed_parquet(source, out, embedder, output_format="jsonl")
    assert (summary.written, summary.rows, summary.counts["lines"], summary.counts["errors"]) == (2, 5, 4, 1)
    lines = [
        json.loads(line)
        for name in sorted(os.listdir(out))
        if name.endswith(".jsonl")
        for line in (out / name).read_text().splitlines()
    ]
    # the same embeddings as the Parquet output of the same job, in row order, failed row left out
    ref = embed_parquet(source, tmp_path / "ref", embedder)
    assert ref.rows == 5
    expected = pd.read_parquet(tmp_path / "ref", dtype_backend="pyarrow")
    expected = expected[expected["embedding"].notna()]
    assert [line["key"] for line in lines] == expected["key"].tolist()
    assert [line["embedding"] for line in lines] == [list(v) for v in expected["embedding"]]
    manifest = json.loads((out / MANIFEST).read_text())
    assert (manifest["format"], manifest["options"], manifest["npartitions"]) == ("jsonl", {"column": "embedding"}, 2)

    # resume from the base: a partition lost is the only one written again
    (out / "00001.jsonl").unlink()
    again = embed_parquet(source, out, embedder, output_format="jsonl")
    assert (again.written, again.skipped) == (1, 1)
    # and the base's rules hold: another format into this folder is refused
    with pytest.raises(ValueError, match="in format 'jsonl', not 'parquet'"):
        embed_parquet(source, out, embedder)

    from dask_clip.cli import build_parser

    embed = build_parser()._subparsers._group_actions[0].choices["embed"]
    action = next(a for a in embed._actions if "--output-format" in a.option_strings)
    assert "jsonl" in action.choices and "jsonl: JSON lines" in action.help
