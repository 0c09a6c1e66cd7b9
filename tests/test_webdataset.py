"""read_webdataset on real tar shards: written by WebDataset's own TarWriter and by plain tarfile in
img2dataset's layout, compared row by row with the same images read from files, with WebDataset's
own reader, on a real cluster, and through the embedder against Parquet input."""

from __future__ import annotations

import io
import json
import os
import tarfile

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import webdataset as wds

from dask_clip import ImageEmbedder, read_webdataset
from dask_clip.columns import embeddings_to_numpy
from dask_clip.io.tar_stream import StreamDamage, iter_entries, sample_key
from dask_clip.io.webdataset import is_webdataset_input, webdataset_partitions
from dask_clip.testing import encode_image, photo_crops

STRING = pd.ArrowDtype(pa.string())
BINARY = pd.ArrowDtype(pa.binary())
BASE_COLUMNS = ["key", "image", "caption", "url", "shard", "read_error"]


# -- shards on disk, and the same images as files ------------------------------------------------


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def write_files(folder, images: dict[str, tuple[str, bytes]]) -> dict[str, str]:
    """key -> path of the file holding that key's image (folders in keys become folders)."""
    paths = {}
    for key, (ext, data) in images.items():
        path = folder / f"{key}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths[key] = str(path)
    return paths


def file_bytes(paths: dict[str, str], key: str) -> bytes:
    with open(paths[key], "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def small_images() -> dict[str, tuple[str, bytes]]:
    """30 distinct photo crops, mostly JPEG, some PNG and WebP, keyed like img2dataset."""
    crops = photo_crops(30, seed=3, min_size=(64, 48), max_size=(160, 120))
    out = {}
    for i, crop in enumerate(crops):
        fmt, ext = [("JPEG", "jpg"), ("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")][i % 4]
        out[f"{i:09d}"] = (ext, encode_image(crop, fmt, **({"quality": 90} if fmt != "PNG" else {})))
    return out


@pytest.fixture(scope="module")
def tarwriter_shards(tmp_path_factory, small_images):
    """3 shards of 10 samples written by webdataset.TarWriter, and the images as files."""
    root = tmp_path_factory.mktemp("tarwriter")
    paths = write_files(root / "files", small_images)
    (root / "shards").mkdir()
    keys = sorted(small_images)
    for shard in range(3):
        with wds.TarWriter(str(root / "shards" / f"{shard:05d}.tar")) as sink:
            for key in keys[shard * 10 : (shard + 1) * 10]:
                ext, _ = small_images[key]
                sink.write(
                    {
                        "__key__": key,
                        ext: file_bytes(paths, key),  # the file's bytes, as a user's pipeline would
                        "txt": f"a photo, number {key}",
                        "json": {"url": f"https://example.com/{key}.{ext}", "width": 100 + int(key), "nsfw": 0.25},
                    }
                )
    return root, paths, keys


# -- the key rule ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "000123.jpg",
        "000123.JPG",
        "000123.seg.png",
        "dir.v2/000123.jpg",
        "a.b/c.d/e.f.g",
        "./000123.txt",
        "sub/dir/key.json",
        "key.",
        "café/001.jpg",
    ],
)
def test_key_rule_is_webdatasets(name):
    base, ext = wds.tariterators.base_plus_ext(name)
    assert sample_key(name) == (base, ext.lower())


@pytest.mark.parametrize("name", ["README", "dir/noext", "a/.hidden.jpg", ".jpg", "dir.v2/", "__meta__", "__a__/b.txt"])
def test_names_outside_any_sample(name):
    assert sample_key(name) is None


# -- shards written by WebDataset's TarWriter ----------------------------------------------------------


def test_tarwriter_shards_row_by_row_against_files_and_webdatasets_reader(tarwriter_shards, small_images):
    root, paths, keys = tarwriter_shards
    ddf = read_webdataset(str(root / "shards" / "*.tar"))
    assert ddf.npartitions == 3
    assert list(ddf.columns) == BASE_COLUMNS
    assert dict(ddf.dtypes) == {c: BINARY if c == "image" else STRING for c in BASE_COLUMNS}
    df = ddf.compute()
    assert dict(df.dtypes) == dict(ddf.dtypes)
    assert df["key"].tolist() == keys  # shard order, then tar order
    assert df["read_error"].isna().all()
    for row in df.itertuples():
        ext, _ = small_images[row.key]
        assert row.image == file_bytes(paths, row.key)
        assert row.caption == f"a photo, number {row.key}"
        assert row.url == f"https://example.com/{row.key}.{ext}"
        assert row.shard == str(root / "shards" / f"{int(row.key) // 10:05d}.tar")
    # WebDataset's own reader sees the same samples with the same bytes.
    urls = [str(root / "shards" / f"{i:05d}.tar") for i in range(3)]
    reference = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in reference] == df["key"].tolist()
    for sample, row in zip(reference, df.itertuples()):
        ext, _ = small_images[row.key]
        assert sample[ext] == row.image
        assert sample["txt"].decode() == row.caption


