"""torchvision imported without TorchDynamo (dask_clip.runtime.torchvision_import), and as usual
where a torchvision release needs more of Dynamo than the stand-in has."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cli_support import subprocess_env


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=subprocess_env()
    ).stdout


@pytest.mark.slow  # a fresh interpreter: this one imported torchvision long ago
def test_a_torchvision_that_needs_more_of_dynamo_is_imported_as_usual():
    out = _run(
        "import sys, types\n"
        "import dask_clip.runtime.torchvision_import as tvi\n"
        "stand_ins = tvi._stand_ins\n"
        "def lacking():\n"  # as if roi_align imported a name the stand-in does not have
        "    modules = stand_ins()\n"
        "    del modules['torch._dynamo.utils'].is_compile_supported\n"
        "    return modules\n"
        "tvi._stand_ins = lacking\n"
        "tv = tvi.import_torchvision()\n"
        "import torch, torchvision.ops\n"
        "dynamo = sys.modules['torch._dynamo']\n"
        "print(tv is torchvision, isinstance(dynamo.utils.is_compile_supported, types.FunctionType),\n"
        "      sys.modules['torchvision.ops.roi_align'].is_compile_supported is dynamo.utils.is_compile_supported,\n"
        "      tuple(torchvision.ops.box_area(torch.tensor([[0.0, 0, 2, 3]])).tolist()))\n"
    )
    assert out.split() == ["True", "True", "True", "(6.0,)"], out


@pytest.mark.slow  # a fresh interpreter
def test_disable_stand_in_applies_the_real_disable_on_the_first_call():
    out = _run(
        "import sys\n"
        "from dask_clip.runtime.torchvision_import import import_torchvision\n"
        "import_torchvision()\n"
        "import torch\n"
        "from torchvision import tv_tensors\n"
        "image = tv_tensors.Image(torch.zeros(3, 2, 2))\n"
        "print('dynamo', 'torch._dynamo' in sys.modules)\n"
        "out = tv_tensors.wrap(torch.ones(3, 2, 2), like=image)\n"  # eager: as the real wrap
        "print(type(out).__name__, float(out.sum()), 'dynamo', 'torch._dynamo' in sys.modules)\n"
        "import torch._dynamo\n"
        "print(tv_tensors.wrap.__wrapped__.__name__, torch._dynamo.disable is not None)\n"
    )
    assert out.split() == ["dynamo", "False", "Image", "12.0", "dynamo", "True", "wrap", "True"], out
