"""The image and key columns recorded in the Parquet files `embed` writes, and picked up downstream
(index, filter, dedup) without options; explicit options still win."""

from __future__ import annotations

import json
from pathlib import Path

import dask
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dask_clip import ImageEmbedder
from dask_clip.embed.jobs import embed_parquet
from dask_clip.io.file_metadata import KEY, carried, read_file_metadata, with_file_metadata


def test_entries_merge_into_one_dict():
    first = with_file_metadata({b"pandas": b"{}"}, {"image_column": "jpg", "key_column": None})
    assert first[b"pandas"] == b"{}" and json.loads(first[KEY]) == {"image_column": "jpg"}
    second = with_file_metadata(first, {"weights": "sha256:..."})  # another step adds its own key
    assert json.loads(second[KEY]) == {"image_column": "jpg", "weights": "sha256:..."}
    assert carried({"image_column": "jpg", "key_column": "key", "weights": "w"}, ["key"]) == {
        "key_column": "key",
        "weights": "w",
    }


def test_nothing_recorded_reads_as_empty(tmp_path):
    pq.write_table(pa.table({"a": [1]}), tmp_path / "x.parquet")
    assert read_file_metadata(tmp_path) == {} == read_file_metadata(tmp_path / "x.parquet")
    assert read_file_metadata(tmp_path / "missing") == {} == read_file_metadata(pd.DataFrame())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "part-0.parquet").write_bytes(b"not parquet")
    assert read_file_metadata(tmp_path / "bad") == {}


@pytest.fixture(scope="module")
def folder_embeddings(tmp_path_factory, photo_jpegs, model_dir) -> tuple[Path, Path]:
    """A folder of 6 image files (the last a byte-exact copy of the first), embedded."""
    images = tmp_path_factory.mktemp("images")
    for i, data in enumerate([*photo_jpegs, photo_jpegs[0]]):
        (images / f"photo{i}.jpg").write_bytes(data)
    out = tmp_path_factory.mktemp("emb") / "emb"
    with dask.config.set(scheduler="threads"):
        embed_parquet(images, out, ImageEmbedder(model_dir=model_dir), partition_size=4)
    return images, out


def columns(record: dict) -> dict:
    """The image and key columns of a recorded ``dask_clip`` entry (it also names the model)."""
    return {k: v for k, v in record.items() if k in ("image_column", "key_column")}


def test_embed_of_a_folder_records_path_as_image_and_key(folder_embeddings):
    images, out = folder_embeddings
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 2
    for part in parts:  # every file says it, not only the first
        record = json.loads(pq.read_schema(part).metadata[KEY])
        assert columns(record) == {"image_column": "path", "key_column": "path"}
        assert record["embedding"]["weights"].startswith("sha256:")  # and the weights that made it
    assert columns(read_file_metadata(out)) == {"image_column": "path", "key_column": "path"}
    assert pd.read_parquet(out)["path"].tolist() == [str(p) for p in sorted(images.iterdir())]


def test_index_picks_them_up_and_explicit_options_win(folder_embeddings, tmp_path, photo_jpegs):
    from dask_clip.index import build, load

    images, out = folder_embeddings
    with dask.config.set(scheduler="threads"):
        summary = build(out, tmp_path / "auto")
        build(out, tmp_path / "given", image_column=None, key_column=None)
    assert (summary.image_column, summary.key_column) == ("path", "path")
    index = load(tmp_path / "auto")
    assert (index.image_column, index.key_column) == ("path", "path")
    first = index.ids_for_keys([str(images / "photo1.jpg")])[0]
    assert index.image(first) == photo_jpegs[1]
    given = load(tmp_path / "given")
    assert (given.image_column, given.key_column) == (None, None)