def test_glob_reads_every_tar_not_only_the_first(tarwriter_shards):
    """clip-retrieval #245: a glob over several tars read only one of them."""
    root, _, keys = tarwriter_shards
    by_glob = read_webdataset(str(root / "shards" / "*.tar")).compute()
    assert by_glob["shard"].nunique() == 3
    assert by_glob["key"].tolist() == keys
    same = [
        read_webdataset(str(root / "shards" / "{00000..00002}.tar")),
        read_webdataset(str(root / "shards")),
        read_webdataset([str(root / "shards" / f"{i:05d}.tar") for i in (2, 0, 1)]),  # sorted
        read_webdataset(str(root / "shards" / "0000{0,1,2}.tar")),
    ]
    for ddf in same:
        assert ddf.npartitions == 3
        pd.testing.assert_frame_equal(ddf.compute(), by_glob)


def test_distributed_cluster_reads_the_shards(client, tarwriter_shards):
    root, _, keys = tarwriter_shards
    ddf = read_webdataset(str(root / "shards" / "*.tar"), json_fields=True)
    on_cluster = client.compute(ddf).result()
    assert on_cluster["key"].tolist() == keys
    assert set(client.run(os.getpid).values()) != {os.getpid()}  # separate worker processes
    pd.testing.assert_frame_equal(on_cluster, ddf.compute(scheduler="sync"))


def test_column_projection_and_partition_access(tarwriter_shards):
    root, _, keys = tarwriter_shards
    ddf = read_webdataset(str(root / "shards" / "*.tar"))
    projected = ddf[["key", "caption"]].compute()
    assert list(projected.columns) == ["key", "caption"]
    assert projected["key"].tolist() == keys
    assert ddf.partitions[1].compute()["key"].tolist() == keys[10:20]


def test_fsspec_urls_and_brace_patterns(small_images):
    """Any fsspec filesystem: here the in-memory one, through a brace pattern."""
    import fsspec

    fs = fsspec.filesystem("memory")
    keys = sorted(small_images)[:6]
    for shard in range(2):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for key in keys[shard * 3 : shard * 3 + 3]:
                ext, data = small_images[key]
                add_member(tar, f"{key}.{ext}", data)
        fs.pipe(f"/wds-test/{shard:05d}.tar", buffer.getvalue())
    try:
        df = read_webdataset("memory://wds-test/{00000..00001}.tar").compute(scheduler="sync")
        assert df["key"].tolist() == keys
        shards = [fs.unstrip_protocol(f"/wds-test/{i:05d}.tar") for i in (0, 1)]  # memory:///wds-test/...
        assert df["shard"].tolist() == [shards[0]] * 3 + [shards[1]] * 3
        assert df["image"].tolist() == [small_images[k][1] for k in keys]
    finally:
        fs.rm("/wds-test", recursive=True)


# -- img2dataset's layout, with its sidecar Parquet ------------------------------------------------------


