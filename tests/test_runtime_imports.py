"""``dask_clip.testing`` (torch, sample data) stays out of the run-time import path: the CLI's
parser (with every registry's choices), the demo module and a local job's planning import
neither it nor torch."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow  # a fresh interpreter: what it imports is what is tested
def test_the_cli_and_the_demo_import_neither_testing_nor_torch():
    code = (
        "import sys\n"
        "from dask_clip.cli import build_parser\n"
        "import dask_clip.demo, dask_clip.models.random_weights\n"
        "parser = build_parser()\n"
        "parser.parse_args(['embed', 'in', 'out', '--output-format', 'lance', '--aesthetic-model', 'w.pth'])\n"
        "parser.parse_args(['filter', 'in', 'out', '--min-aesthetic', '5', '--keep-label', 'cat'])\n"
        "print('dask_clip.testing' in sys.modules, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_testing_reexports_the_demo_model():
    from dask_clip import testing
    from dask_clip.models import random_weights

    assert testing.write_model_dir is random_weights.write_model_dir
    assert testing.TINY_MODEL_CFG is random_weights.TINY_MODEL_CFG
