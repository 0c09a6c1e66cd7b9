"""What a path column can make a worker do: bounded reads of local files and URLs.

Hostile paths (a FIFO, /dev/zero, /dev/urandom, a 10 GB sparse file, a directory, a socket, a
symlink to a device) go through the real embedder in a child process, with a deadline and its
peak memory measured, so a hang or a runaway read fails the test instead of killing pytest.
URLs go to a real local HTTP server that stalls, streams forever or ignores byte ranges.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dask_clip import ImageEmbedder
from dask_clip.columns import BINARY_DTYPE, embeddings_to_numpy
from dask_clip.image.decode import read_paths
from dask_clip.io.fetch import DEFAULT_PROTOCOLS, check_protocols, url_protocols

STRING = pd.ArrowDtype(pa.string())


def paths_frame(paths: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"path": pd.array(paths, dtype=STRING)})


@pytest.fixture
def hostile(tmp_path, photo_jpegs) -> dict[str, str]:
    """Local paths that are not image files, and one real photo."""
    paths = {"photo": tmp_path / "photo.jpg", "fifo": tmp_path / "fifo.jpg", "sparse": tmp_path / "sparse.jpg"}
    paths["photo"].write_bytes(photo_jpegs[0])
    os.mkfifo(paths["fifo"])
    with open(paths["sparse"], "wb") as f:
        f.truncate(10 * 2**30)  # 10 GB, no block written
    (tmp_path / "folder.jpg").mkdir()
    link = tmp_path / "zero.jpg"
    link.symlink_to("/dev/zero")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "socket.jpg"))
    return {
        **{name: str(p) for name, p in paths.items()},
        "dev_zero": "/dev/zero",
        "dev_urandom": "/dev/urandom",
        "folder": str(tmp_path / "folder.jpg"),
        "symlink_to_zero": str(link),
        "socket": str(tmp_path / "socket.jpg"),
        "proc": "/proc/self/status",  # a regular file that says size 0
        "metadata_ftp": "ftp://169.254.169.254/x.jpg",
    }


@pytest.mark.slow  # a child process: its peak RSS is what is measured
def test_hostile_local_paths_are_row_errors_without_hanging_or_reading_them(hostile, model_dir):
    names = list(hostile)
    script = textwrap.dedent(
        f"""
        import json, resource, sys, time
        import pandas as pd, pyarrow as pa
        from dask_clip import ImageEmbedder
        frame = pd.DataFrame({{"path": pd.array({[hostile[n] for n in names]!r}, dtype=pd.ArrowDtype(pa.string()))}})
        embedder = ImageEmbedder(model_dir={model_dir!r}, image_column="path")
        embedder.embed_partition(frame.iloc[:1])  # model loaded: what follows is the reads
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        out = embedder.embed_partition(frame)
        print(json.dumps({{
            "errors": out["embedding_error"].astype(object).where(out["embedding_error"].notna(), None).tolist(),
            "seconds": time.perf_counter() - started,
            "rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
        }}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    errors = dict(zip(names, got["errors"]))
    assert errors["photo"] is None
    assert errors["fifo"] == f"not a regular file (a FIFO): {hostile['fifo']}"
    assert errors["dev_zero"] == errors["symlink_to_zero"].replace(hostile["symlink_to_zero"], "/dev/zero")
    assert errors["dev_zero"] == "not a regular file (a character device): /dev/zero"
    assert errors["dev_urandom"] == "not a regular file (a character device): /dev/urandom"
    assert errors["folder"].startswith("not a regular file (a directory)")
    assert errors["socket"].startswith("not a regular file (a socket)")
    assert errors["sparse"] == (
        f"image file too large: {hostile['sparse']} has 10737418240 bytes > max_image_bytes {64 * 2**20}"
    )
    assert errors["proc"] == "not a decodable image (unknown format)"  # read (small), then refused
    assert errors["metadata_ftp"].startswith("protocol 'ftp' not allowed")
    assert got["seconds"] < 10, got  # nothing waited on
    assert got["rss_growth_mib"] < 200, got  # nothing read whole (each of /dev/zero, sparse: GiBs)


def test_the_byte_cap_applies_while_reading(tmp_path, photo_jpegs):
    blob = photo_jpegs[1]
    (tmp_path / "a.jpg").write_bytes(blob)
    assert read_paths([str(tmp_path / "a.jpg")], max_bytes=len(blob)) == [(blob, None)]
    reason = read_paths([str(tmp_path / "a.jpg")], max_bytes=len(blob) - 1)[0][1]
    assert (
        reason == f"image file too large: {tmp_path / 'a.jpg'} has {len(blob)} bytes > max_image_bytes {len(blob) - 1}"
    )
    assert read_paths([str(tmp_path / "a.jpg")], max_bytes=None) == [(blob, None)]
    # /proc files say size 0: the cap is applied to what is read, cut off at cap + 1 bytes
    assert read_paths(["/proc/self/maps"], max_bytes=64)[0][1].endswith("has 65 bytes > max_image_bytes 64")


def test_encoded_bytes_rows_get_the_same_cap(model_dir, photo_jpegs):
    small, large = sorted(photo_jpegs, key=len)[:2]
    assert len(small) < len(large)
    frame = pd.DataFrame({"image": pd.Series([small, large], dtype=BINARY_DTYPE)})
    out = ImageEmbedder(model_dir=model_dir, max_image_bytes=len(small)).embed_partition(frame)
    assert out["embedding_error"].isna().tolist() == [True, False]
    assert (
        out["embedding_error"].iloc[1] == f"encoded image too large: {len(large)} bytes > max_image_bytes {len(small)}"
    )


def test_protocols_of_paths_and_chains():
    assert url_protocols("/data/a.jpg") == ["file"]
    assert url_protocols("file:///data/a.jpg") == ["file"]
    assert url_protocols("S3://bucket/a.jpg") == ["s3"]
    assert url_protocols("simplecache::https://host/a.jpg") == ["simplecache", "https"]
    assert "http" not in DEFAULT_PROTOCOLS and "https" not in DEFAULT_PROTOCOLS and "ftp" not in DEFAULT_PROTOCOLS
    with pytest.raises(TypeError):
        check_protocols("https")  # a string is not a list of protocols
    with pytest.raises(ValueError, match="bare protocol names"):
        check_protocols(["https://"])
    with pytest.raises(ValueError, match="bare protocol names"):
        ImageEmbedder(allowed_protocols=["s3://x"]).validate()
    with pytest.raises(ValueError, match="read_timeout must be a positive number"):
        ImageEmbedder(read_timeout=0).validate()
    with pytest.raises(ValueError, match="max_image_bytes must be a positive int"):
        ImageEmbedder(max_image_bytes=0).validate()


def test_a_chained_url_needs_every_protocol_allowed(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"A")
    url = f"simplecache::file://{tmp_path}/a.jpg"
    assert read_paths([url])[0][1].startswith("protocol 'simplecache' not allowed")
    assert read_paths([url], allowed_protocols=(*DEFAULT_PROTOCOLS, "simplecache")) == [(b"A", None)]


# -- a real HTTP server ------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    image = b""
    requests: list[str] = []  # noqa: RUF012 - shared with the test on purpose

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path == "/ok.jpg":
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.image)))
            self.end_headers()
            self.wfile.write(self.image)
        elif self.path == "/endless.jpg":  # ignores Range, never ends
            self.send_response(200)
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(100_000):
                    self.wfile.write(b"\0" * 65536)
        elif self.path == "/stall.jpg":
            time.sleep(8)
            self.send_response(200)
            self.end_headers()
        else:
            self.send_error(404)