def write_img2dataset_shard(folder, shard: int, images: dict[str, tuple[str, bytes]], failed: list[str]) -> None:
    """What img2dataset writes per shard: NNNNN.tar (KEY.jpg, KEY.json, KEY.txt), NNNNN.parquet with a
    row per attempted URL (successes and failures), NNNNN_stats.json."""
    rows = []
    with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
        for key, (ext, data) in images.items():
            meta = {
                "url": f"https://img.example/{key}",
                "caption": f"caption {key}",
                "key": key,
                "status": "success",
                "error_message": None,
                "width": 64,
                "height": 48,
                "original_width": 640,
                "original_height": 480,
                "exif": "{}",
                "sha256": f"{int(key):064x}",
            }
            add_member(tar, f"{key}.{ext}", data)
            add_member(tar, f"{key}.json", json.dumps(meta).encode())
            add_member(tar, f"{key}.txt", meta["caption"].encode())
            rows.append(meta)
    for key in failed:
        rows.append(
            {
                "url": f"https://img.example/{key}",
                "caption": f"caption {key}",
                "key": key,
                "status": "failed_to_download",
            }
            | {"error_message": "HTTP 404", "width": None, "height": None, "original_width": None}
            | {"original_height": None, "exif": None, "sha256": None}
        )
    table = pd.DataFrame(rows).sample(frac=1, random_state=shard)  # sidecar order is not the tar's
    table["width"] = table["width"].astype("Int64")
    table["height"] = table["height"].astype("Int64")
    table.to_parquet(folder / f"{shard:05d}.parquet", index=False)
    (folder / f"{shard:05d}_stats.json").write_text(json.dumps({"successes": len(images), "failed": len(failed)}))


def test_img2dataset_layout_joins_the_sidecar_by_key(tmp_path, small_images):
    keys = sorted(small_images)[:12]
    write_img2dataset_shard(tmp_path, 0, {k: small_images[k] for k in keys[:6]}, failed=["000009990", "000009991"])
    write_img2dataset_shard(tmp_path, 1, {k: small_images[k] for k in keys[6:]}, failed=["000009992"])
    ddf = read_webdataset(str(tmp_path / "*.tar"))
    sidecar_columns = ["status", "error_message", "width", "height", "original_width", "original_height"]
    sidecar_columns += ["exif", "sha256"]
    assert list(ddf.columns) == [*BASE_COLUMNS, "sidecar_url", "sidecar_caption", *sidecar_columns]
    assert ddf["width"].dtype == pd.ArrowDtype(pa.int64())
    assert ddf["status"].dtype == STRING
    df = ddf.compute()
    assert dict(df.dtypes) == dict(ddf.dtypes)
    assert df["key"].tolist() == keys  # the tar's rows in the tar's order; failed downloads are not rows
    assert (df["status"] == "success").all()
    assert (df["width"] == 64).all() and (df["original_height"] == 480).all()
    assert df["sha256"].tolist() == [f"{int(k):064x}" for k in keys]
    assert df["sidecar_url"].tolist() == df["url"].tolist() == [f"https://img.example/{k}" for k in keys]
    assert df["sidecar_caption"].tolist() == df["caption"].tolist()
    assert df["image"].tolist() == [small_images[k][1] for k in keys]
    assert df["read_error"].isna().all()

    chosen = read_webdataset(str(tmp_path / "*.tar"), sidecar_columns=["status", "width"]).compute()
    assert list(chosen.columns) == [*BASE_COLUMNS, "status", "width"]
    assert list(read_webdataset(str(tmp_path / "*.tar"), sidecar=False).columns) == BASE_COLUMNS
    with pytest.raises(ValueError, match="nope"):
        read_webdataset(str(tmp_path / "*.tar"), sidecar_columns=["nope"])


def test_folder_of_img2dataset_output_is_webdataset_input(tmp_path, small_images):
    keys = sorted(small_images)[:3]
    write_img2dataset_shard(tmp_path, 0, {k: small_images[k] for k in keys}, failed=[])
    assert is_webdataset_input(str(tmp_path))  # tars next to sidecar Parquet files
    assert is_webdataset_input(str(tmp_path / "*.tar"))
    assert is_webdataset_input("s3://bucket/shards/{00000..00099}.tar")  # by name, without a request
    assert is_webdataset_input([str(tmp_path / "00000.tar")])
    assert not is_webdataset_input(str(tmp_path / "*.parquet"))
    assert not is_webdataset_input(str(tmp_path / "missing"))
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(small_images[keys[0]][1])
    assert not is_webdataset_input(str(images))


def test_sidecar_problems_are_reported_not_raised(tmp_path, small_images):
    keys = sorted(small_images)[:4]
    write_img2dataset_shard(tmp_path, 0, {k: small_images[k] for k in keys[:2]}, failed=[])
    write_img2dataset_shard(tmp_path, 1, {k: small_images[k] for k in keys[2:]}, failed=[])
    (tmp_path / "00001.parquet").write_bytes(b"PAR1 this is not parquet")
    df = read_webdataset(str(tmp_path / "*.tar")).compute()
    assert df["key"].tolist() == keys
    assert df["status"].tolist()[:2] == ["success", "success"]
    assert df["status"].isna().tolist()[2:] == [True, True]
    assert df["read_error"].isna().tolist()[:2] == [True, True]
    assert df["read_error"].str.contains("sidecar 00001.parquet unreadable").tolist()[2:] == [True, True]
    assert df["image"].notna().all()


