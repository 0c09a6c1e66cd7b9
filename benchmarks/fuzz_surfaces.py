"""Fuzz the surfaces of issue 21: WebDataset tar shards and the browse server's endpoints.

Run through ``benchmarks/fuzz.py --target tar|server`` (same JSON conventions as the image fuzz).

**tar**: each case is a small WebDataset shard written by tarfile (ustar, GNU or PAX headers;
images, captions, json; long and non-UTF-8 names, deeply nested json) or a sparse shard written
by GNU tar (a member of 1 GiB in 10 KB), mutated by 1-3 of: a header field rewritten (size set
huge, zero, negative base-256 or garbage; name set to ``..``/absolute/non-UTF-8 bytes; type flag
set to links, devices, PAX, GNU long-name or sparse types; mode and mtime garbage) with its
checksum recomputed most of the time so that tarfile reads on, bit flips, truncation,
insertion, deletion, duplicated 512-byte blocks; then, for a quarter of the cases, gzip or
bzip2 compression, and for some a gzip bomb (a member header claiming up to 64 MiB of zeros).
A child process reads each case with ``read_webdataset(..., max_member_bytes=256 KiB)`` (a third
of the uncompressed ones also as 3 byte ranges, through the reader's range logic) and checks that it returns a frame without raising and that
no image longer than the limit is in it. The parent times each case (hang), sees the child die
(crash) and polls its RSS.

**server**: a child process serves a small index (``dask_clip.index.serve`` on 127.0.0.1,
uvicorn, the defaults of ``dask-clip serve``) holding 24 photos and a 9000 x 9900 PNG (267 MB of
pixels in 288 KB); the parent sends requests over loopback from 4 threads: the page and its
static files, text searches with hostile ``q``/``k``, ``like`` and ``thumb`` with ids in and far
out of int64, uploads of mutated images (the image fuzz's seeds and mutators), PNG bombs and
random bytes with several content types and origins, foreign ``Host`` names, other methods and
traversal paths. A 5xx answer, a request without an answer within the timeout (hang), or the
server dying (crash) is a failure; the server's RSS is polled.
"""

from __future__ import annotations

import bz2
import collections
import gzip
import http.client
import io
import itertools
import json
import os
import select
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from fuzz import rss_kib  # the image fuzz's reader of a process's resident memory

TAR_LIMIT = 256 * 1024  # max_member_bytes of the tar cases


# -- tar cases ------------------------------------------------------------------------------------


def _jpeg(rng: np.random.Generator) -> bytes:
    from PIL import Image

    h, w = (int(x) for x in rng.integers(8, 48, 2))
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(out, "JPEG", quality=70)
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def _clean_shard(rng: np.random.Generator) -> bytes:
    fmt = [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT][int(rng.integers(0, 3))]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for s in range(int(rng.integers(1, 5))):
            key = f"{s:06d}"
            if rng.random() < 0.15 and fmt != tarfile.USTAR_FORMAT:
                key = "d" * int(rng.integers(90, 300)) + f"/{key}"  # a long name: GNU L / PAX path
            if rng.random() < 0.1:
                key = key + "\udcff\udce9"  # bytes that are not UTF-8
            _add(tar, f"{key}.jpg", _jpeg(rng))
            if rng.random() < 0.7:
                _add(tar, f"{key}.txt", "a caption é".encode())
            if rng.random() < 0.5:
                depth = int(rng.choice([1, 5, 50_000]))
                _add(tar, f"{key}.json", ("[" * depth + "]" * depth).encode() if depth > 1 else b'{"url": "u"}')
    return buf.getvalue()


def sparse_seeds() -> list[bytes]:
    """Shards with a sparse member of 1 GiB (GNU tar's old and PAX sparse formats); empty
    when GNU tar is not installed."""
    import shutil

    if shutil.which("tar") is None:
        return []
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        with open(Path(tmp) / "000000.jpg", "wb") as f:
            f.truncate(1 << 30)
            f.seek(4096)
            f.write(b"x")
        (Path(tmp) / "000001.txt").write_text("caption")
        for fmt in ("gnu", "pax"):
            shard = Path(tmp) / f"{fmt}.tar"
            subprocess.run(
                ["tar", "--sparse", f"--format={fmt}", "-cf", str(shard), "000000.jpg", "000001.txt"],
                cwd=tmp,
                check=True,
            )
            out.append(shard.read_bytes())
    return out


def _headers(data: bytes) -> list[int]:
    return [i for i in range(0, len(data) - 511, 512) if data[i + 257 : i + 262] == b"ustar"]


