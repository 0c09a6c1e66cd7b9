"""A driver-side progress bar over partitions and images: rate and ETA.

``dask.diagnostics.ProgressBar`` only hooks the local schedulers; with a distributed client the
driver sees progress as futures complete (:func:`dask_clip.writer.write_parquet` feeds this
bar from ``distributed.as_completed``). Uses tqdm when installed, else plain text lines.
"""

from __future__ import annotations

import sys
import time
from typing import IO

__all__ = ["Progress"]


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


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
    min_interval
        Seconds between plain-text lines.
    """

    def __init__(
        self, total: int, desc: str = "", unit: str = "images", file: IO[str] | None = None, min_interval: float = 1.0
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.file = file if file is not None else sys.stderr
        self.done = self.rows = 0
        self.started = time.perf_counter()
        self._last_line = 0.0
        self._min_interval = min_interval
        try:
            from tqdm import tqdm  # plain bar: tqdm.auto needs ipywidgets in notebooks
        except ImportError:  # plain text below; tqdm only looks nicer
            self._bar = None
        else:
            self._bar = tqdm(total=total, desc=desc, unit="part", file=self.file, dynamic_ncols=True, smoothing=0.1)

    def update(self, rows: int) -> None:
        """One more partition of ``rows`` rows is finished."""
        self.done += 1
        self.rows += int(rows)
        rate = self.rows / max(time.perf_counter() - self.started, 1e-9)
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.rows} {self.unit}, {rate:.1f} {self.unit}/s", refresh=False)
            self._bar.update(1)
            return
        now = time.perf_counter()
        if now - self._last_line >= self._min_interval or self.done == self.total:
            self._last_line = now
            elapsed = now - self.started
            eta = elapsed / self.done * (self.total - self.done)
            print(
                f"{self.desc}: {self.done}/{self.total} partitions, {self.rows} {self.unit}, "
                f"{rate:.1f} {self.unit}/s, elapsed {_clock(elapsed)}, ETA {_clock(eta)}",
                file=self.file,
                flush=True,
            )

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
