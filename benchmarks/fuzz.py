"""Fuzz the input stage: mutated JPEG/PNG/GIF/WebP/TIFF/BMP images through the real embedder.

Each case is a small seed image, written by Pillow in one of six formats and several variants
(progressive JPEG, palette and 16-bit PNG, animated GIF and WebP, multi-page TIFF, RLE BMP ...),
mutated by 1-3 of: bit flips, byte overwrites, truncation, insertion, deletion, duplication of
a chunk, width/height fields set huge (format-aware, with the PNG CRC fixed so that the decoder
goes on), and length fields set huge. Cases run through
``dask_clip.ImageEmbedder(tiny model).embed_partition`` in child processes, a few rows per call,
so that a crash (the child dies), a hang (no answer within ``--timeout``) or a runaway allocation
(the child passes ``--memory-limit``) is seen and pinned to its case: a failing call is rerun one
case per child. Recorded: cases, outcomes (embedded, row error and why), crashes, hangs, rows
with neither an embedding nor an error (or both), misaligned rows, and the children's peak RSS.

    python benchmarks/fuzz.py --cases 10000 --jobs 2            # the figures in docs/robustness.md
    python benchmarks/fuzz.py --cases 200 --source path         # through the path reader instead
    python benchmarks/fuzz.py --cases 300 --save-failures fails/  # write failing inputs to replay
    python benchmarks/fuzz.py --target tar --cases 10000        # WebDataset shards (fuzz_surfaces.py)
    python benchmarks/fuzz.py --target server --cases 10000     # the browse server over loopback

A case is reproducible from ``--seed`` and its index (``generate_case``). Writes
``benchmarks/results/fuzz-<date>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import io
import json
import os
import platform
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "TIFF": "tif", "BMP": "bmp"}
# Markers a test (--inject-faults) plants to check that the harness sees crashes and hangs.
CRASH_MARKER, HANG_MARKER = b"FUZZ-INJECT-CRASH", b"FUZZ-INJECT-HANG"


# -- seeds --------------------------------------------------------------------------------------


def _picture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    a, b = rng.integers(0, 256, (2, 3))
    image = (a * (xx / w)[..., None] + b * (yy / h)[..., None]) / 2
    image[h // 4 : h // 2, w // 4 : w // 2] = rng.integers(0, 256, 3)
    return image.astype(np.uint8)


def make_seeds(seed: int = 0) -> list[tuple[str, str, bytes]]:
    """(name, format, bytes) of the seed images: every format, in several variants."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(_picture(rng, 48, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated
    frames = [Image.fromarray(_picture(rng, 32, 40)) for _ in range(3)]

    def save(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **kwargs)
        return buffer.getvalue()

    return [
        ("jpeg-baseline", "JPEG", save(rgb, "JPEG", quality=85)),
        ("jpeg-progressive", "JPEG", save(rgb, "JPEG", quality=85, progressive=True)),
        ("jpeg-gray", "JPEG", save(rgb.convert("L"), "JPEG")),
        ("jpeg-cmyk", "JPEG", save(rgb.convert("CMYK"), "JPEG")),
        ("jpeg-exif", "JPEG", save(rgb, "JPEG", exif=exif)),
        ("png-rgb", "PNG", save(rgb, "PNG")),
        ("png-rgba-interlaced", "PNG", save(rgb.convert("RGBA"), "PNG", interlace=1)),
        ("png-palette", "PNG", save(rgb.convert("P"), "PNG")),
        ("png-16bit-gray", "PNG", save(rgb.convert("I;16"), "PNG")),
        ("gif-animated", "GIF", save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)),
        ("gif-still", "GIF", save(rgb.convert("P"), "GIF")),
        ("webp-lossy", "WEBP", save(rgb, "WEBP", quality=80)),
        ("webp-lossless-alpha", "WEBP", save(rgb.convert("RGBA"), "WEBP", lossless=True)),
        ("webp-animated", "WEBP", save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50)),
        ("tiff-lzw", "TIFF", save(rgb, "TIFF", compression="tiff_lzw")),
        ("tiff-multipage", "TIFF", save(frames[0], "TIFF", save_all=True, append_images=frames[1:])),
        ("tiff-16bit", "TIFF", save(rgb.convert("I;16"), "TIFF")),
        ("bmp-24", "BMP", save(rgb, "BMP")),
        ("bmp-palette", "BMP", save(rgb.convert("P"), "BMP")),
    ]