# -- the odd cases ---------------------------------------------------------------------------------------


def test_odd_members_row_by_row(tmp_path, small_images):
    ordered = sorted(small_images)
    jpegs = [k for k in ordered if small_images[k][0] == "jpg"]
    pngs = [k for k in ordered if small_images[k][0] == "png"]
    files = {
        "v1.0/images.2024/000001": ("jpg", small_images[jpegs[0]][1]),  # dots in folder names
        "000002": ("jpg", small_images[jpegs[1]][1]),  # no caption
        "000003": ("jpg", small_images[jpegs[2]][1]),  # interleaved with 000004
        "000004": ("png", small_images[pngs[0]][1]),
        "000006": ("JPG", small_images[jpegs[3]][1]),  # upper-case extension
        "000007": ("jpg", small_images[jpegs[4]][1]),  # also has a png: the jpg wins
        "000008": ("jpg", small_images[jpegs[5]][1]),  # duplicate member
        "000009": ("jpg", small_images[jpegs[6]][1]),  # the truncated last member
    }
    paths = write_files(tmp_path / "files", files)
    png_too = small_images[pngs[1]][1]
    members = [
        ("v1.0/images.2024/000001.jpg", file_bytes(paths, "v1.0/images.2024/000001")),
        ("v1.0/images.2024/000001.txt", b"dots in folders"),
        ("000002.jpg", file_bytes(paths, "000002")),
        ("000002.json", json.dumps({"url": "https://x/2"}).encode()),
        ("000003.jpg", file_bytes(paths, "000003")),
        ("000004.png", file_bytes(paths, "000004")),
        ("000003.txt", b"three"),
        ("000004.txt", b"four"),
        ("__meta__", b"not a sample"),
        ("README", b"no extension: not a sample"),
        ("000005.cls", b"7"),  # a sample without an image
        ("000005.txt", b"five"),
        ("000006.JPG", file_bytes(paths, "000006")),
        ("000006.npy", b"\x93NUMPY not needed"),  # a non-image member next to the image
        ("000007.png", png_too),
        ("000007.jpg", file_bytes(paths, "000007")),
        ("000008.jpg", file_bytes(paths, "000008")),
        ("000008.jpg", b"a second 000008.jpg"),
        ("000009.txt", b"nine"),
        ("000009.jpg", file_bytes(paths, "000009")),
    ]
    with tarfile.open(tmp_path / "odd.tar", "w") as tar:
        for name, data in members:
            add_member(tar, name, data)
        folder = tarfile.TarInfo("v1.0/")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    data = (tmp_path / "odd.tar").read_bytes()
    last_data_at = data.rindex(file_bytes(paths, "000009")[:64])
    (tmp_path / "odd.tar").write_bytes(data[: last_data_at + 300])  # cut inside the last jpg

    df = read_webdataset(str(tmp_path / "odd.tar")).compute()
    expected_keys = ["v1.0/images.2024/000001", "000002", "000003", "000004", "000005"]
    expected_keys += ["000006", "000007", "000008", "000009"]
    assert df["key"].tolist() == expected_keys  # first-member order; nothing shifted
    rows = df.set_index("key")
    for key in ["v1.0/images.2024/000001", "000002", "000003", "000004", "000006", "000007", "000008"]:
        assert rows.loc[key, "image"] == file_bytes(paths, key), key
    assert rows.loc["v1.0/images.2024/000001", "caption"] == "dots in folders"
    assert pd.isna(rows.loc["000002", "caption"]) and rows.loc["000002", "url"] == "https://x/2"
    assert rows.loc["000003", "caption"] == "three" and rows.loc["000004", "caption"] == "four"
    assert (
        rows.loc[["v1.0/images.2024/000001", "000002", "000003", "000004", "000006", "000007"], "read_error"]
        .isna()
        .all()
    )
    assert pd.isna(rows.loc["000005", "image"]) and rows.loc["000005", "caption"] == "five"
    assert rows.loc["000005", "read_error"].startswith("no image member (jpg/jpeg/png/webp); members: cls, txt")
    assert "duplicate member 000008.jpg ignored" in rows.loc["000008", "read_error"]
    assert pd.isna(rows.loc["000009", "image"]) and rows.loc["000009", "caption"] == "nine"
    assert "member 000009.jpg truncated" in rows.loc["000009", "read_error"]

    # What WebDataset's own reader makes of the consecutive part: the same keys and bytes.
    consecutive = [k for k in expected_keys if k not in ("000003", "000004", "000008", "000009")]
    reference = [
        s
        for s in wds.WebDataset(
            str(tmp_path / "odd.tar"), shardshuffle=False, empty_check=False, handler=wds.ignore_and_continue
        )
        if s["__key__"] in consecutive
    ]
    assert [s["__key__"] for s in reference] == consecutive
    for sample in reference:
        image = next((sample[e] for e in ("jpg", "jpeg", "png", "webp") if e in sample), None)
        assert image == (
            None if pd.isna(rows.loc[sample["__key__"], "image"]) else rows.loc[sample["__key__"], "image"]
        )


