"""Helpers for the tests that run dask-clip as users do: small img2dataset-like inputs,
the CLI in a subprocess, and the reference output to compare with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dask_clip import ImageEmbedder
from dask_clip.columns import embeddings_to_numpy
from dask_clip.testing import encode_image

BIN = Path(sys.executable).parent
BAD_IMAGES = (b"not an image", None)


def picture(rng: np.random.Generator) -> np.ndarray:
    """A small uint8 (H, W, 3) picture: a coloured gradient with a random rectangle."""
    h, w = (int(v) for v in rng.integers(40, 90, 2))
    yy, xx = np.mgrid[0:h, 0:w]
    a, b = rng.integers(0, 256, (2, 3))
    image = (a * (xx / w)[..., None] + b * (yy / h)[..., None]) / 2
    top, left = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    image[top : top + h // 3, left : left + w // 3] = rng.integers(0, 256, 3)
    return image.astype(np.uint8)


def write_image_parquet(folder: Path, n_files: int, rows_per_file: int, *, seed: int = 0, bad_every: int = 0) -> Path:
    """img2dataset-like shards ``00000.parquet`` ...: ``key``, ``caption``, ``jpg`` (binary).

    Every ``bad_every``-th row holds a broken image; row 1 of the first shard is a byte-exact
    copy of row 0 (a planted duplicate).
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for f in range(n_files):
        keys, images = [], []
        for _ in range(rows_per_file):
            if bad_every and n % bad_every == bad_every - 1:
                data = BAD_IMAGES[(n // bad_every) % len(BAD_IMAGES)]
            elif n == 1:
                data = images[0]
            else:
                data = encode_image(picture(rng), quality=90)
            keys.append(f"{n:06d}")
            images.append(data)
            n += 1
        table = pa.table(
            {
                "key": pa.array(keys, pa.string()),
                "caption": pa.array([f"picture {k}" for k in keys], pa.string()),
                "jpg": pa.array(images, pa.binary()),
            }
        )
        pq.write_table(table, folder / f"{f:05d}.parquet")
    return folder


def write_image_files(folder: Path, n: int, *, seed: int = 1) -> list[Path]:
    """``n`` JPEG and PNG files in ``folder`` and a subfolder, plus a non-image file."""
    rng = np.random.default_rng(seed)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        fmt = "PNG" if i % 3 == 0 else "JPEG"
        path = folder / ("sub" if i % 2 else "") / f"img{i:03d}.{'png' if fmt == 'PNG' else 'jpg'}"
        path.write_bytes(encode_image(picture(rng), fmt))
        paths.append(path)
    (folder / "notes.txt").write_text("not an image")
    return sorted(paths)


def dask_scheduler_command(sched: Path, *extra: str) -> list[str]:
    """``dask scheduler`` writing ``sched``, on localhost, on a free port."""
    return [
        str(BIN / "dask"),
        "scheduler",
        "--scheduler-file",
        str(sched),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *extra,
    ]


def dask_worker_command(sched: Path, *extra: str) -> list[str]:
    """``dask worker`` on a scheduler file as the docs start it: one worker process, one thread,
    dask_clip's worker setup as a preload, on localhost."""
    common = ["--preload", "dask_clip.worker_setup", "--nworkers", "1", "--nthreads", "1", "--host", "127.0.0.1"]
    return [str(BIN / "dask"), "worker", "--scheduler-file", str(sched), *common, *extra]


def run_cli(*args: str, timeout: float = 180, check: bool = True, **popen: object) -> subprocess.CompletedProcess:
    """``python -m dask_clip.cli ARGS`` in a subprocess; stdout and stderr captured."""
    proc = subprocess.run(
        [sys.executable, "-m", "dask_clip.cli", *args], capture_output=True, text=True, timeout=timeout, **popen
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dask-clip {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def subprocess_env() -> dict[str, str]:
    """The environment for CLI subprocesses: unbuffered output, so logs of killed runs are complete."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def reference(input_folder: Path, model_dir: str, **embedder: object) -> pd.DataFrame:
    """What an uninterrupted run must produce: every shard embedded eagerly, in order."""
    shards = sorted(input_folder.glob("*.parquet"))
    kwargs = {"image_column": "jpg", **embedder}
    parts = [
        ImageEmbedder(model_dir=model_dir, **kwargs).embed_partition(pd.read_parquet(p, dtype_backend="pyarrow"))
        for p in shards
    ]
    return pd.concat(parts, ignore_index=True)


def _is_list_column(series: pd.Series) -> bool:
    """A list<float32> column (embeddings, text embeddings, per-label probabilities)."""
    if isinstance(series.dtype, pd.ArrowDtype):
        return pa.types.is_list(series.dtype.pyarrow_dtype)
    return any(isinstance(v, np.ndarray) for v in series.head(8))


def assert_same_rows(got: pd.DataFrame, expected: pd.DataFrame, *, id_column: str = "key", atol: float = 1e-5) -> None:
    """Same rows in the same order, same columns, embeddings equal up to float noise."""
    assert list(got.columns) == list(expected.columns)
    assert got[id_column].tolist() == expected[id_column].tolist()  # no missing, duplicated or reordered rows
    for column in expected.columns:
        if column == "embedding" or _is_list_column(expected[column]):
            a, b = embeddings_to_numpy(got[column]), embeddings_to_numpy(expected[column])
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
            np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b), atol=atol)
        else:
            assert (
                got[column].astype(object).where(got[column].notna(), None).tolist()
                == expected[column].astype(object).where(expected[column].notna(), None).tolist()
            ), column


def run_main(*args: str, client=None, check: bool = True) -> subprocess.CompletedProcess:
    """``dask-clip ARGS`` called in this process (``cli.main``), stdout and stderr captured.

    With ``client``, the command runs on that client's cluster (``--scheduler-address``): the
    default tier's way to run a command end to end without starting Python and a cluster again.
    Returns what :func:`run_cli` returns, so a test reads the same either way.
    """
    import contextlib
    import io

    from dask_clip.cli import main

    argv = list(args)
    if client is not None:
        argv += ["--scheduler-address", client.scheduler.address]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code if isinstance(exit_.code, int) else 2
    proc = subprocess.CompletedProcess(["dask-clip", *argv], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"dask-clip {' '.join(argv)} exited {code}\n{proc.stdout}\n{proc.stderr}")
    return proc
