"""Hostile tar shards (issue 21, items 2 and 5): real archives made by GNU tar and tarfile whose
headers claim far more than they hold, or that hold what a row cannot carry. Each one must cost
bounded memory (Python allocations traced while the partition is read), write no oversized bytes
into the frame, and end as a row error or a read note, never as an exception."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tarfile
import tracemalloc

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dask_clip import read_webdataset
from dask_clip.io.tar_stream import MAX_HEADER_BYTES, StreamDamage, TarEntry, iter_entries
from dask_clip.testing import encode_image, photo_crops

GIB = 1 << 30
LIMIT = 1 << 20  # max_member_bytes of these tests: 1 MiB
# What reading one of these shards may allocate: a few members of at most LIMIT, tarfile's
# buffers, the frame and the modules Dask imports on first use (~26 MiB traced). Before the fix,
# each case below allocated the member's claimed size (256 MiB to 1 GiB).
BUDGET = 64 * LIMIT


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return encode_image(photo_crops(1, seed=5, min_size=(64, 48), max_size=(96, 64))[0], "JPEG", quality=90)


def add(tar: tarfile.TarFile, name: str | bytes, data: bytes) -> None:
    info = tarfile.TarInfo(name if isinstance(name, str) else name.decode("utf-8", "surrogateescape"))
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


class Zeros(io.RawIOBase):
    """``size`` zero bytes, read in chunks (tarfile copies a member from it without holding it)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def read(path, **kwargs) -> tuple[pd.DataFrame, int]:
    """The shard's frame (one partition, computed here) and the peak of traced allocations."""
    tracemalloc.start()
    try:
        frame = read_webdataset(str(path), max_member_bytes=LIMIT, **kwargs).compute(scheduler="sync")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return frame, peak


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar to write a sparse archive")
@pytest.mark.parametrize("layout", ["gnu", "pax"])
def test_sparse_member_of_a_gib_is_skipped_unread(tmp_path, jpeg, layout):
    """A 10 KB archive whose sparse member expands to 1 GiB: before, read whole (1 GiB per copy,
    7.1 GB of worker memory in the issue, and the blob written to the output)."""
    work = tmp_path / "files"
    work.mkdir()
    with open(work / "000000.jpg", "wb") as f:
        f.truncate(GIB)
        f.seek(1000)
        f.write(b"x")
    (work / "000001.jpg").write_bytes(jpeg)
    shard = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", "--sparse", f"--format={layout}", "-cf", str(shard), "000000.jpg", "000001.jpg"],
        cwd=work,
        check=True,
    )
    assert shard.stat().st_size < 64 * 1024
    frame, peak = read(shard)
    assert peak < BUDGET, f"{peak / 2**20:.0f} MiB allocated"
    assert frame["key"].tolist() == ["000000", "000001"]
    assert pd.isna(frame["image"].iloc[0])  # never in the frame, so never written to the output
    assert frame["read_error"].iloc[0] == (
        f"member 000000.jpg too large: {GIB} bytes > max_image_bytes {LIMIT}; not read"
    )
    assert frame["image"].iloc[1] == jpeg and pd.isna(frame["read_error"].iloc[1])