def test_damaged_and_empty_shards_never_fail_the_job(tmp_path, small_images):
    keys = sorted(small_images)[:8]

    def tar_bytes(ks):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for key in ks:
                ext, data = small_images[key]
                add_member(tar, f"{key}.{ext}", data)
                add_member(tar, f"{key}.txt", key.encode())
        return buffer.getvalue()

    good = tar_bytes(keys[:2])
    (tmp_path / "a-good.tar").write_bytes(good)
    whole = tar_bytes(keys[2:5])
    third_header = whole.index(f"{keys[4]}.".encode())  # the header of the third sample's image
    corrupt = whole[:third_header] + b"\xff" * 512 + whole[third_header + 512 :]
    (tmp_path / "b-corrupt.tar").write_bytes(corrupt)
    truncated = tar_bytes(keys[5:8])
    (tmp_path / "c-truncated.tar").write_bytes(truncated[: truncated.index(f"{keys[7]}.txt".encode()) + 512 + 4])
    (tmp_path / "d-not-a-tar.tar").write_bytes(b"<html>403 Forbidden</html>" * 30)
    (tmp_path / "d2-cut-in-a-header.tar").write_bytes(good[: good.index(f"{keys[1]}.".encode()) + 100])
    (tmp_path / "e-empty-file.tar").write_bytes(b"")
    with tarfile.open(tmp_path / "f-empty-archive.tar", "w"):
        pass

    ddf = read_webdataset(str(tmp_path / "*.tar"))
    parts = [ddf.partitions[i].compute() for i in range(ddf.npartitions)]
    for part in parts:
        assert dict(part.dtypes) == dict(ddf.dtypes)
    good_df, corrupt_df, truncated_df, not_tar_df, cut_header_df, empty_file_df, empty_archive_df = parts
    assert good_df["key"].tolist() == keys[:2] and good_df["read_error"].isna().all()
    # Corrupt header: the samples before it are whole; one row with no key says what was lost.
    assert corrupt_df["key"].tolist()[:2] == keys[2:4]
    assert corrupt_df["image"].tolist()[:2] == [small_images[k][1] for k in keys[2:4]]
    assert corrupt_df["read_error"].isna().tolist()[:2] == [True, True]
    assert len(corrupt_df) == 3 and pd.isna(corrupt_df["key"].iloc[2]) and pd.isna(corrupt_df["image"].iloc[2])
    assert corrupt_df["read_error"].iloc[2].startswith(f"tar corrupt at byte {third_header}")
    # Truncated inside the last caption: every image is kept, the cut member is named.
    assert truncated_df["key"].tolist() == keys[5:8]
    assert truncated_df["image"].tolist() == [small_images[k][1] for k in keys[5:8]]
    assert truncated_df["read_error"].isna().tolist() == [True, True, False]
    assert f"member {keys[7]}.txt truncated" in truncated_df["read_error"].iloc[2]
    assert pd.isna(truncated_df["caption"].iloc[2])
    # Not a tar at all: one row with the reason.
    assert len(not_tar_df) == 1 and pd.isna(not_tar_df["key"].iloc[0])
    assert not_tar_df["read_error"].iloc[0].startswith("not a readable tar archive")
    # Cut inside a header: the first sample whole, then a row saying where the tar ends.
    assert cut_header_df["key"].tolist()[:1] == keys[:1] and len(cut_header_df) == 2
    assert cut_header_df["read_error"].iloc[1].startswith("tar truncated at byte")
    assert len(empty_file_df) == 0 and len(empty_archive_df) == 0
    # And the whole frame computes, on the threaded scheduler too.
    assert len(ddf.compute(scheduler="threads")) == 2 + 3 + 3 + 1 + 2