@pytest.fixture
def http_server(photo_jpegs):
    _Handler.image = photo_jpegs[2]
    _Handler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Handler.requests
    server.shutdown()
    server.server_close()


def test_http_is_opt_in_and_bounded_in_bytes_and_time(http_server, model_dir, photo_jpegs):
    pytest.importorskip("aiohttp")  # the http extra
    base, requests = http_server
    names = ["ok", "endless", "stall", "missing"]
    frame = paths_frame([f"{base}/{n}.jpg" for n in names])

    refused = ImageEmbedder(model_dir=model_dir, image_column="path").embed_partition(frame)
    assert all(e.startswith("protocol 'http' not allowed") for e in refused["embedding_error"])
    assert requests == []  # not a single connection

    embedder = ImageEmbedder(
        model_dir=model_dir,
        image_column="path",
        allowed_protocols=(*DEFAULT_PROTOCOLS, "http"),
        max_image_bytes=2**20,
        read_timeout=2,
    )
    started = time.perf_counter()
    out = embedder.embed_partition(frame)
    seconds = time.perf_counter() - started
    errors = dict(zip(names, out["embedding_error"].astype(object).where(out["embedding_error"].notna(), None)))
    assert errors["ok"] is None
    assert errors["endless"] == f"image file too large: {base}/endless.jpg has more than max_image_bytes {2**20}"
    assert errors["stall"] == f"read timed out after 2 s (read_timeout): {base}/stall.jpg"
    assert errors["missing"] == f"file not found: {base}/missing.jpg"
    assert seconds < 6, seconds  # the reads ran concurrently, each within its timeout
    from_bytes = ImageEmbedder(model_dir=model_dir).embed_partition(
        pd.DataFrame({"image": pd.Series([photo_jpegs[2]], dtype=BINARY_DTYPE)})
    )
    np.testing.assert_allclose(
        embeddings_to_numpy(out["embedding"])[:1], embeddings_to_numpy(from_bytes["embedding"]), atol=1e-6
    )


def test_the_path_column_knobs_reach_the_workers(client, tmp_path, model_dir, photo_jpegs):
    import dask.dataframe as dd

    (tmp_path / "big.jpg").write_bytes(photo_jpegs[0])
    (tmp_path / "small.jpg").write_bytes(photo_jpegs[0][:100])
    os.mkfifo(tmp_path / "fifo.jpg")
    frame = paths_frame([str(tmp_path / n) for n in ("big.jpg", "small.jpg", "fifo.jpg")])
    embedder = ImageEmbedder(model_dir=model_dir, image_column="path", max_image_bytes=1000)
    out = embedder(dd.from_pandas(frame, npartitions=2)).compute()
    errors = out["embedding_error"].tolist()
    assert errors[0].startswith("image file too large") and errors[0].endswith("max_image_bytes 1000")
    assert errors[1].startswith("corrupt or truncated image")  # 100 bytes: read, then refused by Pillow
    assert errors[2].startswith("not a regular file (a FIFO)")


def test_no_unbounded_reads_of_any_local_file_kind(tmp_path):
    """Each kind of file read_paths can meet, with a tiny cap: only regular files are read."""
    (tmp_path / "f").write_bytes(b"x" * 10)
    got = read_paths([str(tmp_path / "f"), str(tmp_path), "/dev/null", "/dev/zero"], max_bytes=9)
    assert [r[1].split(":")[0] for r in got] == [
        "image file too large",
        "not a regular file (a directory)",
        "not a regular file (a character device)",
        "not a regular file (a character device)",
    ]
