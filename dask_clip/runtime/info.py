"""``dask-clip info``: versions, devices, and which GPU libraries are usable here.

Run in its own process (the CLI): asking cuDF or CuPy whether they work creates CUDA contexts,
which a process that will start a ``LocalCUDACluster`` must not do.
"""

from __future__ import annotations

import importlib
import platform
import sys
from importlib import metadata
from typing import Any

__all__ = ["environment_info", "format_config", "format_info"]

PACKAGES = (
    "dask-clip",
    "torch",
    "torchvision",
    "open_clip_torch",
    "dask",
    "distributed",
    "pandas",
    "pyarrow",
    "numpy",
    "pillow",
    "fsspec",
    "faiss-cpu",
    "tqdm",
)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _probe(module: str, check: Any = None) -> dict[str, Any]:
    """Import ``module`` (and run ``check`` on it); report its version or why it is unusable."""
    try:
        mod = importlib.import_module(module)
        detail = check(mod) if check is not None else None
    except Exception as err:  # reported, not raised: this is a diagnostic
        return {"usable": False, "error": f"{type(err).__name__}: {err}".strip()[:300]}
    out: dict[str, Any] = {"usable": True, "version": getattr(mod, "__version__", None)}
    if detail is not None:
        out["detail"] = detail
    return out


def _cupy_devices(cupy: Any) -> int:
    return int(cupy.cuda.runtime.getDeviceCount())


def _cudf_check(cudf: Any) -> str:
    return str(cudf.Series([1, 2, 3]).sum())  # a real GPU round trip


def environment_info() -> dict[str, Any]:
    """Versions, CPU and GPU devices, and whether dask-cuda, CuPy, cuDF and RMM work.

    Returns
    -------
    dict
        JSON-able: ``python``, ``platform``, ``packages`` (name → version or None), ``cpu``
        (cores usable, torch threads), ``cuda`` (torch's view: available, version, devices),
        ``gpu_libraries`` (dask_cuda, cupy, cudf, rmm → usable, version or error), ``config``
        (the effective ``dask_clip.*`` settings of ``dask.config``, dotted keys).
    """
    import torch

    from .. import config
    from ..worker_setup import cpu_count

    cuda: dict[str, Any] = {"available": bool(torch.cuda.is_available()), "torch_cuda_version": torch.version.cuda}
    if cuda["available"]:
        cuda["devices"] = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            cuda["devices"].append(
                {
                    "index": i,
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "compute_capability": f"{props.major}.{props.minor}",
                    "bf16": bool(torch.cuda.is_bf16_supported()),
                }
            )
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "cpu": {"cores_usable": cpu_count(), "torch_threads": torch.get_num_threads()},
        "cuda": cuda,
        "gpu_libraries": {
            "dask_cuda": _probe("dask_cuda"),
            "cupy": _probe("cupy", _cupy_devices),
            "cudf": _probe("cudf", _cudf_check),
            "rmm": _probe("rmm"),
        },
        "config": config.effective(),
    }


def format_info(info: dict[str, Any]) -> str:
    """The report as aligned text."""
    lines = [f"python      {info['python']} ({info['platform']})", "packages"]
    for name, version in info["packages"].items():
        lines.append(f"  {name:<16}{version or '-'}")
    cpu = info["cpu"]
    lines.append(f"cpu         {cpu['cores_usable']} cores usable, torch threads {cpu['torch_threads']}")
    cuda = info["cuda"]
    if cuda["available"]:
        lines.append(f"cuda        torch CUDA {cuda['torch_cuda_version']}, {len(cuda['devices'])} GPU(s)")
        lines.extend(
            f"  cuda:{d['index']}  {d['name']}, {d['memory_gib']} GiB, compute {d['compute_capability']}, "
            f"bf16 {'yes' if d['bf16'] else 'no'}"
            for d in cuda["devices"]
        )
    else:
        lines.append(f"cuda        not available (torch built with CUDA {cuda['torch_cuda_version'] or 'none'})")
    lines.append("gpu libraries")
    for name, probe in info["gpu_libraries"].items():
        state = f"usable {probe.get('version') or ''}".rstrip() if probe["usable"] else f"not usable ({probe['error']})"
        lines.append(f"  {name:<16}{state}")
    lines.append(format_config(info["config"]))
    return "\n".join(lines)


def format_config(settings: dict[str, Any]) -> str:
    """The effective ``dask_clip.*`` settings as aligned text (``dask-clip info --config``)."""
    lines = ["config      dask.config dask_clip.* (YAML, DASK_CLIP__* variables, dask.config.set)"]
    lines.extend(f"  {key:<26}{value!r}" for key, value in settings.items())
    return "\n".join(lines)