def test_compressed_shards_read_like_plain_ones(tmp_path, small_images):
    keys = sorted(small_images)[:5]
    for mode, name in (("w", "plain.tar"), ("w:gz", "packed.tar.gz")):
        with tarfile.open(tmp_path / name, mode) as tar:
            for key in keys:
                ext, data = small_images[key]
                add_member(tar, f"{key}.{ext}", data)
    plain = read_webdataset(str(tmp_path / "plain.tar")).compute()
    packed = read_webdataset(str(tmp_path / "packed.tar.gz"), split_shards="64KiB").compute()
    pd.testing.assert_frame_equal(plain.drop(columns="shard"), packed.drop(columns="shard"))
    assert webdataset_partitions(str(tmp_path / "packed.tar.gz"), split_shards="64KiB")[0].splits == 1


def test_json_fields(tarwriter_shards):
    root, _, keys = tarwriter_shards
    pattern = str(root / "shards" / "*.tar")
    every = read_webdataset(pattern, json_fields=True)
    assert list(every.columns) == [*BASE_COLUMNS, "json_url", "width", "nsfw"]  # "url" is taken
    assert every["width"].dtype == pd.ArrowDtype(pa.int64())
    assert every["nsfw"].dtype == pd.ArrowDtype(pa.float64())
    df = every.compute()
    assert df["width"].tolist() == [100 + int(k) for k in keys]
    assert df["json_url"].tolist() == df["url"].tolist()
    named = read_webdataset(pattern, json_fields=["nsfw", "absent"]).compute()
    assert list(named.columns) == [*BASE_COLUMNS, "nsfw", "absent"]
    assert named["absent"].isna().all() and named["absent"].dtype == STRING
    typed = read_webdataset(pattern, json_fields={"width": "string", "nsfw": "int64"}).compute()
    assert typed["width"].tolist() == [str(100 + int(k)) for k in keys]
    assert typed["nsfw"].isna().all()  # 0.25 is no int64: null, and said so
    assert typed["read_error"].str.contains("json field 'nsfw' is not int64: 0.25").all()


# -- splitting shards into byte ranges ---------------------------------------------------------------


