"""The per-process model cache: each worker process loads a spec's model once, on first use.

Tasks carry only a :class:`~dask_clip.spec.ModelSpec`; the model itself never enters the
task graph. A Dask worker is one process here (``LocalCluster``, ``LocalCUDACluster`` and
``dask worker`` all start one process per worker), so a module-level cache is a per-worker
cache, and the same code serves plain Python without Dask.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError
from .model_dirs import OPEN_CLIP, TRANSFORMERS, check_no_remote_code, detect_model_dir, find_weights
from .preprocess import PreprocessConfig
from .runtime import caches
from .runtime.node_lock import node_lock
from .spec import ModelSpec

__all__ = [
    "LoadedModel",
    "apply_torch_threads",
    "clear_cache",
    "get_head",
    "get_model",
    "gpu_share",
    "load_counts",
    "resolve_device",
    "set_torch_threads",
    "to_low_precision",
]

logger = logging.getLogger(__name__)

_CACHE: dict[ModelSpec, LoadedModel] = {}
_LOCK = threading.Lock()
_LOAD_COUNTS: collections.Counter[ModelSpec] = collections.Counter()
# Per GPU: how many tasks may run on it at once in this process, and the semaphore enforcing it.
_GPU_SLOTS: dict[tuple[str, int], threading.BoundedSemaphore] = {}
RANDOM_WEIGHTS_SEED = 0
_TORCH_THREADS: int | None = None


@dataclass
class LoadedModel:
    """A loaded, eval-mode CLIP model (both towers) and what running it needs.

    Attributes
    ----------
    model : torch.nn.Module
        The open_clip model, or a transformers one behind the same two methods
        (:class:`~dask_clip.hf.TransformersCLIP`): ``encode_image`` takes float (N, 3, H, W),
        ``encode_text`` the tokenizer's output.
    preprocess : PreprocessConfig
        Its eval preprocessing.
    device : torch.device
    autocast_dtype : torch.dtype or None
        Autocast dtype (``"fp16"``/``"bf16"`` precision); None runs without autocast.
    embed_dim : int
        Width D of the (N, D) embeddings.
    input_dtype : torch.dtype
        The dtype of the model's input: float32, or the weights' dtype for ``"pure_*"``
        precisions and ``"auto"`` on CUDA (weights held in bf16/fp16, LayerNorms computing in
        float32: :func:`to_low_precision`).
    batch_size_cap : int or None
        The largest batch that fitted in memory after an out-of-memory back-off; None until
        one happens, and again once :data:`CAP_PROBE_BATCHES` batches in a row fitted under it
        (an out-of-memory caused by another task's burst does not shrink every later batch).
    batches_under_cap : int
        Batches run since the cap was last lowered or raised.
    spec : ModelSpec or None
        What was loaded (the text tower's tokenizer is chosen from it).
    kind : str
        ``"open_clip"``, or ``"transformers"`` for a :class:`~dask_clip.hf.TransformersCLIP`.
    tokenizer : Tokenizer or None
        The text tower's tokenizer, loaded on first use beside the model
        (:func:`dask_clip.text.get_tokenizer`).
    """

    model: Any  # an open_clip CLIP or a TransformersCLIP (torch.nn.Module with encode_image / encode_text)
    preprocess: PreprocessConfig
    device: torch.device
    autocast_dtype: torch.dtype | None
    embed_dim: int
    input_dtype: torch.dtype = torch.float32
    batch_size_cap: int | None = None
    batches_under_cap: int = 0
    spec: ModelSpec | None = None
    kind: str = OPEN_CLIP
    tokenizer: Any = None


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → ``cuda:0`` (the worker's own GPU under dask-cuda) when CUDA works, else CPU.

    A CUDA device always gets its index (``"cuda"`` → ``cuda:<current>``): torchvision keeps one
    nvJPEG decoder per device string and rebuilds it, leaking the old one, when it changes.
    """
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return resolved


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision: only ``"fp16"``/``"bf16"`` run under autocast."""
    if precision in ("fp16", "bf16"):
        return {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    return None


def weights_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype the weights are held in: fp16/bf16 for ``"pure_fp16"``/``"pure_bf16"``, and fp16
    for ``"auto"`` on CUDA; float32 otherwise.

    Why fp16 by default: same tensor-core speed as bf16 on Hopper, and 8 times finer rounding —
    parity to open_clip's fp32 reference 0.0017 against 0.013 for bf16 (autocast or weights
    alike; ViT-B-32, measured on CPU, benchmarks/README.md). Rows whose fp16 embedding overflows
    are recomputed under bf16 autocast (:func:`dask_clip.pipeline.embed_rows`).
    """
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"pure_bf16": torch.bfloat16, "pure_fp16": torch.float16}.get(precision, torch.float32)


def to_low_precision(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Hold ``model``'s weights in ``dtype`` (fp16/bf16), its LayerNorms computing in float32.

    What open_clip's own ``precision="fp16"``/``"bf16"`` builds (``open_clip.factory``
    ``_set_model_device_and_precision``): ``convert_weights_to_lp`` for open_clip's own towers
    (linear, conv and attention weights, the projections; embeddings stay float32 and are cast
    where used), the whole model for timm towers, and every LayerNorm a ``LayerNormFp32`` with
    float32 weights, which computes in float32 and returns its input's dtype. A LayerNorm left
    with float32 weights under half activations fails on CUDA ("expected scalar type Half but
    found Float", pytorch#135969) though CPU kernels accept it: see :mod:`dask_clip.cuda_rules`.
    transformers models are converted whole, their LayerNorms the same way.

    Parameters
    ----------
    model
        An open_clip model or a :class:`~dask_clip.hf.TransformersCLIP`, in float32, eval mode.
    dtype
        ``torch.float16`` or ``torch.bfloat16``.

    Returns
    -------
    torch.nn.Module
        ``model``, converted in place.
    """
    from open_clip.model import CLIP, CustomTextCLIP, convert_weights_to_lp
    from open_clip.transformer import LayerNorm, LayerNormFp32

    native = isinstance(model, (CLIP, CustomTextCLIP)) and not any(
        type(m).__name__ in ("TimmModel", "HFTextEncoder") for m in model.modules()
    )
    if native:
        convert_weights_to_lp(model, dtype=dtype)
    else:  # timm / Hugging Face towers: convert_weights_to_lp only knows open_clip's own modules
        model.to(dtype)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            # exact types: a subclass with its own forward (timm's LayerNorm2d ...) keeps it
            if type(child) in (torch.nn.LayerNorm, LayerNorm, LayerNormFp32):
                weight = child.weight
                norm = LayerNormFp32(
                    child.normalized_shape,
                    eps=child.eps,
                    elementwise_affine=child.elementwise_affine,
                    bias=child.bias is not None,
                    device=weight.device if weight is not None else None,
                    dtype=torch.float32,
                )
                norm.load_state_dict(child.state_dict())  # copies the values into float32
                norm.train(child.training).requires_grad_(False)
                setattr(parent, name, norm)
    return model


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
    from . import config

    folder = config.get("model-cache")
    return str(Path(folder).expanduser()) if folder else None


def _local_dir_checkpoint(folder: Path) -> Path:
    """The weights file open_clip's ``local-dir:`` loader picks in ``folder``."""
    import open_clip.factory

    # open_clip's own choice where it has one, so that the same file loads as with create_model
    pick = getattr(open_clip.factory, "_find_checkpoint_in_dir", None)
    found = pick(folder) if pick is not None else next(iter(find_weights(folder)), None)
    if found is None:
        raise ModelLoadError(f"model_dir {str(folder)!r} holds no weights")
    return Path(found)


def _create_with_weights(name: str, checkpoint: Path, **create_kwargs: Any) -> torch.nn.Module:
    """open_clip model ``name`` with ``checkpoint``'s weights: built on ``meta`` and the weights
    assigned (:mod:`dask_clip.skeleton`), or built in full where that cannot fill every tensor."""
    import open_clip

    from .skeleton import create_assigned

    model = create_assigned(name, checkpoint, **create_kwargs)
    if model is not None:
        return model
    if name.startswith("local-dir:"):
        return open_clip.create_model(name, weights_only=True, **create_kwargs)
    return open_clip.create_model(name, pretrained=str(checkpoint), weights_only=True, **create_kwargs)


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

    if any(isinstance(try_to_load_from_cache(repo, name), str) for name in _OPEN_CLIP_FILES[1:]):
        return  # cached weights: open_clip loads them (huggingface_hub falls back to the cache)
    reason = _hub_unreachable()
    if reason is not None:
        raise ModelLoadError(
            f"could not load {what}: it is not in the local Hugging Face cache and {reason}. Fetch it on a "
            f"machine with network access (`huggingface-cli download {repo} --local-dir DIR`), copy DIR here "
            "and pass model_dir=DIR (CLI: --model-dir DIR)"
        )


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


def _create(spec: ModelSpec) -> tuple[torch.nn.Module, str]:
    """The model of ``spec`` on the CPU, and its kind (``"open_clip"`` or ``"transformers"``)."""
    from .open_clip_import import folder_needs, import_open_clip

    if spec.model_dir is not None:
        try:  # again on the worker: the folder decides how to load it
            found = detect_model_dir(spec.model_dir)
        except (OSError, ValueError) as err:  # e.g. the weights vanished after the client's check
            raise ModelLoadError(str(err)) from err
        folder = found.folder.resolve()
        if found.kind == TRANSFORMERS:
            from .hf import load_transformers_clip

            refuse_remote_code()
            try:
                return load_transformers_clip(folder), TRANSFORMERS
            except ModelLoadError:
                raise
            except Exception as err:  # a truncated model.safetensors, a config of another model
                raise _unreadable(f"model_dir {str(folder)!r}", err) from err
        if not find_weights(folder):  # open_clip would silently go on with random weights
            raise ModelLoadError(f"model_dir {str(folder)!r} holds no weights")
        needs = folder_needs(folder)
        import_open_clip(needs)  # transformers and timm only for towers made of them
        if "transformers" in needs:  # an hf_model_name text tower: open_clip calls transformers itself
            refuse_remote_code()
        try:
            return _create_with_weights(f"local-dir:{folder}", _local_dir_checkpoint(folder)), OPEN_CLIP
        except Exception as err:  # SafetensorError, a state-dict size mismatch, an unpickling error
            raise _unreadable(f"model_dir {str(folder)!r}", err) from err
    open_clip = import_open_clip()
    refuse_remote_code()  # any architecture may follow, an hf_model_name text tower among them
    if spec.hub_id is not None:
        _check_hub_reachable(spec.hub_id, repr(spec.model))
        check_hub_config(spec.hub_id)
        try:
            return open_clip.create_model(spec.model, weights_only=True, cache_dir=_cache_dir()), OPEN_CLIP
        except Exception as err:  # open_clip and huggingface_hub raise many kinds for a failed download
            raise ModelLoadError(
                f"could not load {spec.model!r}: {err}. Without network access, fetch the folder on a "
                f"machine that has it (`huggingface-cli download {spec.hub_id} --local-dir DIR`), copy DIR "
                "here and pass model_dir=DIR (CLI: --model-dir DIR)."
            ) from err
    if spec.pretrained is None:
        # Seeded, so every worker process builds the same random model.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            return open_clip.create_model(spec.model, pretrained=None), OPEN_CLIP
    checkpoint = Path(spec.pretrained).expanduser()
    if checkpoint.is_file():  # a file: nothing to download, so no hub hint on failure
        try:
            return _create_with_weights(spec.model, checkpoint), OPEN_CLIP
        except Exception as err:
            raise _unreadable(f"checkpoint {spec.pretrained!r} for {spec.model!r}", err) from err
    from open_clip.pretrained import download_pretrained

    tag_cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained)
    if tag_cfg.get("hf_hub"):
        _check_hub_reachable(tag_cfg["hf_hub"].strip("/"), f"pretrained={spec.pretrained!r} for {spec.model!r}")
    try:
        # One process per node downloads, the others wait and find the file in the cache:
        # open_clip writes URL downloads straight to their final path (runtime/node_lock.py).
        with node_lock(f"{spec.model}/{spec.pretrained}", _cache_dir()):
            download_pretrained(tag_cfg, cache_dir=_cache_dir())
        # OpenAI's weights were trained with QuickGELU; open_clip only warns on a mismatch.
        model = open_clip.create_model(
            spec.model,
            pretrained=spec.pretrained,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            weights_only=True,
            cache_dir=_cache_dir(),
        )
    except Exception as err:  # open_clip raises RuntimeError for any download failure
        repo = (tag_cfg.get("hf_hub") or "laion/CLIP-ViT-L-14-laion2B-s32B-b82K").rstrip("/")
        raise ModelLoadError(
            f"could not load pretrained={spec.pretrained!r} for {spec.model!r}: {err}. "
            "Without network access, fetch the weights on a machine that has it "
            f"(`huggingface-cli download {repo} --local-dir DIR`), copy DIR here and pass "
            "model_dir=DIR (CLI: --model-dir DIR)."
        ) from err
    return model, OPEN_CLIP


def _declared_embed_dim(model: Any, kind: str) -> int | None:
    """The embedding width D the model's config declares, or None where it declares none."""
    if kind == TRANSFORMERS:
        dim = getattr(getattr(getattr(model, "clip", None), "config", None), "projection_dim", None)
    else:
        dim = getattr(getattr(model, "visual", None), "output_dim", None)
    return int(dim) if isinstance(dim, int) else None


def _load(spec: ModelSpec) -> LoadedModel:
    device = resolve_device(spec.device)
    created, kind = _create(spec)
    model: Any = created.eval().requires_grad_(False).to(device)
    dtype = weights_dtype(spec.precision, device)
    if dtype != torch.float32:
        to_low_precision(model, dtype)
    preprocess = model.preprocess_config if kind == TRANSFORMERS else PreprocessConfig.from_model(model)
    embed_dim = _declared_embed_dim(model, kind)
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


def get_head(spec: ModelSpec, head: Any) -> Any:
    """The process's loaded ``head`` for ``spec``: :func:`dask_clip.heads.cache.get_head` (kept here
    for code that imports it from this module; the head cache lives with the heads)."""
    from .heads.cache import get_head as cached_head

    return cached_head(spec, head)


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
