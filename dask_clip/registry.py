"""Registries found in a package's modules: one module, one record (input formats, output
formats, model families, heads).

A registry looks through its package on first use (never at import: importing the package
scans nothing), keeps every module-level record of the expected type under the expected name,
and orders them by ``(priority, name)``. Modules named ``base`` or starting with ``_`` are skipped,
and those named in ``skip`` (e.g. one that imports torch at module level).
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["ModuleRegistry"]

T = TypeVar("T")


def _priority(record: Any) -> tuple[Any, str]:
    return (getattr(record, "priority", 0), record.name)


class ModuleRegistry(Generic[T]):
    """The ``attr`` records of type ``kind`` in the modules of ``package``.

    Parameters
    ----------
    package
        The package's import name, e.g. ``"dask_clip.io.readers"``.
    attr
        The module-level name each module defines, e.g. ``"FORMAT"``.
    kind
        The record's type; a module whose ``attr`` is something else is not part of the registry.
    order
        Sort key of the records (default: ``(priority, name)``).
    skip
        Modules not to import.
    """

    def __init__(
        self,
        package: str,
        attr: str,
        kind: type[T],
        order: Callable[[T], Any] = _priority,
        skip: tuple[str, ...] = (),
    ) -> None:
        self.package, self.attr, self.kind, self.order = package, attr, kind, order
        self.skip = ("base", *skip)
        self._records: dict[str, T] = {}
        self._lock = threading.Lock()

    def all(self) -> list[T]:
        """Every record, in order (found on first call, then kept)."""
        if not self._records:
            with self._lock:
                if not self._records:
                    path = importlib.import_module(self.package).__path__
                    found = []
                    for info in pkgutil.iter_modules(path):
                        if info.name in self.skip or info.name.startswith("_"):
                            continue
                        record = getattr(importlib.import_module(f"{self.package}.{info.name}"), self.attr, None)
                        if isinstance(record, self.kind):
                            found.append(record)
                    for record in sorted(found, key=self.order):
                        self._records[record.name] = record  # type: ignore[attr-defined]
        return list(self._records.values())

    def names(self) -> list[str]:
        """The records' names, in order."""
        return [record.name for record in self.all()]  # type: ignore[attr-defined]

    def find(self, name: str) -> T | None:
        """The record called ``name``, or None."""
        return {record.name: record for record in self.all()}.get(name)  # type: ignore[attr-defined]
