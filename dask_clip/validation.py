"""Choices, defaults and range checks shared by the library and the CLI.

Every knob that takes one of a few values has its choices here, once; the CLI builds its
``choices=`` and defaults from these constants, so the two never drift apart. The checks raise
``ValueError``/``TypeError`` naming the valid choices, on the client, before a graph is built.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

__all__ = [
    "CLUSTER_KINDS",
    "DECODE_DEVICES",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_NUM_GPUS_PER_WORKER",
    "DEVICES",
    "KEEP_RULES",
    "ON_ERROR",
    "PRECISIONS",
    "SCHEDULES",
    "SHUFFLE_METHODS",
    "check_choice",
    "check_device",
    "check_eps",
    "check_gpu_share",
    "check_int",
    "check_memory",
    "check_timeout",
    "with_settings",
]

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "pure_fp16", "pure_bf16")
DEVICES = ("auto", "cpu", "cuda")
ON_ERROR = ("null", "raise")
DECODE_DEVICES = ("auto", "cpu")
CLUSTER_KINDS = ("auto", "cpu", "cuda")
KEEP_RULES = ("hard", "easy", "random")
SHUFFLE_METHODS = ("p2p", "tasks", "disk")
SCHEDULES = ("auto", "overlap", "serial")
# NeMo Curator's ImageEmbeddingStage defaults.
DEFAULT_BATCH_SIZE = 32
DEFAULT_NUM_GPUS_PER_WORKER = 0.25


def check_choice(name: str, value: object, choices: Collection[object]) -> None:
    """ValueError unless ``value`` is one of ``choices`` (the message lists them)."""
    if value not in choices:
        raise ValueError(f"{name}={value!r}; choose one of {tuple(choices)}")


def check_device(value: str) -> None:
    """A torch device name dask_clip accepts: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not isinstance(value, str) or (value not in DEVICES and not _is_cuda_index(value)):
        raise ValueError(f"device={value!r}; choose one of {DEVICES} or 'cuda:N'")


def _is_cuda_index(value: str) -> bool:
    prefix, _, index = value.partition(":")
    return prefix == "cuda" and index.isdigit()


def check_int(name: str, value: object, minimum: int, *, allow_none: bool = False) -> None:
    """TypeError unless ``value`` is an int (not a bool); ValueError if below ``minimum``."""
    if value is None and allow_none:
        return
    what = {0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {what}, not {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {what}, got {value}")


def check_timeout(name: str, value: object) -> None:
    """A positive number of seconds, or None (no limit)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number of seconds or None, not {type(value).__name__}")
    if not float(value) > 0:
        raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")


def check_gpu_share(value: object, name: str = "num_gpus_per_worker") -> float:
    """A GPU share of one task, in (0, 1]; returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in (0, 1], not {type(value).__name__}")
    share = float(value)
    if not 0 < share <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return share


def check_eps(eps: object) -> float:
    """A dedup threshold: a real number in [0, 1] (duplicate when cosine >= 1 - eps)."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float in [0, 1], not {type(eps).__name__}")
    if not 0.0 <= float(eps) <= 1.0:
        raise ValueError(f"eps must be in [0, 1] (a pair is a duplicate when cosine >= 1 - eps), not {eps}")
    return float(eps)


def check_memory(name: str, value: object, minimum: int = 2**20) -> int | None:
    """A memory budget: None, an int of bytes, or a string such as ``"4GiB"`` / ``"500MB"``.

    Returns the number of bytes (None stays None); ValueError below ``minimum`` or unparsable.
    """
    if value is None:
        return None
    if isinstance(value, str):
        from dask.utils import parse_bytes

        try:
            value = parse_bytes(value)
        except ValueError as err:
            raise ValueError(f"{name}={value!r} is not a size; write bytes or e.g. '4GiB', '500MB'") from err
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a number of bytes or a string such as '4GiB', not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum} bytes, not {value}")
    return int(value)


_Settings = TypeVar("_Settings")


def with_settings(cls: type[_Settings], base: Any, given: Mapping[str, Any], *, what: str, name: str) -> _Settings:
    """A settings dataclass ``cls``: ``base`` (None: the defaults) with the keyword arguments
    ``given`` on top; what functions taking a config object or its fields as keywords share.

    Raises
    ------
    TypeError
        ``base`` is not a ``cls``, or ``given`` names a field ``cls`` does not have (the message,
        "unexpected {what} [...]", lists them).
    """
    if base is not None and not isinstance(base, cls):
        raise TypeError(f"{name} must be a {cls.__name__}, not {type(base).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise TypeError(f"unexpected {what} {unknown}; the settings are {names}")
    return dataclasses.replace(base if base is not None else cls(), **given)  # type: ignore[type-var]
