"""dask_clip's settings in ``dask.config``, under the ``dask_clip`` namespace.

Defaults ship in ``dask_clip/dask_clip.yaml`` and are added to Dask's config on import (what
distributed and dask-cuda do with theirs). A site overrides them the ways Dask users know: a YAML
file in Dask's config folders, ``dask.config.set({"dask_clip.batch-size": 64})``, or environment
variables: ``DASK_CLIP__BATCH_SIZE=64`` (read once, on import; ``__`` nests:
``DASK_CLIP__READ__TIMEOUT=30``) or Dask's own ``DASK_DASK_CLIP__BATCH_SIZE=64``. Explicit
arguments win: the values here only fill in what a caller left out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask.config
import yaml

__all__ = ["ENV_PREFIX", "default", "defaults", "effective", "get"]

ENV_PREFIX = "DASK_CLIP__"
_FILE = Path(__file__).with_name("dask_clip.yaml")

with _FILE.open(encoding="utf-8") as _stream:
    defaults: dict[str, Any] = yaml.safe_load(_stream)


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """``DASK_CLIP__A__B=v`` → ``{"dask_clip": {"a": {"b": v}}}``, values read as Dask reads them."""
    renamed = {"DASK_DASK_CLIP__" + k[len(ENV_PREFIX) :]: v for k, v in environ.items() if k.startswith(ENV_PREFIX)}
    return dask.config.collect_env(renamed) if renamed else {}


dask.config.update_defaults(defaults)
dask.config.update(dask.config.config, _from_env(os.environ), priority="new")


def get(key: str) -> Any:
    """The effective value of ``dask_clip.<key>`` (``"batch-size"``, ``"read.timeout"`` ...)."""
    return dask.config.get(f"dask_clip.{key}")


def default(key: str, convert: Any = None) -> Any:
    """A dataclass ``default_factory`` reading ``dask_clip.<key>`` when the object is made
    (so ``dask.config.set`` in the caller's code applies), passed through ``convert``."""

    def factory() -> Any:
        value = get(key)
        return convert(value) if convert is not None and value is not None else value

    return factory


def effective() -> dict[str, Any]:
    """Every ``dask_clip`` setting with its effective value, flattened to dotted keys."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = value

    walk("", dask.config.get("dask_clip"))
    return out
