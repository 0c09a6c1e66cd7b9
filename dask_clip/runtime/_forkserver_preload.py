"""Imported by the fork server of :mod:`dask_clip.runtime.forkserver`, and only there: imports
what a worker needs (:data:`~dask_clip.runtime.forkserver.WORKER_MODULES`), so that every worker
forked from the server starts with it.

Nothing here may start a thread pool or touch CUDA: the server forks every worker.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys

from .forkserver import WORKER_MODULES


def _pre_spawn_environ() -> None:
    """Set ``distributed.nanny.pre-spawn-environ`` (``OMP_NUM_THREADS=1`` ...) as the nanny does
    before it spawns a worker, before anything imports numpy (distributed does): OpenBLAS and
    OpenMP read it when they load. Variables already set win, as in the nanny."""
    import importlib.util
    from pathlib import Path

    import dask.config
    import yaml

    spec = importlib.util.find_spec("distributed")
    if spec is None or spec.origin is None:
        return
    # distributed adds these defaults when imported; read before that, from the same file
    defaults = yaml.safe_load(Path(spec.origin).with_name("distributed.yaml").read_text(encoding="utf-8"))
    dask.config.update_defaults(defaults)
    environ = dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}
    for key, value in environ.items():
        if value is not None:
            os.environ.setdefault(key, str(value))


def _preload() -> None:
    try:
        _pre_spawn_environ()
    except Exception as err:
        print(f"dask_clip fork server: reading distributed's pre-spawn environment failed: {err!r}", file=sys.stderr)
    for name in WORKER_MODULES:
        try:
            if name != "torchvision":
                importlib.import_module(name)
                continue
            # open_clip (torchvision first, without TorchDynamo), with transformers and timm
            # hidden where the model needs neither (a worker whose model needs them imports them then)
            from ..models.open_clip_import import import_open_clip

            import_open_clip(needs=())
        except Exception as err:  # a worker imports it again and reports the problem there
            print(f"dask_clip fork server: importing {name} failed: {err!r}", file=sys.stderr)
    # What Python's gc docs advise before forking: the workers' collections then never walk the
    # imported modules' objects (nor write to their pages, which stay shared).
    gc.freeze()


_preload()
