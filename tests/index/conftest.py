"""Fixtures of the index tests: embeddings of real images by a tiny model with a working text
tower, written the way ``dask-clip embed`` writes them, and a brute-force reference."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dask_clip.testing import TINY_MODEL_CFG, write_model_dir

# A caption that would run script if a page ever parsed it as HTML.
HOSTILE_CAPTION = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>astronaut <b>bold</b>'
# open_clip's SimpleTokenizer has 49,408 tokens: a text tower that can take real text.
TEXT_MODEL_CFG = {**TINY_MODEL_CFG, "text_cfg": {**TINY_MODEL_CFG["text_cfg"], "vocab_size": 49408}}


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny seeded CLIP (64 px, 32-d) whose text tower takes open_clip's tokenizer."""
    return str(write_model_dir(tmp_path_factory.mktemp("tiny-text-model"), model_cfg=TEXT_MODEL_CFG, seed=3))


@pytest.fixture(scope="session")
def sample_frame() -> pd.DataFrame:
    """The bundled sample (319 rows: real photos, crops, planted duplicates, 3 broken rows),
    with a random ``aesthetic`` score column and one hostile caption."""
    from importlib import resources

    df = pd.read_parquet(resources.files("dask_clip") / "data" / "sample.parquet")
    df["aesthetic"] = np.random.default_rng(0).uniform(0, 10, len(df)).round(3)
    df.loc[0, "caption"] = HOSTILE_CAPTION
    return df


@pytest.fixture(scope="session")
def sample_embeddings(tmp_path_factory: pytest.TempPathFactory, text_model_dir: str, sample_frame: pd.DataFrame) -> str:
    """The sample embedded by the tiny model, written by dask_clip.io.writer with the job record
    ``dask-clip embed`` writes (so the index learns the model from the folder)."""
    import dask
    import dask.dataframe as dd

    from dask_clip import ImageEmbedder
    from dask_clip.io.writer import write_parquet

    embedder = ImageEmbedder(model_dir=text_model_dir, image_column="jpg", image_kind="bytes", device="cpu")
    from dask_clip.backends import as_binary

    # Arrow binary: Dask cannot take an object column of bytes (see docs/design.md, pitfalls)
    ddf = embedder(dd.from_pandas(sample_frame.assign(jpg=as_binary(sample_frame["jpg"])), npartitions=3))
    folder = tmp_path_factory.mktemp("sample-embeddings") / "emb"
    job = {"command": "embed", "model": {"model_dir": text_model_dir, "precision": "auto"}}
    with dask.config.set(scheduler="threads"):
        write_parquet(ddf, folder, job=job)
    return str(folder)


def brute_force(x: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by cosine in float64: (similarity (Q, k), row (Q, k)), NaN rows skipped."""
    xs = x.astype(np.float64)
    norms = np.linalg.norm(xs, axis=1)
    usable = np.isfinite(norms) & (norms > 0)
    xs = np.where(usable[:, None], xs / np.where(usable, norms, 1)[:, None], 0)
    q = queries.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    sims = q @ np.nan_to_num(xs).T
    sims[:, ~usable] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``dask_clip.index.serve`` in its own process, as the CLI will run it."""

    def __init__(self, index_dir: str, **options: object) -> None:
        self.index_dir = index_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ", ".join(f"{k}={v!r}" for k, v in options.items())
        code = (
            "from dask_clip.index import serve; "
            f"serve({index_dir!r}, port={self.port}{', ' + args if args else ''}, log_level='warning')"
        )
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        self.process = subprocess.Popen([sys.executable, "-c", code], env=env)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url + "/api/info", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("the server did not answer within 60 s")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory: pytest.TempPathFactory, sample_embeddings: str) -> str:
    """An index of the sample with its image bytes kept for display (Flat: 316 vectors)."""
    import dask

    from dask_clip.index import build

    folder = tmp_path_factory.mktemp("sample-index") / "index"
    with dask.config.set(scheduler="threads"):
        build(sample_embeddings, folder, image_column="jpg")
    return str(folder)