def test_img2dataset_input_records_key_and_bytes_stay_on_disk(captioned_frame, tmp_path, model_dir):
    from dask_clip.index import build, load

    source = tmp_path / "in"
    source.mkdir()
    captioned_frame.to_parquet(source / "00000.parquet")
    with dask.config.set(scheduler="threads"):
        embed_parquet(source, tmp_path / "emb", ImageEmbedder(model_dir=model_dir))
        embed_parquet(source, tmp_path / "lean", ImageEmbedder(model_dir=model_dir, remove_image_data=True))
        build(tmp_path / "emb", tmp_path / "auto")
        build(tmp_path / "emb", tmp_path / "none", image_column=None)
    assert columns(read_file_metadata(tmp_path / "emb")) == {"image_column": "image", "key_column": "key"}
    assert columns(read_file_metadata(tmp_path / "lean")) == {"key_column": "key"}  # no image column left to name
    auto = load(tmp_path / "auto")
    assert (auto.image_column, auto.key_column) == ("image", "key")
    assert "image" not in auto.table.column_names  # the bytes are not loaded into memory...
    for key in ("k0", "k2", "k4"):  # ...but read from disk, row by row
        assert auto.image(auto.ids_for_keys([key])[0]) == captioned_frame.set_index("key").loc[key, "image"]
    none = load(tmp_path / "none")
    assert none.image_column is None
    with pytest.raises(LookupError, match="keeps no image column"):
        none.image(none.ids[0])


def test_bytes_are_read_from_the_right_row_group(tmp_path, photo_jpegs):
    """Many partitions, several row groups each, rows without an embedding in between."""
    import dask.dataframe as dd
    import numpy as np

    from dask_clip.backends import as_binary
    from dask_clip.index import add, build, load

    n = 300
    rng = np.random.default_rng(0)
    images = [b"image %d " % i + photo_jpegs[i % len(photo_jpegs)] for i in range(n)]
    vectors = [None if i % 7 == 3 else rng.normal(size=8).astype(np.float32).tolist() for i in range(n)]
    frame = pd.DataFrame(
        {
            "key": [f"r{i}" for i in range(n)],
            "jpg": as_binary(pd.Series(images)),
            "embedding": pd.Series(vectors, dtype=pd.ArrowDtype(pa.list_(pa.float32()))),
        }
    )
    with dask.config.set(scheduler="threads"):
        build(dd.from_pandas(frame, npartitions=3), tmp_path / "idx", image_column="jpg")
    index = load(tmp_path / "idx")
    parts = sorted((tmp_path / "idx").glob("v-*/ids/part-*.parquet"))
    assert len(parts) == 3 and all(pq.ParquetFile(p).num_row_groups > 1 for p in parts)
    assert max(pq.ParquetFile(parts[0]).metadata.row_group(i).num_rows for i in range(2)) == add.IMAGE_ROW_GROUP
    for key in ("r0", "r1", "r64", "r65", "r99", "r100", "r170", "r299"):
        assert index.image(index.ids_for_keys([key])[0]) == images[int(key[1:])]


def test_filter_output_carries_the_record(tmp_path):
    from dask_clip.filter import filter_parquet
    from dask_clip.io.writer import write_parquet

    frame = pd.DataFrame(
        {"key": ["a", "b", "c"], "path": ["/x/a.jpg", "/x/b.jpg", "/x/c.jpg"], "clip_score": [0.1, 0.3, 0.5]}
    )
    import dask.dataframe as dd

    recorded = {"image_column": "path", "key_column": "key"}
    with dask.config.set(scheduler="threads"):
        write_parquet(dd.from_pandas(frame, npartitions=1), tmp_path / "in", file_metadata=recorded)
        filter_parquet(tmp_path / "in", tmp_path / "out", min_clip_score=0.2)
    assert pd.read_parquet(tmp_path / "out")["key"].tolist() == ["b", "c"]
    assert read_file_metadata(tmp_path / "out") == recorded


@pytest.mark.slow  # the whole dedup on a cluster: ~20 s on 2 cores
def test_dedup_command_names_rows_by_the_recorded_key(folder_embeddings, tmp_path, client):
    from dask_clip.cli import main

    images, out = folder_embeddings
    args = ["dedup", str(out), str(tmp_path / "dedup"), "--n-clusters", "2", "--scheduler-address"]
    assert main([*args, client.scheduler.address]) == 0
    result = pd.read_parquet(tmp_path / "dedup").set_index("path")
    pair = [str(images / "photo0.jpg"), str(images / "photo5.jpg")]  # byte-exact copies
    flagged = result[result["duplicate"]]
    assert len(flagged) == 1 and flagged.index[0] in pair
    assert flagged["duplicate_of"].iloc[0] == next(p for p in pair if p != flagged.index[0])
    assert columns(read_file_metadata(tmp_path / "dedup")) == {"image_column": "path", "key_column": "path"}
