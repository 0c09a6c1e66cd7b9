"""A driver-side progress bar over partitions and images: rate and ETA (tqdm).

``dask.diagnostics.ProgressBar`` only hooks the local schedulers; with a distributed client the
driver sees progress as futures complete (:func:`dask_clip.io.writers.parquet.write_parquet` feeds this
bar from ``distributed.as_completed``).
"""

from __future__ import annotations

import sys
import time
from typing import IO

from tqdm import tqdm  # the plain bar: tqdm.auto needs ipywidgets in notebooks

__all__ = ["Progress"]


class Progress:
    """Partitions done out of a total, images so far, images/s and the time left.

    Parameters
    ----------
    total
        Partitions to compute in this run.
    desc
        Label.
    unit
        What the rows are (``"images"``).
    file
        Stream (default stderr).
    """

    def __init__(self, total: int, desc: str = "", unit: str = "images", file: IO[str] | None = None) -> None:
        self.unit = unit
        self.rows = 0
        self.started = time.perf_counter()
        self._bar = tqdm(
            total=total,
            desc=desc,
            unit="part",
            file=file if file is not None else sys.stderr,
            dynamic_ncols=True,
            smoothing=0.1,
        )

    def update(self, rows: int) -> None:
        """One more partition of ``rows`` rows is finished."""
        self.rows += int(rows)
        rate = self.rows / max(time.perf_counter() - self.started, 1e-9)
        self._bar.set_postfix_str(f"{self.rows} {self.unit}, {rate:.1f} {self.unit}/s", refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        """Finish the bar."""
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
