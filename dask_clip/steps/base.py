"""The Step protocol and :func:`apply`: a job's middle, Reader → **Steps** → Writer.

A step is a frozen, picklable value (it travels in the task graph, like a
:class:`~dask_clip.models.spec.ModelSpec`) that declares the columns it reads and writes; :func:`apply`
checks the whole chain on the client — inputs present, no output written twice or over an
input, each step's own ``validate`` — builds the output ``meta`` once, and runs every step of a
partition in one task, timing each.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .. import backends

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = ["IMAGE", "Step", "apply", "run_steps", "step_name"]

#: The kind of an image input column: encoded bytes, paths/URLs or pixel arrays (:mod:`dask_clip.image.sources`).
IMAGE = "image"
TASK_NAME = "dask_clip_steps"


@runtime_checkable
class Step(Protocol):
    """One transformation of a partition that adds columns.

    Optional hooks :func:`apply` uses when a step has them: ``name`` (for messages and timings;
    default: the class name), ``output_meta(meta)`` (when the step also changes or drops input
    columns; default: ``meta`` plus one empty column per output) and ``bind(ddf)`` (a step that
    must look at the input before running, e.g. to tell what an untyped image column holds).
    """

    def inputs(self) -> list[tuple[str, str]]:
        """The columns it reads, as (name, kind) (kinds: :mod:`dask_clip.columns`, or :data:`IMAGE`)."""
        ...

    def outputs(self) -> list[tuple[str, str]]:
        """The columns it adds, as (name, kind)."""
        ...

    def validate(self, meta: Any) -> None:
        """Check the configuration against the input's empty frame; raise ``ValueError``/``TypeError``."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """What defines its output (for resumable writers), not how fast it runs."""
        ...

    def __call__(self, partition: Any) -> Any:
        """The partition (pandas or cuDF) with the output columns added, same rows and index."""
        ...


def step_name(step: Any) -> str:
    """A step's name: its ``name`` attribute, else its class name."""
    return str(getattr(step, "name", None) or type(step).__name__)


def _output_meta(step: Any, meta: Any) -> Any:
    hook = getattr(step, "output_meta", None)
    if hook is not None:
        return hook(meta)
    out = meta.copy()
    for name, kind in step.outputs():
        out[name] = backends.empty_column(meta, kind)
    return out


def apply(ddf: dd.DataFrame, steps: Sequence[Any], *, token: str = TASK_NAME) -> dd.DataFrame:
    """Run ``steps`` on every partition of ``ddf``, in one task per partition, lazily.

    Parameters
    ----------
    ddf
        The input frame (pandas or cuDF partitions).
    steps
        :class:`Step` values, run in order; each sees the columns of those before it.
    token
        The task name prefix.

    Returns
    -------
    dask.dataframe.DataFrame
        ``ddf``'s rows, index and columns plus every step's outputs, with its ``meta`` built
        here from the steps' declarations.

    Raises
    ------
    ValueError
        A step's own ``validate`` refuses the configuration or the columns, or the step reads a
        column that is not there or writes one that already is (an input column or an earlier
        step's output).
    """
    if not steps:
        raise ValueError("apply needs at least one step")
    meta = ddf._meta
    bound = []
    for given in steps:
        bind = getattr(given, "bind", None)
        step = bind(ddf) if bind is not None else given
        step.validate(meta)  # first: a step's own messages are the most specific
        name, columns = step_name(step), list(meta.columns)
        missing = [column for column, _ in step.inputs() if column not in columns]
        if missing:
            raise ValueError(f"step {name!r} reads {missing}, which the frame does not have; its columns: {columns}")
        outputs = [column for column, _ in step.outputs()]
        clashes = sorted({c for c in outputs if c in columns or outputs.count(c) > 1})
        if clashes:
            raise ValueError(
                f"step {name!r} writes {clashes}, which already exist (an input column or an earlier step's "
                "output); give its outputs other names"
            )
        meta = _output_meta(step, meta)
        bound.append(step)
    return ddf.map_partitions(run_steps, tuple(bound), meta=meta, token=token)


def run_steps(partition: Any, steps: Sequence[Any]) -> Any:
    """Run ``steps`` on one partition, in order (eager; no Dask needed).

    Each step's wall time is reported to Dask's fine performance metrics as
    ``("dask_clip", name)`` in seconds (the dashboard's "Fine Performance Metrics"; a no-op
    outside a worker unless a ``context_meter`` callback listens).
    """
    from distributed.metrics import context_meter

    for step in steps:
        started = time.perf_counter()
        partition = step(partition)
        context_meter.digest_metric(("dask_clip", step_name(step)), time.perf_counter() - started, "seconds")
    return partition