@pytest.fixture(scope="module")
def big_shard(tmp_path_factory):
    """One ~1.3 MB shard: 48 web-ish JPEGs of varied size, captions, and PAX long/unicode names."""
    root = tmp_path_factory.mktemp("big")
    crops = photo_crops(48, seed=11, min_size=(120, 90), max_size=(420, 320))
    with tarfile.open(root / "00000.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        for i, crop in enumerate(crops):
            folder = ("très-long-dossier-" * 8 + "/") if i % 7 == 3 else ""
            key = f"{folder}{i:06d}"
            add_member(tar, f"{key}.jpg", encode_image(crop, quality=85 + i % 10))
            add_member(tar, f"{key}.txt", f"caption {i}".encode())
            if i % 5 == 0:
                add_member(tar, f"{key}.json", json.dumps({"url": f"https://x/{i}"}).encode())
    return root / "00000.tar"


@pytest.mark.parametrize("split", ["64KiB", 100_000, "333KiB", "1MiB", "10MiB"])
def test_split_shards_give_the_rows_of_the_whole_shard(big_shard, split):
    whole = read_webdataset(str(big_shard)).compute()
    assert len(whole) == 48 and whole["read_error"].isna().all()
    ddf = read_webdataset(str(big_shard), split_shards=split)
    size = big_shard.stat().st_size
    expected = max(1, -(-size // dask.utils.parse_bytes(split)))
    assert ddf.npartitions == expected
    parts = [ddf.partitions[i].compute() for i in range(ddf.npartitions)]
    joined = pd.concat(parts, ignore_index=True)
    pd.testing.assert_frame_equal(joined, whole.reset_index(drop=True))
    if expected > 4:
        assert sum(len(p) > 0 for p in parts) > expected // 2  # the work is really spread


def random_tar(seed: int, tar_format: int) -> bytes:
    """Samples of 1-4 members with varied sizes, folders with dots, long (GNU/PAX) and unicode
    (PAX) names, a few interleaved keys, keyless members and folder entries."""
    rnd = np.random.default_rng(seed)
    folders = ["", "d.v1/", "x/y.z/"]
    if tar_format != tarfile.USTAR_FORMAT:
        folders.append("long" * 40 + "/")
    if tar_format == tarfile.PAX_FORMAT:
        folders.append("ünïcode/")
    names = []
    for i in range(int(rnd.integers(1, 25))):
        key = f"{folders[int(rnd.integers(len(folders)))]}{i:04d}"
        fields = rnd.permutation(["jpg", "txt", "json", "seg.png", "cls"])[: int(rnd.integers(1, 5))]
        names += [f"{key}.{f}" for f in fields]
    if rnd.random() < 0.3:
        for _ in range(3):
            a, b = rnd.integers(len(names), size=2)
            names[a], names[b] = names[b], names[a]
    if rnd.random() < 0.3:
        names.insert(int(rnd.integers(len(names) + 1)), "README")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        for name in names:
            add_member(tar, name, rnd.bytes(int(rnd.choice([0, 10, 511, 512, 513, 3000, 20000]))))
            if rnd.random() < 0.05:
                folder = tarfile.TarInfo(f"folder{len(name)}/")
                folder.type = tarfile.DIRTYPE
                tar.addfile(folder)
    return buffer.getvalue()


def without_magic(data: bytes, every: int) -> bytes:
    """Every ``every``-th header rewritten as a pre-POSIX (v7) header: no ``ustar`` magic."""
    out = bytearray(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for i, info in enumerate(tar.getmembers()):
            if i % every == 0:
                block = info.offset_data - 512
                out[block + 257 : block + 265] = bytes(8)  # magic and version
                out[block + 148 : block + 156] = b" " * 8
                out[block + 148 : block + 156] = b"%06o\0 " % tarfile.calc_chksums(bytes(out[block : block + 512]))[0]
    return bytes(out)


@pytest.mark.parametrize(
    "seeds",
    [range(6), pytest.param(range(6, 40), marks=pytest.mark.slow, id="34-more-layouts")],
    ids=lambda seeds: f"{len(seeds)}-layouts",
)
@pytest.mark.parametrize("tar_format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, "v7"])
def test_byte_ranges_own_every_member_exactly_once(tar_format, seeds):
    """The split rule on random layouts, with ranges down to one tar block: the members of all
    ranges, in order, are the members of the whole archive, each once. ("v7": some headers
    without the ustar magic, which are never split points.) 6 layouts per format in the default
    tier, 40 in the full one."""
    for seed in seeds:
        data = random_tar(seed, tarfile.USTAR_FORMAT if tar_format == "v7" else tar_format)
        whole = [(e.name, e.offset, e.data) for e in iter_entries(io.BytesIO(data), lambda k, f: True)]
        if tar_format == "v7":
            data = without_magic(data, every=1 + seed % 3)
            assert [(e.name, e.offset, e.data) for e in iter_entries(io.BytesIO(data), lambda k, f: True)] == whole
        for step in (512, 1000, 3000, 20_000):
            ranges = []
            for start in range(0, len(data), step):
                end = start + step if start + step < len(data) else None
                entries = iter_entries(io.BytesIO(data), lambda k, f: True, start=start, end=end)
                ranges += [(e.name, e.offset, e.data) for e in entries]
            assert ranges == whole, (seed, step)


class CountingFile(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        out = super().read(size)
        self.bytes_read += len(out)
        return out


def test_split_ranges_read_the_shard_about_once(big_shard):
    data = big_shard.read_bytes()
    whole = [e for e in iter_entries(io.BytesIO(data), lambda k, f: True) if not isinstance(e, StreamDamage)]
    step = 64 * 1024
    ranges = list(range(0, len(data), step))
    total, entries = 0, []
    for start in ranges:
        f = CountingFile(data)
        end = start + step if start + step < len(data) else None
        entries += list(iter_entries(f, lambda k, f: True, start=start, end=end))
        total += f.bytes_read
    assert [(e.name, e.data) for e in entries] == [(e.name, e.data) for e in whole]
    # Each range reads its bytes, the sample straddling its end (read again by the next range,
    # whose scan for a header crosses it), and tarfile's read-ahead of at most 10 KiB.
    largest = max(len(e.data) for e in whole)
    assert total <= len(data) + len(ranges) * (2 * largest + 2 * tarfile.RECORDSIZE)
    assert total < 1.5 * len(data)


def test_split_shards_is_a_byte_size():
    with pytest.raises(ValueError, match="not a member count"):
        read_webdataset("s3://bucket/{00000..00009}.tar", split_shards=1000)
    with pytest.raises(TypeError, match="byte size"):
        read_webdataset("s3://bucket/{00000..00009}.tar", split_shards=1.5)


def test_partition_plan_maps_partitions_to_shards(tarwriter_shards, big_shard):
    root, _, _ = tarwriter_shards
    plan = webdataset_partitions(str(root / "shards" / "*.tar"))
    assert [(p.partition, p.shard_index, p.label) for p in plan] == [
        (0, 0, "00000.tar"),
        (1, 1, "00001.tar"),
        (2, 2, "00002.tar"),
    ]
    split = webdataset_partitions([str(big_shard), str(root / "shards" / "00000.tar")], split_shards="256KiB")
    shards = sorted([str(big_shard), str(root / "shards" / "00000.tar")])
    assert [p.shard for p in split] == [shards[0]] * split[0].splits + [shards[1]] * split[-1].splits
    assert [p.partition for p in split] == list(range(len(split)))
    big = [p for p in split if p.shard == str(big_shard)]
    assert [(p.start, p.end) for p in big] == [
        (i * 256 * 1024, (i + 1) * 256 * 1024 if i < len(big) - 1 else None) for i in range(len(big))
    ]
    assert big[1].label == f"00000.tar[1/{len(big)}]"


# -- errors on the client, before any task ---------------------------------------------------------


def test_clear_errors_before_any_task(tmp_path, tarwriter_shards):
    root, _, _ = tarwriter_shards
    with pytest.raises(FileNotFoundError, match=r"2 shard\(s\) not found"):
        read_webdataset(str(root / "shards" / "{00002..00004}.tar"))
    with pytest.raises(FileNotFoundError, match="matches no tar file"):
        read_webdataset(str(tmp_path / "*.tar"))
    with pytest.raises(FileNotFoundError, match="holds no tar file"):
        read_webdataset(str(tmp_path))
    with pytest.raises(TypeError, match="image_extensions"):
        read_webdataset(str(root / "shards"), image_extensions="jpg")
    with pytest.raises(ValueError, match="clashes"):
        read_webdataset(str(root / "shards"), image_column="caption")
    with pytest.raises(TypeError, match="json_fields"):
        read_webdataset(str(root / "shards"), json_fields="width")
    with pytest.raises(ValueError, match="no Arrow type"):
        read_webdataset(str(root / "shards"), json_fields={"width": "integer please"})


def test_image_extensions_and_column_are_configurable(tarwriter_shards, small_images):
    root, _, keys = tarwriter_shards
    df = read_webdataset(str(root / "shards"), image_extensions=("png",), image_column="png").compute()
    assert "png" in df.columns and "image" not in df.columns
    is_png = [small_images[k][0] == "png" for k in keys]
    assert df["png"].notna().tolist() == is_png
    assert df["read_error"].isna().tolist() == is_png


# -- end to end: tar input embeds exactly like Parquet input -----------------------------------------------


def test_embedding_tar_input_equals_embedding_parquet_input(tmp_path, client, model_dir, tarwriter_shards):
    root, paths, keys = tarwriter_shards
    from_files = pd.DataFrame(
        {"key": pd.array(keys, dtype=STRING), "image": pd.array([file_bytes(paths, k) for k in keys], dtype=BINARY)}
    )
    dd.from_pandas(from_files, npartitions=3, sort=False).to_parquet(tmp_path / "images.parquet")
    embedder = ImageEmbedder(model_dir=model_dir, image_column="image")
    from_tar = client.compute(embedder(read_webdataset(str(root / "shards" / "*.tar")))).result()
    from_parquet = client.compute(
        embedder(dd.read_parquet(tmp_path / "images.parquet", dtype_backend="pyarrow"))
    ).result()
    assert from_tar["key"].tolist() == from_parquet["key"].tolist() == keys
    assert from_tar["embedding_error"].isna().all() and from_parquet["embedding_error"].isna().all()
    assert from_tar["image"].tolist() == from_parquet["image"].tolist()
    np.testing.assert_array_equal(
        embeddings_to_numpy(from_tar["embedding"]), embeddings_to_numpy(from_parquet["embedding"])
    )