def _fix_checksum(data: bytearray, at: int) -> None:
    block = bytearray(data[at : at + 512])
    block[148:156] = b" " * 8
    data[at + 148 : at + 156] = b"%06o\x00 " % (sum(block) & 0o777777)


def _mutate_header(data: bytearray, rng: np.random.Generator) -> str:
    heads = _headers(bytes(data))
    if not heads:
        return "header_none"
    at = int(rng.choice(heads))
    field = str(rng.choice(["size", "name", "type", "mode", "mtime", "linkname"]))
    if field == "size":
        choice = int(rng.integers(0, 6))
        value = [
            b"77777777777\x00",
            b"00000000000\x00",
            b"\x80" + (1 << 40).to_bytes(11, "big"),  # base-256: 1 TiB
            b"\xff" * 12,  # base-256 negative
            b"12x45\x00\x00\x00\x00\x00\x00\x00",
            b"%011o\x00" % int(rng.integers(0, 1 << 26)),
        ][choice]
        data[at + 124 : at + 136] = value
    elif field == "name":
        name = [b"../../etc/passwd", b"/abs/x.jpg", b"\xff\xfe.jpg", b"a" * 100, b"", b"k.\xff"][
            int(rng.integers(0, 6))
        ]
        data[at : at + 100] = name[:100].ljust(100, b"\x00")
    elif field == "type":
        data[at + 156] = int(rng.choice(list(b"0123456LKSxgXVA\x00")))
    elif field == "mode":
        data[at + 100 : at + 108] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
    elif field == "mtime":
        data[at + 136 : at + 148] = b"\xff" * 12
    else:
        data[at + 157 : at + 257] = b"../../../../tmp/x".ljust(100, b"\x00")
    if rng.random() < 0.75:
        _fix_checksum(data, at)
    return f"header_{field}"


def _mutate_bytes(data: bytearray, rng: np.random.Generator) -> str:
    kind = int(rng.integers(0, 5))
    if kind == 0:
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, len(data)))
            data[i] ^= 1 << int(rng.integers(0, 8))
        return "bit_flips"
    if kind == 1:
        del data[int(rng.integers(1, len(data))) :]
        return "truncate"
    if kind == 2:
        at = int(rng.integers(0, len(data)))
        data[at:at] = rng.integers(0, 256, int(rng.integers(1, 600)), dtype=np.uint8).tobytes()
        return "insert"
    if kind == 3:
        at = int(rng.integers(0, len(data)))
        del data[at : at + int(rng.integers(1, 600))]
        return "delete"
    blocks = len(data) // 512
    if blocks < 1:
        return "duplicate_none"
    b = int(rng.integers(0, blocks)) * 512
    data[b:b] = bytes(data[b : b + 512 * int(rng.integers(1, 4))]) * int(rng.integers(1, 3))
    return "duplicate_blocks"


def _gzip_bomb(rng: np.random.Generator) -> bytes:
    size = int(rng.integers(1, 64)) << 20
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1) as gz:
        header = tarfile.TarInfo("000000.jpg")
        header.size = size
        gz.write(header.tobuf(tarfile.GNU_FORMAT))
        zeros = bytes(1 << 20)
        for _ in range(size >> 20):
            gz.write(zeros)
    return out.getvalue()


def tar_case(index: int, seed: int, sparse: list[bytes]) -> tuple[str, list[str], bytes]:
    """(suffix, mutations, bytes) of tar case ``index``: the same every time."""
    rng = np.random.default_rng([seed, 21, index])
    if rng.random() < 0.01:
        return ".tar.gz", ["gzip_bomb"], _gzip_bomb(rng)
    if sparse and rng.random() < 0.1:
        data = bytearray(sparse[int(rng.integers(0, len(sparse)))])
        applied = ["sparse"]
    else:
        data = bytearray(_clean_shard(rng))
        applied = []
    for _ in range(int(rng.integers(1, 4))):
        if len(data) < 2:
            break
        applied.append(_mutate_header(data, rng) if rng.random() < 0.6 else _mutate_bytes(data, rng))
    r = rng.random()
    if r < 0.18:
        return ".tar.gz", [*applied, "gzip"], gzip.compress(bytes(data), compresslevel=1)
    if r < 0.25:
        return ".tar.bz2", [*applied, "bzip2"], bz2.compress(bytes(data))
    return ".tar", applied, bytes(data)