def test_gzip_of_zeros_is_skipped_in_bounded_memory(tmp_path, jpeg):
    """A .tar.gz of 256 MiB of zeros (250 KB on disk) between two images; before, read whole."""
    shard = tmp_path / "zeros.tar.gz"
    with gzip.open(shard, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        add(tar, "a.jpg", jpeg)
        info = tarfile.TarInfo("b.jpg")
        info.size = 256 << 20
        tar.addfile(info, Zeros(info.size))
        add(tar, "c.jpg", jpeg)
    assert shard.stat().st_size < 2 << 20
    frame, peak = read(shard)
    assert peak < BUDGET, f"{peak / 2**20:.0f} MiB allocated"
    assert frame["key"].tolist() == ["a", "b", "c"]
    assert frame["image"].iloc[0] == jpeg and frame["image"].iloc[2] == jpeg
    assert pd.isna(frame["image"].iloc[1])
    assert "too large: 268435456 bytes > max_image_bytes 1048576" in frame["read_error"].iloc[1]


def test_header_data_beyond_the_budget_is_damage_not_memory(tmp_path, jpeg):
    """A PAX header and a GNU long name that claim 256 MiB (tarfile reads header data whole)."""
    for kind in ("pax", "longname"):
        buf = io.BytesIO()
        fmt = tarfile.PAX_FORMAT if kind == "pax" else tarfile.GNU_FORMAT
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            add(tar, "a.jpg", jpeg)
            name = "x" * (MAX_HEADER_BYTES + 1) + "/b.jpg"  # a real long name, just over the budget
            add(tar, name, jpeg)
        shard = tmp_path / f"{kind}.tar"
        shard.write_bytes(buf.getvalue())
        frame, peak = read(shard)
        assert peak < BUDGET
        assert frame["key"].iloc[0] == "a" and frame["image"].iloc[0] == jpeg
        assert pd.isna(frame["key"].iloc[1])
        assert f"longer than {MAX_HEADER_BYTES} bytes" in frame["read_error"].iloc[1]


def test_iter_entries_reads_at_most_the_limit(jpeg):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        add(tar, "a.jpg", jpeg)
        add(tar, "b.jpg", b"\xff" * 5000)
    buf.seek(0)
    items = list(iter_entries(buf, lambda key, field: True, max_bytes=len(jpeg)))
    assert [type(i) for i in items] == [TarEntry, TarEntry]
    assert items[0].data == jpeg and items[0].too_large is None
    assert items[1].data is None and items[1].too_large is not None and "5000 bytes" in items[1].too_large
    assert not any(isinstance(i, StreamDamage) for i in items)


def test_each_bad_row_is_a_row_error_not_a_failed_job(tmp_path, jpeg):
    """Item 5: a deeply nested json member (RecursionError), a member name that is not UTF-8
    (UnicodeEncodeError in pa.array), a lone surrogate in JSON text; before, each one raised
    out of the partition and failed the job on every rerun."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add(tar, "deep.jpg", jpeg)
        add(tar, "deep.json", b"[" * 200_000 + b"]" * 200_000)
        add(tar, b"caf\xe9.jpg", jpeg)
        add(tar, "ok.jpg", jpeg)
        add(tar, "ok.json", json.dumps({"url": "\ud800", "n": 3}).encode())
    shard = tmp_path / "rows.tar"
    shard.write_bytes(buf.getvalue())
    frame = read_webdataset(str(shard), json_fields={"n": "int64"}).compute(scheduler="sync")
    assert frame["key"].tolist() == ["deep", "caf\\xe9", "ok"]
    assert (frame["image"] == jpeg).all()
    assert frame["read_error"].iloc[0] == "json member is nested too deeply to parse"
    assert frame["read_error"].iloc[1] == "member name is not UTF-8 (the key shows its bytes as \\x escapes)"
    assert frame["url"].iloc[2] == "\\ud800" and frame["n"].iloc[2] == 3
    assert pd.isna(frame["read_error"].iloc[2])


def test_corrupt_first_sidecar_is_a_row_note(tmp_path, jpeg):
    """Item 5: before, a corrupt sidecar of the first shard was a client error naming no file
    (the same file as the second shard's sidecar was already a row note)."""
    folder = tmp_path / "shards"
    folder.mkdir()
    for n in range(2):
        with tarfile.open(folder / f"{n:05d}.tar", "w") as tar:
            add(tar, f"{n:05d}0000.jpg", jpeg)
    (folder / "00000.parquet").write_bytes(b"PAR1 not really parquet PAR1")
    pq.write_table(pa.table({"key": ["000010000"], "width": [7]}), folder / "00001.parquet")
    frame = read_webdataset(str(folder)).compute(scheduler="sync")
    assert frame["key"].tolist() == ["000000000", "000010000"]
    assert "sidecar 00000.parquet unreadable" in frame["read_error"].iloc[0]
    assert pd.isna(frame["read_error"].iloc[1]) and frame["width"].iloc[1] == 7


def test_a_header_claiming_a_tib_ends_at_the_data(tmp_path, jpeg):
    """Found by benchmarks/fuzz.py: a member size of 1 TiB (base-256) in a 10 KB archive made
    tarfile's stream skip call read() 10**8 times on the exhausted file (minutes of CPU; the
    fuzz's 60 s deadline called it a hang). Now the skip stops at the end of the data."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add(tar, "a.jpg", jpeg)
        add(tar, "b.jpg", jpeg)
    data = bytearray(buf.getvalue())
    second = 512 + -(-len(jpeg) // 512) * 512
    data[second + 124 : second + 136] = b"\x80" + (1 << 40).to_bytes(11, "big")
    block = bytearray(data[second : second + 512])
    block[148:156] = b" " * 8
    data[second + 148 : second + 156] = b"%06o\x00 " % sum(block)
    shard = tmp_path / "tib.tar"
    shard.write_bytes(bytes(data))
    frame, _ = read(shard)
    assert frame["image"].iloc[0] == jpeg
    assert frame["read_error"].iloc[1] == f"member b.jpg too large: {1 << 40} bytes > max_image_bytes {LIMIT}; not read"
    assert frame["read_error"].iloc[2].endswith("ReadError: unexpected end of data")


def test_a_malformed_pax_sparse_map_is_damage_not_an_exception(jpeg):
    """Found by benchmarks/fuzz.py (tar case 963): tarfile parses a GNU 1.0 sparse map by
    unpacking lines and raised ValueError out of iter_entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a.jpg")
        info.size = 512
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "4096"}
        tar.addfile(info, io.BytesIO(b"7" * 512))  # a map with no line break
    buf.seek(0)
    items = list(iter_entries(buf, lambda key, field: True, max_bytes=LIMIT))
    assert len(items) == 1 and isinstance(items[0], StreamDamage)
    assert "ValueError" in items[0].reason
