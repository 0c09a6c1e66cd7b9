"""The blocked within-cluster step against a dense NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dask_clip.dedup.pairwise import max_similarity_to_earlier


def dense_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full (n, n) similarity matrix; max over the strictly earlier rows, first argmax on ties."""
    s = x.astype(np.float64) @ x.astype(np.float64).T
    n = len(x)
    best = np.full(n, np.nan)
    arg = np.full(n, -1)
    for i in range(1, n):
        arg[i] = int(np.argmax(s[i, :i]))
        best[i] = s[i, arg[i]]
    return best, arg


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("block_size", [1, 7, 64, 1024])
def test_blocked_matches_dense(block_size: int) -> None:
    rng = np.random.default_rng(1)
    x = unit(rng, 300, 32)
    x[50] = x[10] + 0.01 * x[3]  # a near duplicate
    x[50] /= np.linalg.norm(x[50])
    ref_best, ref_arg = dense_reference(x)
    best, arg = max_similarity_to_earlier(torch.from_numpy(x), block_size=block_size)
    assert best.dtype == torch.float32 and arg.dtype == torch.int64
    np.testing.assert_allclose(best.numpy()[1:], ref_best[1:], atol=1e-5)
    assert np.isnan(best[0].item()) and arg[0].item() == -1
    # argmax agrees wherever the maximum is clear (no near-ties within float32 noise)
    s = x.astype(np.float64) @ x.astype(np.float64).T
    gaps = np.array([np.sort(s[i, :i])[-1] - np.sort(s[i, :i])[-2] for i in range(2, len(x))])
    clear = np.concatenate([[True, True], gaps > 1e-5])
    assert (arg.numpy()[clear] == ref_arg[clear]).all()
    assert arg[50].item() == 10


def test_ties_go_to_the_earliest_row_across_blocks() -> None:
    rng = np.random.default_rng(2)
    x = unit(rng, 40, 16)
    x[[5, 17, 33, 39]] = x[5]  # identical rows in different blocks of 8
    best, arg = max_similarity_to_earlier(torch.from_numpy(x), block_size=8)
    assert arg[17].item() == 5 and arg[33].item() == 5 and arg[39].item() == 5
    assert best[39].item() == pytest.approx(1.0, abs=1e-6)


def test_memory_is_one_tile() -> None:
    """A 2,000-row cluster in 64-row tiles: the answer equals one big tile's."""
    rng = np.random.default_rng(3)
    x = torch.from_numpy(unit(rng, 2000, 16))
    small = max_similarity_to_earlier(x, block_size=64)
    big = max_similarity_to_earlier(x, block_size=4096)
    torch.testing.assert_close(small[0][1:], big[0][1:], atol=1e-5, rtol=0)


def test_edge_sizes() -> None:
    best, arg = max_similarity_to_earlier(torch.empty((0, 4)), block_size=4)
    assert best.shape == (0,) and arg.shape == (0,)
    best, arg = max_similarity_to_earlier(torch.ones((1, 4)) / 2, block_size=4)
    assert np.isnan(best[0].item()) and arg[0].item() == -1
    with pytest.raises(ValueError, match="block_size"):
        max_similarity_to_earlier(torch.ones((2, 4)), block_size=0)
