"""Progress on a long job: a rate-and-ETA line (``ProgressLine``) and the default log sink (``log``)."""
from __future__ import annotations

import sys
import time
from typing import Optional


class ProgressLine:
    """``label: done/total unit  rate unit/s  ETA``: rewritten in place on a terminal, one line per
    ~10 % (and at least every ``min_seconds``) when the output is a log file."""

    def __init__(self, label: str, total: Optional[int] = None, unit: str = "rows", stream=None,
                 min_seconds: float = 30.0):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = self._last = time.time()
        self._next_frac = 0.1
        self.min_seconds = min_seconds

    def update(self, done: int) -> None:
        now = time.time()
        rate = done / max(now - self.start, 1e-9)
        frac = done / self.total if self.total else 0.0
        if not self.tty and frac < self._next_frac and now - self._last < self.min_seconds:
            return
        self._next_frac = frac + 0.1
        self._last = now
        of = f"/{self.total:,}" if self.total else ""
        eta = f"  ETA {(self.total - done) / max(rate, 1e-9):,.0f}s" if self.total else ""
        line = f"{self.label}: {done:,}{of} {self.unit}  {rate:,.0f} {self.unit}/s{eta}"
        print(f"\r{line}" if self.tty else line, end="" if self.tty else "\n", file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.stream)


def log(message: str) -> None:
    """Default log sink: one line to stdout, flushed (progress must show up in log files as it happens)."""
    print(message, flush=True)
