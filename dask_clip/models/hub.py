"""Where weights come from, and what to say when they cannot be had: the download cache, the
Hugging Face hub's reachability, configs that ask for remote code, weights that do not load.

Shared by the model families (:mod:`dask_clip.models.families`); no torch import.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelLoadError
from .families.base import check_no_remote_code

__all__ = ["check_hub_config", "check_hub_model_available", "refuse_remote_code"]


def _unreadable(what: str, err: Exception) -> ModelLoadError:
    """A weights file that exists but does not load: say which, and why, in one line."""
    detail = " ".join(str(err).split())
    if len(detail) > 400:
        detail = detail[:400] + " ..."
    kind = type(err).__name__
    if "Weights only load failed" in detail:
        # torch's own text goes on to suggest weights_only=False, i.e. running the pickle.
        return ModelLoadError(
            f"refused the weights of {what}: the file holds Python objects other than tensors (a pickle "
            "that could run code when loaded), and dask_clip loads tensors only — use a .safetensors file "
            "or a state dict of tensors"
        )
    if "size mismatch" in detail or "Missing key" in detail or "Unexpected key" in detail:
        hint = (
            "the weights do not fit the architecture: "
            "check the model name (open_clip_config.json, config.json or --model)"
        )
    else:
        hint = "the file is corrupt or truncated, or not weights of this model: fetch it again"
    return ModelLoadError(f"could not load the weights of {what}: {kind}: {detail} — {hint}")


def _cache_dir() -> str | None:
    """Where downloads go: ``dask_clip.model-cache`` of this worker's dask.config, else the hub's cache."""
    from .. import config

    folder = config.get("model-cache")
    return str(Path(folder).expanduser()) if folder else None


def refuse_remote_code() -> None:
    """Make transformers refuse a model's own Python code wherever dask_clip does not say so.

    dask_clip passes ``trust_remote_code=False`` where it calls transformers, but open_clip calls
    ``AutoConfig``/``AutoTokenizer`` itself (an ``hf_model_name`` text tower) without it; then
    transformers asks on a terminal, for 15 s, whether to run the code. With its timeout at 0
    (the setting transformers' own CI uses) it refuses at once instead.
    """
    try:
        from transformers import dynamic_module_utils
    except ImportError:  # without transformers, nothing can import a model's code
        return
    dynamic_module_utils.TIME_OUT_REMOTE_CODE = 0


_HUB_PROBE_S = 3.0

_OPEN_CLIP_FILES = ("open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached, found in at most ~3 s; None when it can.

    huggingface_hub retries with 10 s timeouts, so a load without network took 60-109 s to
    fail; ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) makes the answer immediate.
    """
    import socket
    import threading
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    outcome: list[str | None] = []

    def probe() -> None:  # in a thread: a DNS lookup ignores socket timeouts
        try:
            socket.create_connection((host, port), timeout=_HUB_PROBE_S).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(f"{constants.ENDPOINT} cannot be reached ({type(err).__name__}: {err})")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(_HUB_PROBE_S + 1)
    return outcome[0] if outcome else f"{constants.ENDPOINT} did not answer within {_HUB_PROBE_S:.0f} s"


def _check_hub_reachable(repo: str, what: str) -> None:
    """Fail at once when ``repo``'s open_clip files are not in the hub cache and the hub cannot
    be reached (instead of after huggingface_hub's minute of retries)."""
    from huggingface_hub import try_to_load_from_cache

    cache = _cache_dir()
    if any(isinstance(try_to_load_from_cache(repo, name, cache_dir=cache), str) for name in _OPEN_CLIP_FILES[1:]):
        return  # cached weights: open_clip loads them (huggingface_hub falls back to the cache)
    reason = _hub_unreachable()
    if reason is not None:
        raise ModelLoadError(
            f"could not load {what}: it is not in the local Hugging Face cache and {reason}. Fetch it on a "
            f"machine with network access (`huggingface-cli download {repo} --local-dir DIR`), copy DIR here "
            "and pass model_dir=DIR (CLI: --model-dir DIR)"
        )


def check_hub_model_available(spec: object) -> None:
    """For an ``hf-hub:`` model (``spec.hub_id``): raise :class:`~dask_clip.errors.ModelLoadError`
    now when its weights are neither in the local hub cache nor downloadable (offline, or the hub
    unreachable). For a caller on the workers' machine (a local cluster's client): it then fails
    in a second instead of after starting a cluster whose workers fail the same way. A no-op for
    other models. No torch import.
    """
    repo = getattr(spec, "hub_id", None)
    if repo is not None:
        _check_hub_reachable(repo, repr(getattr(spec, "model", repo)))


def check_hub_config(hub_id: str) -> None:
    """Refuse an ``hf-hub:`` open_clip config that asks for remote code (it is in the hub cache
    once the model is loaded; fetched here otherwise, as open_clip itself would)."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(hub_id, "open_clip_config.json")
    except Exception:  # offline, or no such file: open_clip's own load says what went wrong
        return
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return
    try:
        check_no_remote_code(config, f"hf-hub:{hub_id} open_clip_config.json")
    except ValueError as err:
        raise ModelLoadError(str(err)) from None
