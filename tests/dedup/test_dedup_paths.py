"""`dedup E E` (issue 21, item 7): an output that is, or lies inside, the input is refused before a
cluster starts. Before, the check ran in the writer, after the whole dedup (18 s of 25 s at 120k
rows). The scheduler address given here has nothing listening: a run that got as far as
connecting would fail on that instead, with another message."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dask_clip.cli import main
from dask_clip.dedup.parquet import check_dedup_paths
from dask_clip.testing import embedding_array


@pytest.fixture
def embeddings(tmp_path) -> str:
    folder = tmp_path / "E"
    folder.mkdir()
    x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pd.DataFrame({"embedding": embedding_array(x, np.ones(len(x), bool))}).to_parquet(folder / "part-0.parquet")
    return str(folder)


@pytest.mark.parametrize("sub", ["", "out", "../E/"])
def test_dedup_into_its_input_is_refused_before_connecting(embeddings, capsys, sub):
    output = f"{embeddings}/{sub}" if sub else embeddings
    status = main(["dedup", embeddings, output, "--scheduler-address", "tcp://127.0.0.1:9"])
    assert status == 1
    err = capsys.readouterr().err
    how = "lies inside the input" if sub == "out" else "is the input"
    shown = output if sub == "out" else embeddings  # as the writer names it: made absolute and normalised
    assert f"dask-clip dedup: error: output {shown!r} {how}" in err
    assert "write the output to a folder of its own" in err


def test_check_dedup_paths_accepts_a_sibling(embeddings, tmp_path):
    check_dedup_paths(embeddings, str(tmp_path / "dedup-out"))
    check_dedup_paths([embeddings], str(tmp_path / "E-dedup"))  # a shared prefix is not containment
    with pytest.raises(ValueError, match="contains the input"):
        check_dedup_paths(embeddings, str(tmp_path))
