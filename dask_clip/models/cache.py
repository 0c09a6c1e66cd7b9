"""The per-process model cache: each worker process loads a spec's model once, on first use.

Tasks carry only a :class:`~dask_clip.models.spec.ModelSpec`; the model itself never enters the
task graph. A Dask worker is one process here (``LocalCluster``, ``LocalCUDACluster`` and
``dask worker`` all start one process per worker), so a module-level cache is a per-worker
cache, and the same code serves plain Python without Dask. What to build comes from the
spec's family (:mod:`dask_clip.models.families`); this module moves it to its device and
precision, and keeps it. The cache is emptied with the worker's other caches
(:func:`dask_clip.runtime.caches.clear_all`, the preload plugin's teardown).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import ModelLoadError
from ..runtime import caches
from .families import ModelDir, ModelFamily, detect_model_dir, get_family
from .families.base import OPEN_CLIP
from .loaded import LoadedModel, _autocast_dtype, resolve_device, to_low_precision, weights_dtype
from .spec import ModelSpec

__all__ = [
    "apply_torch_threads",
    "clear_cache",
    "get_model",
    "gpu_share",
    "load_counts",
    "set_torch_threads",
]

logger = logging.getLogger(__name__)

_CACHE: dict[ModelSpec, LoadedModel] = {}

_LOCK = threading.Lock()

_LOAD_COUNTS: collections.Counter[ModelSpec] = collections.Counter()

# Per GPU: how many tasks may run on it at once in this process, and the semaphore enforcing it.
_GPU_SLOTS: dict[tuple[str, int], threading.BoundedSemaphore] = {}

_TORCH_THREADS: int | None = None


def family_of(spec: ModelSpec) -> tuple[ModelFamily, ModelDir | None]:
    """The family that loads ``spec``, and its detected folder (None without a ``model_dir``:
    architectures, tags, checkpoint files and ``hf-hub:`` repositories are open_clip's)."""
    if spec.model_dir is None:
        return get_family(OPEN_CLIP), None
    found = detect_model_dir(spec.model_dir)
    return get_family(found.kind), found


def _create(spec: ModelSpec) -> tuple[torch.nn.Module, str]:
    """The model of ``spec`` on the CPU, and its family's name (``"open_clip"``, ``"transformers"``)."""
    try:  # again on the worker: the folder decides how to load it
        family, found = family_of(spec)
    except (OSError, ValueError) as err:  # e.g. the weights vanished after the client's check
        raise ModelLoadError(str(err)) from err
    return family.create(spec, found), family.name


def _load(spec: ModelSpec) -> LoadedModel:
    device = resolve_device(spec.device)
    created, kind = _create(spec)
    family = get_family(kind)
    model: Any = created.eval().requires_grad_(False).to(device)
    dtype = weights_dtype(spec.precision, device)
    if dtype != torch.float32:
        to_low_precision(model, dtype)
    preprocess = family.preprocess(model)
    embed_dim = family.model_embed_dim(model)
    if embed_dim is None:  # one image through the tower (seconds for ViT-L/14 on a CPU)
        with torch.inference_mode():
            probe = torch.zeros((1, 3, *preprocess.size), device=device, dtype=dtype)
            embed_dim = int(model.encode_image(probe).shape[-1])
    if spec.random_weights:
        logger.warning("dask_clip: %s has seeded RANDOM weights (pretrained=None)", spec.model)
    return LoadedModel(
        model, preprocess, device, _autocast_dtype(spec.precision, device), embed_dim, dtype, spec=spec, kind=kind
    )


def get_model(spec: ModelSpec) -> LoadedModel:
    """The process's model for ``spec``, loaded on first use (thread-safe, loads once).

    Parameters
    ----------
    spec
        What to load.

    Returns
    -------
    LoadedModel

    Raises
    ------
    ModelLoadError
        The weights could not be found, read or downloaded.
    """
    loaded = _CACHE.get(spec)
    if loaded is None:
        with _LOCK:  # double-checked: several task threads may ask at once
            loaded = _CACHE.get(spec)
            if loaded is None:
                loaded = _load(spec)
                _CACHE[spec] = loaded
                _LOAD_COUNTS[spec] += 1
    return loaded


@contextlib.contextmanager
def gpu_share(device: torch.device, share: float) -> Iterator[None]:
    """Hold one of ``round(1 / share)`` slots of ``device`` while the block runs (NeMo Curator's
    ``num_gpus_per_worker``): at most that many tasks of this process use the GPU at once,
    however many task threads the worker has. A no-op on CPU devices.
    """
    if device.type != "cuda":
        yield
        return
    slots = max(1, round(1 / share))
    key = (str(device), slots)
    semaphore = _GPU_SLOTS.get(key)
    if semaphore is None:
        with _LOCK:
            semaphore = _GPU_SLOTS.setdefault(key, threading.BoundedSemaphore(slots))
    with semaphore:
        yield


def set_torch_threads(threads: int) -> None:
    """Use ``threads`` torch CPU threads in this process, including in Dask's task threads.

    Called by the worker setup (plugin or ``--preload``). torch's OpenMP thread count is a
    per-thread setting, and Dask's executor threads do not inherit the value set on the
    worker's main thread, so :func:`apply_torch_threads` re-applies it inside each task.
    """
    global _TORCH_THREADS
    _TORCH_THREADS = int(threads)
    torch.set_num_threads(_TORCH_THREADS)


def apply_torch_threads() -> None:
    """Apply the configured thread count to the calling thread (no-op when none is set)."""
    if _TORCH_THREADS is not None:
        torch.set_num_threads(_TORCH_THREADS)


def load_counts() -> dict[ModelSpec, int]:
    """How many times this process has loaded each spec (for tests and diagnostics)."""
    return dict(_LOAD_COUNTS)


def _clear_models() -> None:
    with _LOCK:
        _CACHE.clear()


caches.register("models", _clear_models)


def clear_cache() -> None:
    """Drop this process's models and everything cached with them — heads, zero-shot classes,
    decode threads (:func:`dask_clip.runtime.caches.clear_all`); they are loaded again on next use."""
    caches.clear_all()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