def _ranges(path: Path, size: int) -> None:
    """Read the shard as 3 byte ranges with the reader's own range logic; check the bound."""
    from dask_clip.io.tar_stream import TarEntry, iter_entries

    cuts = [0, size // 3, 2 * size // 3, None]
    with open(path, "rb") as f:
        for start, end in itertools.pairwise(cuts):
            for item in iter_entries(f, lambda key, field: True, start=start, end=end, max_bytes=TAR_LIMIT):
                if isinstance(item, TarEntry) and item.data is not None and len(item.data) > TAR_LIMIT:
                    raise AssertionError(f"a member of {len(item.data)} bytes read past the limit")


def tar_child(args) -> int:  # type: ignore[no-untyped-def]
    """Read cases [start, cases) and report each: ``begin i`` / ``done i {json}``."""
    import resource

    from dask_clip import read_webdataset

    sparse = sparse_seeds()
    folder = Path(tempfile.mkdtemp(prefix="fuzz-tar-"))
    print("ready", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
    for i in range(args.start, args.cases):
        suffix, _, data = tar_case(i, args.seed, sparse)
        path = folder / f"{i}{suffix}"
        path.write_bytes(data)
        print("begin", i, flush=True)
        try:
            if suffix == ".tar" and i % 3 == 0:  # byte ranges too (split_shards needs shards of MiBs)
                _ranges(path, len(data))
            frame = read_webdataset(str(path), max_member_bytes=TAR_LIMIT).compute(scheduler="sync")
            images = [v for v in frame["image"].tolist() if isinstance(v, (bytes, bytearray))]
            result = {
                "rows": len(frame),
                "read_errors": int(frame["read_error"].notna().sum()),
                "images": len(images),
                "over_limit": sum(len(v) > TAR_LIMIT for v in images),
                "reasons": [str(r).split(":")[0][:60] for r in frame["read_error"].dropna().tolist()],
            }
        except Exception as err:  # a failure of the reader: what this fuzz looks for
            result = {"exception": f"{type(err).__name__}: {str(err)[:300]}"}
        path.unlink()
        print("done", i, json.dumps(result), flush=True)
        print("rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
    return 0


def run_tar(args) -> dict:  # type: ignore[no-untyped-def]
    """Run ``args.cases`` tar cases in children (a new child after a crash or hang)."""
    sparse = sparse_seeds()
    tally: collections.Counter = collections.Counter()
    reasons: collections.Counter = collections.Counter()
    mutations: collections.Counter = collections.Counter()
    failures: list[dict] = []
    max_rss = max_growth = 0
    start, children, started = 0, 0, time.perf_counter()
    while start < args.cases:
        children += 1
        command = [sys.executable, os.path.abspath(sys.argv[0]), "tar-child", "--start", str(start)]
        command += ["--cases", str(args.cases), "--seed", str(args.seed)]
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, bufsize=0)
            buffer, baseline, current = b"", 0, None
            deadline = time.monotonic() + args.startup_timeout
            failure = None
            while True:
                ready, _, _ = select.select([proc.stdout], [], [], 0.05)
                rss = rss_kib(proc.pid)
                max_rss = max(max_rss, rss)
                if baseline:
                    max_growth = max(max_growth, rss - baseline)
                if rss > args.memory_limit_mib * 1024:
                    failure = "memory"
                    break
                if ready:
                    chunk = os.read(proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
                    if not chunk:
                        proc.wait(timeout=30)
                        if current is not None or proc.returncode != 0:
                            failure = "crash"
                        break
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        word, _, rest = line.decode().partition(" ")
                        if word == "ready":
                            baseline = int(rest)
                        elif word == "begin":
                            current = int(rest)
                            deadline = time.monotonic() + args.timeout
                        elif word == "done":
                            index, _, body = rest.partition(" ")
                            result = json.loads(body)
                            _, applied, _ = tar_case(int(index), args.seed, sparse)
                            mutations.update(applied)
                            if "exception" in result:
                                tally["exception"] += 1
                                failures.append(
                                    {"index": int(index), "kind": "exception", "detail": result["exception"]}
                                )
                            elif result["over_limit"]:
                                tally["over_limit"] += 1
                                failures.append({"index": int(index), "kind": "over_limit"})
                            else:
                                tally["ok"] += 1
                                tally["rows"] += result["rows"]
                                tally["read_errors"] += result["read_errors"]
                                tally["images"] += result["images"]
                                reasons.update(result["reasons"])
                            current = None
                            start = int(index) + 1
                if time.monotonic() > deadline:
                    failure = "hang" if current is not None else "startup"
                    break
            if failure is not None:
                proc.kill()
                proc.wait()
                at = current if current is not None else start
                tally[failure] += 1
                failures.append({"index": at, "kind": failure})
                start = at + 1
    seconds = time.perf_counter() - started
    ran = tally["ok"] + tally["exception"] + tally["over_limit"] + tally["crash"] + tally["hang"] + tally["memory"]
    return {
        "target": "tar",
        "cases": args.cases,
        "ran": ran,
        "children": children,
        "seconds": round(seconds, 1),
        "crashes": tally["crash"],
        "hangs": tally["hang"],
        "memory_limit_hits": tally["memory"],
        "exceptions": tally["exception"],
        "members_over_limit": tally["over_limit"],
        "rows": tally["rows"],
        "rows_with_read_error": tally["read_errors"],
        "images_read": tally["images"],
        "max_rss_mib": round(max_rss / 1024, 1),
        "max_rss_growth_mib": round(max_growth / 1024, 1),
        "limits": {"timeout_s": args.timeout, "memory_limit_mib": args.memory_limit_mib, "max_member_bytes": TAR_LIMIT},
        "sparse_seeds": len(sparse),
        "mutations": dict(mutations.most_common()),
        "reasons": dict(reasons.most_common(25)),
        "failures": failures[:200],
    }


# -- server cases ---------------------------------------------------------------------------------


def build_index(folder: Path) -> str:
    """A small index of real photos (bytes kept for thumbnails) and one 9000 x 9900 PNG, with
    the tiny text model recorded (text search and uploads work)."""
    import dask

    from dask_clip import ImageEmbedder
    from dask_clip.embed.jobs import embed_parquet
    from dask_clip.index import build
    from dask_clip.testing import TINY_TEXT_MODEL_CFG, encode_image, photo_crops, solid_png, write_model_dir

    model = write_model_dir(folder / "model", model_cfg=TINY_TEXT_MODEL_CFG)
    images = folder / "images"
    images.mkdir()
    for i, crop in enumerate(photo_crops(24, seed=7)):
        (images / f"{i:03d}.jpg").write_bytes(encode_image(crop))
    (images / "big.png").write_bytes(solid_png(9000, 9900))
    with dask.config.set(scheduler="sync"):
        embed_parquet(images, folder / "emb", ImageEmbedder(model_dir=str(model)), partition_size=25)
        build(str(folder / "emb"), folder / "index", image_column="path")
    return str(folder / "index")


def server_request(index: int, seed: int, ids: list[int], image_seeds: list) -> tuple[str, str, dict, bytes, str]:
    """(method, path, headers, body, kind) of request ``index``: the same every time."""
    from urllib.parse import quote

    import fuzz

    rng = np.random.default_rng([seed, 3, index])
    host = str(
        rng.choice(
            ["127.0.0.1", "localhost", "[::1]", "evil.example", "127.0.0.1.nip.io", ""],
            p=[0.7, 0.1, 0.05, 0.05, 0.05, 0.05],
        )
    )
    headers = {"Host": host} if host else {}
    k = str(rng.choice(["5", "1", "200", "201", "0", "-3", "1e9", "x", "99999999999999999999"]))
    some_id = str(
        rng.choice([str(int(rng.choice(ids))), str(2**63), "-1", "99999999999999999999", "0x10", "1.5", "", "%00"])
    )
    kind = str(
        rng.choice(
            ["page", "search", "like", "thumb", "upload", "method", "junk"], p=[0.05, 0.2, 0.15, 0.2, 0.3, 0.05, 0.05]
        )
    )
    if kind == "page":
        return "GET", str(rng.choice(["/", "/static/app.js", "/static/app.css", "/api/info"])), headers, b"", kind
    if kind == "search":
        q = str(
            rng.choice(["a photo of a cat", "", " ", "é" * 50, "x" * int(rng.integers(1, 6000)), "\x00\ud7ff", "%"])
        )
        return "GET", f"/api/search?q={quote(q, safe='')}&k={quote(k)}", headers, b"", kind
    if kind == "like":
        return "GET", f"/api/like?id={quote(some_id)}&k={quote(k)}", headers, b"", kind
    if kind == "thumb":
        return "GET", f"/thumb/{quote(some_id)}", headers, b"", kind
    if kind == "method":
        path = str(rng.choice(["/", "/api/search?q=a", "/api/image", "/thumb/0"]))
        return str(rng.choice(["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])), path, headers, b"x", kind
    if kind == "junk":
        path = str(
            rng.choice(
                [
                    "/../etc/passwd",
                    "/static/../server.py",
                    "/static/%2e%2e/x",
                    "/thumb/../../x",
                    "/api/%00",
                    "//api/info",
                ]
            )
        )
        return "GET", path, headers, b"", kind
    choice = rng.random()
    if choice < 0.7:
        body = fuzz.generate_case(int(rng.integers(0, 1 << 30)), image_seeds, seed).data
    elif choice < 0.73:  # PNG bombs: 9000 x 9900 is within max_pixels and decoded (267 MB), the rest refused
        from dask_clip.testing import solid_png

        body = solid_png(int(rng.choice([9000, 20000, 60000])), int(rng.choice([9900, 20000, 60000])))
    elif choice < 0.8:
        body = rng.integers(0, 256, int(rng.integers(0, 4096)), dtype=np.uint8).tobytes()
    else:
        body = image_seeds[int(rng.integers(0, len(image_seeds)))][2]
    content_type = str(
        rng.choice(
            ["application/octet-stream", "text/plain", "multipart/form-data; boundary=x", ""], p=[0.8, 0.1, 0.05, 0.05]
        )
    )
    if content_type:
        headers["Content-Type"] = content_type
    if rng.random() < 0.1:
        headers["Origin"] = str(rng.choice(["http://evil.example", "null", f"http://{host}"]))
    return "POST", f"/api/image?k={quote(k)}", headers, body, kind


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_server(args) -> dict:  # type: ignore[no-untyped-def]
    """Send ``args.cases`` requests to a served index over loopback, from ``args.concurrency`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    import fuzz

    from dask_clip.index import load

    image_seeds = fuzz.make_seeds(args.seed)
    with tempfile.TemporaryDirectory(prefix="fuzz-server-") as tmp:
        index_dir = build_index(Path(tmp))
        ids = [int(v) for v in load(index_dir).table.column("id").to_pylist()]
        port = _free_port()
        code = f"from dask_clip.index import serve; serve({index_dir!r}, port={port}, log_level='error')"
        server = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + args.startup_timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.2)
        baseline = rss_kib(server.pid)
        peak = [baseline]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kib(server.pid))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.perf_counter()
        statuses: collections.Counter = collections.Counter()
        by_kind: dict = collections.defaultdict(collections.Counter)
        failures: list[dict] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            if args.max_seconds and time.perf_counter() - started > args.max_seconds:
                return  # out of time: not sent, not counted
            method, path, headers, body, kind = server_request(i, args.seed, ids, image_seeds)
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=args.timeout)
            try:
                connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                for name, value in headers.items():
                    connection.putheader(name, value)
                if body or method == "POST":
                    connection.putheader("Content-Length", str(len(body)))
                connection.endheaders(body or None)
                response = connection.getresponse()
                response.read()
                status = response.status
            except TimeoutError:
                status = "hang"
            except (ConnectionError, http.client.HTTPException, OSError) as err:
                status = "crash" if server.poll() is not None else f"connection: {type(err).__name__}"
            finally:
                connection.close()
            with lock:
                statuses[str(status)] += 1
                by_kind[kind][str(status)] += 1
                if not isinstance(status, int) or status >= 500:
                    failures.append(
                        {"index": i, "kind": kind, "status": str(status), "method": method, "path": path[:200]}
                    )

        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(one, range(args.cases)))
        seconds = time.perf_counter() - started
        stop.set()
        watcher.join()
        alive = server.poll() is None
        server.terminate()
        server.wait(timeout=30)
    return {
        "target": "server",
        "cases": args.cases,
        "ran": sum(statuses.values()),
        "concurrency": args.concurrency,
        "max_seconds": args.max_seconds,
        "seconds": round(seconds, 1),
        "crashes": statuses.get("crash", 0) + (0 if alive else 1),
        "hangs": statuses.get("hang", 0),
        "server_errors_5xx": sum(v for s, v in statuses.items() if s.isdigit() and int(s) >= 500),
        "server_alive_at_end": alive,
        "statuses": dict(sorted(statuses.items())),
        "by_kind": {kind: dict(sorted(c.items())) for kind, c in sorted(by_kind.items())},
        "server_rss_start_mib": round(baseline / 1024, 1),
        "max_rss_mib": round(peak[0] / 1024, 1),
        "max_rss_growth_mib": round((peak[0] - baseline) / 1024, 1),
        "limits": {"timeout_s": args.timeout, "max_decodes": 2, "max_decode_bytes": 256 * 2**20},
        "failures": failures[:200],
    }
