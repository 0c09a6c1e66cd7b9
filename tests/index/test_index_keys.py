"""The auto rule: which index for how many rows, what dimension and what memory budget."""

from __future__ import annotations

import numpy as np
import pytest

from dask_clip.index.keys import (
    FLAT_MAX_FLOATS,
    choose_index_key,
    default_nprobe,
    describe_key,
    estimate_index_bytes,
    parse_memory,
)
from dask_clip.index.train import train_index


def test_small_sets_get_exact_search():
    assert choose_index_key(319, 512).index_key == "Flat"
    assert choose_index_key(FLAT_MAX_FLOATS // 512, 512).index_key == "Flat"
    assert choose_index_key(FLAT_MAX_FLOATS // 512 + 1, 512).index_key.startswith("IVF")
    choice = choose_index_key(0, 768)
    assert (choice.index_key, choice.nprobe, choice.train_rows) == ("Flat", None, 0)


def test_one_million_vectors_within_four_gigabytes():
    choice = choose_index_key(1_000_000, 512, "4GB")
    assert choice.index_key == "IVF4096,Flat"  # 4 * sqrt(1e6) = 4000 -> 4096 lists, full vectors fit
    assert choice.nprobe == default_nprobe(4096) == 64
    assert choice.train_rows == 50 * 4096
    assert not choice.on_disk
    assert 2.0e9 < choice.estimated_bytes < 4e9


def test_codes_shrink_with_the_budget_and_lists_go_to_disk_last():
    assert choose_index_key(1_000_000, 512, "1.5GB").index_key == "IVF4096,SQ8"
    assert choose_index_key(1_000_000, 512, "200MB").index_key == "IVF4096,PQ128"
    assert choose_index_key(1_000_000, 512, "40MB").index_key == "IVF4096,PQ16"
    tiny = choose_index_key(1_000_000, 512, "10MB")
    assert tiny.index_key == "IVF4096,PQ8" and tiny.on_disk
    assert tiny.train_rows == 204_800


def test_many_lists_get_an_hnsw_coarse_quantiser():
    choice = choose_index_key(100_000_000, 768, "64GB")
    assert choice.index_key == "IVF32768_HNSW32,PQ128"  # 4 * sqrt(1e8) = 40,000 -> 32,768 lists
    assert choice.nprobe == 256


def test_pq_sizes_divide_the_dimension():
    for dim in (384, 512, 640, 768, 1024):
        key = choose_index_key(50_000_000, dim, "2GB").index_key
        m = int(key.split(",PQ")[1])
        assert dim % m == 0


def test_estimate_is_close_to_the_real_index(tmp_path):
    import faiss

    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for key in ("Flat", "IVF64,Flat", "IVF64,SQ8", "IVF64,PQ16"):
        # The trained index's size does not depend on how many rows trained it; PQ16's 16
        # codebooks train 8x faster on 4k rows than on 10k (faiss would like 9,984: a warning).
        index = train_index(key, x[:4_000])
        index.add_with_ids(x, np.arange(len(x), dtype=np.int64))
        real = len(faiss.serialize_index(index))
        assert 0.8 < estimate_index_bytes(key, len(x), 64) / real < 1.25, key


def test_given_keys_are_checked():
    assert describe_key("IVF16,Flat", 1000, 32, 10**9).nprobe == 8
    assert describe_key("IVF16,Flat", 1000, 32, 1000).on_disk  # larger than the budget
    with pytest.raises(ValueError, match="PQ code size"):
        describe_key("IVF16,PQ7", 1000, 32, 10**9)
    with pytest.raises(ValueError, match="more lists"):
        describe_key("IVF4096,Flat", 1000, 32, 10**9)
    with pytest.raises(ValueError, match="'auto', 'Flat'"):
        describe_key("HNSW32", 1000, 32, 10**9)
    with pytest.raises(ValueError, match="on-disk"):
        describe_key("Flat", 1000, 32, 10**9, on_disk=True)


def test_memory_sizes():
    assert parse_memory("4GB") == 4_000_000_000
    assert parse_memory("512MiB") == 512 * 2**20
    assert parse_memory(1000) == 1000
    for bad in ("lots", 0, "-1GB"):
        with pytest.raises(ValueError, match="max_memory"):
            parse_memory(bad)


@pytest.mark.slow  # a fresh interpreter: what it imports is what is tested
def test_importing_the_package_loads_no_faiss_torch_or_web_framework():
    import subprocess
    import sys

    code = (
        "import sys, dask_clip.index as i; from dask_clip.index import load, build, serve, SearchIndex; "
        "print(sorted(m for m in ('faiss', 'torch', 'starlette', 'uvicorn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