# -- mutations ----------------------------------------------------------------------------------

HUGE_16 = (0xFFFF, 0x8000, 0x7FFF, 65500, 0)
HUGE_32 = (0xFFFFFFFF, 0x7FFFFFFF, 0x10000, 1 << 24, 0)


def _bit_flips(data: bytearray, rng: np.random.Generator, fmt: str) -> str:
    for _ in range(int(rng.integers(1, 9))):
        i = int(rng.integers(0, len(data)))
        data[i] ^= 1 << int(rng.integers(0, 8))
    return "bit_flips"


def _byte_overwrite(data: bytearray, rng: np.random.Generator, fmt: str) -> str:
    for _ in range(int(rng.integers(1, 5))):
        data[int(rng.integers(0, len(data)))] = int(rng.choice([0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE]))
    return "byte_overwrite"


def _truncate(data: bytearray, rng: np.random.Generator, fmt: str) -> str:
    del data[int(rng.integers(1, len(data))) :]
    return "truncate"


def _insert(data: bytearray, rng: np.random.Generator, fmt: str) -> str:
    at = int(rng.integers(0, len(data)))
    data[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    return "insert"


def _delete(data: bytearray, rng: np.random.Generator, fmt: str) -> str:
    at = int(rng.integers(0, len(data)))
    del data[at : at + int(rng.integers(1, 64))]
    return "delete"


def _duplicate_chunk(data: bytearray, rng: np.random.Generator, fmt: str) -> str:
    start = int(rng.integers(0, len(data)))
    chunk = bytes(data[start : start + int(rng.integers(4, 512))])
    at = int(rng.integers(0, len(data)))
    data[at:at] = chunk * int(rng.integers(1, 4))
    return "duplicate_chunk"


def _png_chunks(data: bytes) -> list[tuple[int, bytes]]:
    """(offset of the length field, type) of each PNG chunk."""
    out, at = [], 8
    while at + 8 <= len(data):
        length = struct.unpack(">I", data[at : at + 4])[0]
        out.append((at, data[at + 4 : at + 8]))
        at += 12 + length
    return out


def _fix_png_crc(data: bytearray, at: int) -> None:
    length = struct.unpack(">I", data[at : at + 4])[0]
    body = bytes(data[at + 4 : at + 8 + length])
    if at + 12 + length <= len(data):
        data[at + 8 + length : at + 12 + length] = struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def _jpeg_sof(data: bytes) -> int | None:
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        at = data.find(marker)
        if at >= 0 and at + 9 <= len(data):
            return at
    return None


def _tiff_dimension_offsets(data: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of the ImageWidth/ImageLength values in the first IFD."""
    if len(data) < 8 or data[:2] not in (b"II", b"MM"):
        return []
    end = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(end + "I", data[4:8])[0]
    if ifd + 2 > len(data):
        return []
    count = struct.unpack(end + "H", data[ifd : ifd + 2])[0]
    found = []
    for k in range(count):
        at = ifd + 2 + 12 * k
        if at + 12 > len(data):
            break
        tag, kind = struct.unpack(end + "HH", data[at : at + 4])
        if tag in (256, 257):
            found.append((at + 8, end + ("H" if kind == 3 else "I")))
    return found


def _huge_dimensions(data: bytearray, rng: np.random.Generator, fmt: str) -> str:
    """Set the width and/or height the header declares to a huge (or zero) value."""
    pick16, pick32 = int(rng.choice(HUGE_16)), int(rng.choice(HUGE_32))
    which = int(rng.integers(0, 3))  # width, height or both
    if fmt == "PNG" and len(data) >= 33:
        for k in (0, 1):
            if which in (k, 2):
                data[16 + 4 * k : 20 + 4 * k] = struct.pack(">I", pick32)
        if rng.random() < 0.8:
            _fix_png_crc(data, 8)  # so that Pillow reads on instead of refusing a bad CRC
    elif fmt == "JPEG":
        at = _jpeg_sof(bytes(data))
        if at is not None:
            for k, off in enumerate((5, 7)):
                if which in (k, 2):
                    data[at + off : at + off + 2] = struct.pack(">H", pick16)
    elif fmt == "GIF" and len(data) >= 10:
        for k in (0, 1):
            if which in (k, 2):
                data[6 + 2 * k : 8 + 2 * k] = struct.pack("<H", pick16)
    elif fmt == "BMP" and len(data) >= 26:
        for k in (0, 1):
            if which in (k, 2):
                value = pick32 if rng.random() < 0.5 else -int(rng.integers(1, 1 << 20))
                data[18 + 4 * k : 22 + 4 * k] = struct.pack("<i", max(min(value, 2**31 - 1), -(2**31)))
    elif fmt == "WEBP" and len(data) >= 30:
        kind = bytes(data[12:16])
        if kind == b"VP8X":
            for k in (0, 1):
                if which in (k, 2):
                    data[24 + 3 * k : 27 + 3 * k] = struct.pack("<I", pick32 & 0xFFFFFF)[:3]
        elif kind == b"VP8 ":
            for k in (0, 1):
                if which in (k, 2):
                    data[26 + 2 * k : 28 + 2 * k] = struct.pack("<H", pick16 & 0x3FFF)
        elif kind == b"VP8L":
            bits = struct.unpack("<I", data[21:25])[0]
            bits |= 0x3FFF if which in (0, 2) else 0
            bits |= 0x3FFF << 14 if which in (1, 2) else 0
            data[21:25] = struct.pack("<I", bits)
    elif fmt == "TIFF":
        for at, form in _tiff_dimension_offsets(bytes(data)):
            if rng.random() < 0.7:
                data[at : at + struct.calcsize(form)] = struct.pack(form, pick16 if form.endswith("H") else pick32)
    return "huge_dimensions"


def _huge_length(data: bytearray, rng: np.random.Generator, fmt: str) -> str:
    """A length field set huge: a PNG chunk, a RIFF chunk, a JPEG segment, a TIFF count, or a
    random aligned 32-bit word."""
    if fmt == "PNG":
        chunks = _png_chunks(bytes(data))
        if chunks:
            at, _ = chunks[int(rng.integers(0, len(chunks)))]
            data[at : at + 4] = struct.pack(">I", int(rng.choice(HUGE_32)) & 0x7FFFFFFF)
            return "huge_length"
    if fmt == "WEBP" and len(data) >= 20:
        offset = int(rng.choice([4, 16]))
        data[offset : offset + 4] = struct.pack("<I", int(rng.choice(HUGE_32)))
        return "huge_length"
    if fmt == "JPEG":
        markers = [i for i in range(2, len(data) - 3) if data[i] == 0xFF and 0xC0 <= data[i + 1] <= 0xFE]
        if markers:
            at = markers[int(rng.integers(0, len(markers)))]
            data[at + 2 : at + 4] = struct.pack(">H", int(rng.choice(HUGE_16)))
            return "huge_length"
    at = int(rng.integers(0, max(1, len(data) - 4))) & ~3
    data[at : at + 4] = struct.pack("<I", int(rng.choice(HUGE_32)))
    return "huge_length"


MUTATORS = (
    _bit_flips,
    _byte_overwrite,
    _truncate,
    _insert,
    _delete,
    _duplicate_chunk,
    _huge_dimensions,
    _huge_dimensions,  # twice the weight: the header is where bombs live
    _huge_length,
)


@dataclass
class Case:
    index: int
    seed_name: str
    fmt: str
    mutations: list[str]
    data: bytes


def generate_case(index: int, seeds: list[tuple[str, str, bytes]], seed: int) -> Case:
    """Case ``index`` of a run with ``seed``: the same bytes every time."""
    rng = np.random.default_rng([seed, index])
    name, fmt, blob = seeds[index % len(seeds)]
    data = bytearray(blob)
    applied = []
    for _ in range(int(rng.integers(1, 4))):
        if len(data) < 2:
            break
        applied.append(MUTATORS[int(rng.integers(0, len(MUTATORS)))](data, rng, fmt))
    return Case(index, name, fmt, applied, bytes(data))


# -- the child: embed cases, report per call --------------------------------------------------


def call_schedule(n: int, rows_per_call: int, singles: int) -> list[tuple[int, int]]:
    """(start, rows) of each embed_partition call: the first ``singles`` cases one at a time (a
    call that failed, rerun to find its case), then ``rows_per_call`` at a time."""
    singles = min(singles, n)
    calls = [(i, 1) for i in range(singles)]
    calls += [(i, min(rows_per_call, n - i)) for i in range(singles, n, rows_per_call)]
    return calls


def child(args: argparse.Namespace) -> int:
    import resource

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    torch.set_num_threads(1)
    from dask_clip import ImageEmbedder
    from dask_clip.columns import BINARY_DTYPE

    table = pq.read_table(args.cases)
    indices = table.column("index").to_pylist()
    blobs = table.column("data").to_pylist()
    fmts = table.column("fmt").to_pylist()
    kind = args.source
    embedder = ImageEmbedder(model_dir=args.model_dir, image_column="image", image_kind=kind)
    folder = Path(tempfile.mkdtemp(prefix="fuzz-child-"))

    def frame(rows: list[int]) -> pd.DataFrame:
        if kind == "bytes":
            return pd.DataFrame({"image": pd.Series([blobs[r] for r in rows], dtype=BINARY_DTYPE, index=rows)})
        paths = []
        for r in rows:
            path = folder / f"case-{indices[r]}.{EXTENSIONS[fmts[r]]}"
            path.write_bytes(blobs[r])
            paths.append(str(path))
        return pd.DataFrame({"image": pd.Series(paths, dtype=pd.ArrowDtype(pa.string()), index=rows)})

    def say(*parts: object) -> None:
        print(*parts, flush=True)

    embedder.embed_partition(frame([0])[:0])  # imports done
    say("ready", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    for start, n in call_schedule(len(blobs), args.rows_per_call, args.singles):
        rows = list(range(start, start + n))
        say("begin", start, n)
        if args.inject_faults:
            for r in rows:
                if blobs[r].startswith(CRASH_MARKER):
                    os.kill(os.getpid(), signal.SIGSEGV)
                if blobs[r].startswith(HANG_MARKER):
                    time.sleep(10_000)
        df = frame(rows)
        out = embedder.embed_partition(df)
        outcomes = []
        aligned = len(out) == len(df) and list(out.index) == list(df.index)
        for has, err in zip(out["embedding"].notna().tolist(), out["embedding_error"].tolist()):
            error = None if pd.isna(err) else str(err)
            if has and error is None:
                outcomes.append(["embedded", None])
            elif not has and error is not None:
                outcomes.append(["error", error])
            else:
                outcomes.append(["both" if has else "neither", error])
        say("done", start, json.dumps({"outcomes": outcomes, "aligned": aligned}))
        say("rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return 0


# -- the parent: batches of cases in children, failures pinned to their case --------------------


@dataclass
class Tally:
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    reasons: collections.Counter = field(default_factory=collections.Counter)
    by_format: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    failures: list = field(default_factory=list)
    misaligned_calls: int = 0
    max_rss_kib: int = 0
    max_rss_growth_kib: int = 0
    children: int = 0


def _reason_key(reason: str) -> str:
    head = reason.split(":", maxsplit=1)[0]
    if head == "decode failed":  # a decoder raised something unexpected: keep its type
        return ":".join(reason.split(":")[:2])
    return head


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB (``VmRSS``), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _run_child(cases: list[Case], args: argparse.Namespace, tally: Tally, singles: int) -> tuple[list[Case], int]:
    """Run ``cases`` in one child and record what finished. Returns the cases still to run and
    how many of them to run one per call: after a failed call of several cases, its cases (run
    singly, to find the one that fails); after a failed single case, which is recorded as a crash,
    hang or memory failure, the cases after it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        path = Path(tmp) / "cases.parquet"
        pq.write_table(
            pa.table(
                {
                    "index": [c.index for c in cases],
                    "fmt": [c.fmt for c in cases],
                    "data": pa.array([c.data for c in cases], pa.binary()),
                }
            ),
            path,
        )
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "child",
            "--cases",
            str(path),
            "--model-dir",
            args.model_dir,
            "--rows-per-call",
            str(args.rows_per_call),
            "--singles",
            str(singles),
            "--source",
            args.source,
        ] + (["--inject-faults"] if args.inject_faults else [])
        with open(Path(tmp) / "stderr.txt", "wb") as err:  # a file: a full pipe would block the child
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, bufsize=0)
        tally.children += 1
        buffer, baseline = b"", 0
        current: tuple[int, int] | None = None
        deadline = time.monotonic() + args.startup_timeout
        failure: str | None = None
        try:
            while True:
                ready, _, _ = select.select([proc.stdout], [], [], 0.05)
                rss = rss_kib(proc.pid)
                tally.max_rss_kib = max(tally.max_rss_kib, rss)
                if baseline:
                    tally.max_rss_growth_kib = max(tally.max_rss_growth_kib, rss - baseline)
                if rss > args.memory_limit_mib * 1024:
                    failure = "memory"
                    break
                if ready:
                    chunk = os.read(proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
                    if not chunk:  # EOF: the child ended
                        proc.wait(timeout=30)
                        if current is not None or proc.returncode != 0:
                            failure = "crash"
                        break
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        words = line.decode().split(" ", 2)
                        if words[0] == "ready":
                            baseline = rss_kib(proc.pid)
                            deadline = time.monotonic() + args.timeout
                        elif words[0] == "begin":
                            current = (int(words[1]), int(words[2]))
                            deadline = time.monotonic() + args.timeout
                        elif words[0] == "done":
                            _record(cases[int(words[1]) :], json.loads(words[2]), tally)
                            current = None
                        elif words[0] == "rss":
                            tally.max_rss_kib = max(tally.max_rss_kib, int(words[1]))
                if time.monotonic() > deadline:
                    failure = "hang"
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        stderr = (Path(tmp) / "stderr.txt").read_bytes().decode(errors="replace")[-1000:]
    if failure is None:
        return [], 0
    if current is None:  # before its first call or between two: not a case's doing
        raise RuntimeError(f"fuzz child failed outside a call ({failure}): {stderr}")
    start, n = current
    if n > 1:
        return cases[start:], n
    case = cases[start]
    tally.outcomes[failure] += 1
    tally.by_format[case.fmt][failure] += 1
    tally.failures.append(_failure(case, failure, stderr or None))
    return cases[start + 1 :], max(0, singles - start - 1)


def _record(cases: list[Case], report: dict, tally: Tally) -> None:
    """One call's outcomes; ``cases`` starts at the call's first case."""
    if not report["aligned"]:
        tally.misaligned_calls += 1
    for case, (outcome, reason) in zip(cases, report["outcomes"]):
        tally.outcomes[outcome] += 1
        tally.by_format[case.fmt][outcome] += 1
        if reason:
            tally.reasons[_reason_key(reason)] += 1
        if outcome in ("neither", "both"):
            tally.failures.append(_failure(case, outcome, reason))


def _failure(case: Case, kind: str, detail: str | None) -> dict:
    return {
        "kind": kind,
        "index": case.index,
        "seed": case.seed_name,
        "mutations": case.mutations,
        "detail": detail,
        "data": case.data,
    }


def run_cases(cases: list[Case], args: argparse.Namespace) -> Tally:
    """All ``cases``, in as few children as their failures allow."""
    tally = Tally()
    # The planted faults run one per call, so that each costs one child, not a rerun of its call.
    pending, singles = cases, 3 if args.inject_faults and cases[0].index == 0 else 0
    while pending:
        pending, singles = _run_child(pending, args, tally, singles)
    return tally


def merge(tallies: list[Tally]) -> Tally:
    total = Tally()
    for t in tallies:
        total.outcomes.update(t.outcomes)
        total.reasons.update(t.reasons)
        for fmt, counter in t.by_format.items():
            total.by_format[fmt].update(counter)
        total.failures.extend(t.failures)
        total.misaligned_calls += t.misaligned_calls
        total.children += t.children
        total.max_rss_kib = max(total.max_rss_kib, t.max_rss_kib)
        total.max_rss_growth_kib = max(total.max_rss_growth_kib, t.max_rss_growth_kib)
    return total


def fuzz(args: argparse.Namespace) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import PIL
    from PIL import features

    from dask_clip.testing import write_model_dir

    seeds = make_seeds(args.seed)
    cases = [generate_case(i, seeds, args.seed) for i in range(args.cases)]
    if args.inject_faults:  # for the harness's own test: one crash, one hang
        cases[1].data = CRASH_MARKER + cases[1].data
        cases[2].data = HANG_MARKER + cases[2].data
        cases[1].mutations, cases[2].mutations = ["inject_crash"], ["inject_hang"]
    with tempfile.TemporaryDirectory(prefix="fuzz-model-") as tmp:
        args.model_dir = args.model_dir or str(write_model_dir(Path(tmp) / "model"))
        started = time.perf_counter()
        batches = [cases[i : i + args.batch] for i in range(0, len(cases), args.batch)]
        with ThreadPoolExecutor(args.jobs) as pool:
            tally = merge(list(pool.map(lambda batch: run_cases(batch, args), batches)))
        seconds = time.perf_counter() - started
    failures = tally.failures
    if args.save_failures:
        folder = Path(args.save_failures)
        folder.mkdir(parents=True, exist_ok=True)
        for f in failures:
            (folder / f"{f['kind']}-{f['index']}.{EXTENSIONS[cases[f['index']].fmt]}").write_bytes(f["data"])
    ran = sum(tally.outcomes.values())
    return {
        "benchmark": "fuzz",
        "date": dt.date.today().isoformat(),
        "command": " ".join(["python", "benchmarks/fuzz.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "versions": {
            "pillow": PIL.__version__,
            **{f"lib_{name}": features.version(name) for name in ("jpg", "zlib", "webp", "libtiff")},
        },
        "seed": args.seed,
        "source": args.source,
        "cases": len(cases),
        "ran": ran,
        "seeds": [name for name, _, _ in seeds],
        "children": tally.children,
        "seconds": round(seconds, 1),
        "cases_per_second": round(ran / seconds, 1) if seconds else None,
        "crashes": tally.outcomes.get("crash", 0),
        "hangs": tally.outcomes.get("hang", 0),
        "memory_limit_hits": tally.outcomes.get("memory", 0),
        "rows_with_neither": tally.outcomes.get("neither", 0),
        "rows_with_both": tally.outcomes.get("both", 0),
        "misaligned_calls": tally.misaligned_calls,
        "embedded": tally.outcomes.get("embedded", 0),
        "row_errors": tally.outcomes.get("error", 0),
        "max_rss_mib": round(tally.max_rss_kib / 1024, 1),
        "max_rss_growth_mib": round(tally.max_rss_growth_kib / 1024, 1),
        "limits": {"timeout_s": args.timeout, "memory_limit_mib": args.memory_limit_mib},
        "by_format": {fmt: dict(counter) for fmt, counter in sorted(tally.by_format.items())},
        "reasons": dict(tally.reasons.most_common()),
        "failures": [{k: v for k, v in f.items() if k != "data"} for f in failures],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode")
    kid = sub.add_parser("child", help=argparse.SUPPRESS)
    kid.add_argument("--cases", required=True)
    kid.add_argument("--model-dir", required=True)
    kid.add_argument("--rows-per-call", type=int, default=8)
    kid.add_argument("--singles", type=int, default=0)
    kid.add_argument("--source", choices=("bytes", "path"), default="bytes")
    kid.add_argument("--inject-faults", action="store_true")
    tar_kid = sub.add_parser("tar-child", help=argparse.SUPPRESS)
    tar_kid.add_argument("--start", type=int, default=0)
    tar_kid.add_argument("--cases", type=int, required=True)
    tar_kid.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--target",
        choices=("images", "tar", "server"),
        default="images",
        help="what to fuzz: image bytes through the embedder (default), tar shards, the browse server",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="server: requests in flight (default: 4)")
    parser.add_argument("--max-seconds", type=float, help="server: send no request after this many seconds")
    parser.add_argument("--cases", type=int, default=1000, help="cases to run (default: 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=500, help="cases per child process (default: 500)")
    parser.add_argument("--rows-per-call", type=int, default=8, help="rows per embed_partition call (default: 8)")
    parser.add_argument("--jobs", type=int, default=1, help="children at once (default: 1)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds one call may take (default: 60)")
    parser.add_argument("--startup-timeout", type=float, default=180)
    parser.add_argument("--memory-limit-mib", type=int, default=4096, help="RSS a child may reach (default: 4096)")
    parser.add_argument("--source", choices=("bytes", "path"), default="bytes", help="image column kind")
    parser.add_argument("--model-dir", help="default: a tiny seeded model in a temporary folder")
    parser.add_argument("--save-failures", metavar="DIR", help="write each failing input there")
    parser.add_argument("--inject-faults", action="store_true", help="plant a crash and a hang (tests the harness)")
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/fuzz-<date>.json)")
    args = parser.parse_args(argv)
    if args.mode == "child":
        return child(args)
    if args.mode == "tar-child":
        import fuzz_surfaces

        return fuzz_surfaces.tar_child(args)
    if args.target != "images":
        return _surface(args)
    result = fuzz(args)
    out = Path(args.out or Path(__file__).parent / "results" / f"fuzz-{result['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: result[k] for k in ("cases", "ran", "crashes", "hangs", "memory_limit_hits", "rows_with_neither")}
    print(json.dumps({**summary, "max_rss_mib": result["max_rss_mib"], "seconds": result["seconds"], "out": str(out)}))
    return 0


def _surface(args: argparse.Namespace) -> int:
    """``--target tar|server`` (benchmarks/fuzz_surfaces.py); the same JSON conventions."""
    import fuzz_surfaces

    run = fuzz_surfaces.run_tar if args.target == "tar" else fuzz_surfaces.run_server
    result = {
        "benchmark": "fuzz",
        "date": dt.date.today().isoformat(),
        "command": " ".join(["python", "benchmarks/fuzz.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "seed": args.seed,
        **run(args),
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"fuzz-{args.target}-{result['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    keys = ("cases", "ran", "crashes", "hangs", "memory_limit_hits", "exceptions", "server_errors_5xx", "max_rss_mib")
    print(json.dumps({**{k: result[k] for k in keys if k in result}, "seconds": result["seconds"], "out": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
