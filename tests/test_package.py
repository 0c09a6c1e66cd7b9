"""The package surface: exported names, and no heavy imports or side effects at import."""

from __future__ import annotations

import subprocess
import sys

import dask_clip


def test_all_lists_exactly_the_public_names():
    assert dask_clip.__all__ == sorted(dask_clip.__all__)
    for name in dask_clip.__all__:
        assert getattr(dask_clip, name).__name__ == name


def test_import_loads_neither_torch_nor_a_gpu_library():
    code = (
        "import sys, dask_clip, dask_clip.worker_setup; "
        "print(sorted(m for m in ('torch', 'open_clip', 'cupy', 'cudf') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
