"""Progress of a long run over many items (the images of a folder, the frames of a video).

On an interactive terminal a tqdm bar shows the count, the rate (items/s) and the ETA; elsewhere
(a log file, CI) a bar would fill the log with carriage returns, so the same figures are printed
as one line every ``every`` seconds instead. Updates may come from any thread (a video's writer
thread counts the frames it has encoded).
"""
from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``: an ETA or an elapsed time at a glance."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    """``update(n)`` after each finished item; ``write(line)`` prints a line without breaking the bar."""

    def __init__(self, total: int | None, unit: str, desc: str = "", every: float = 10.0,
                 file: TextIO | None = None) -> None:
        self.total, self.unit, self.desc, self.every = total, unit, desc, every
        self.file = file if file is not None else sys.stderr
        self.n = 0
        self.t0 = self.last = time.perf_counter()
        self._lock = threading.Lock()
        self.bar = None
        if self.file.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit=unit, desc=desc or None, file=self.file, leave=False,
                                dynamic_ncols=True, smoothing=0.1)
            except ImportError:  # pragma: no cover - tqdm is a requirement
                self.bar = None

    @property
    def rate(self) -> float:
        """Items per second since the start."""
        return self.n / max(time.perf_counter() - self.t0, 1e-9)

    def line(self) -> str:
        """``12/480 frames, 3.10 frames/s, ETA 2 min 31 s``."""
        of = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and self.n and self.n < self.total:
            eta = f", ETA {duration((self.total - self.n) / self.rate)}"
        return f"{self.desc + ': ' if self.desc else ''}{self.n}{of} {self.unit}s, {self.rate:.2f} {self.unit}s/s{eta}"

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            if self.bar is not None:
                self.bar.update(n)
                return
            now = time.perf_counter()
            if now - self.last >= self.every:
                self.last = now
                print(self.line(), file=self.file, flush=True)

    def write(self, text: str, file: TextIO | None = None) -> None:
        with self._lock:
            out = file if file is not None else sys.stdout
            if self.bar is not None:
                self.bar.write(text, file=out)
            else:
                print(text, file=out, flush=True)

    def close(self) -> None:
        with self._lock:
            if self.bar is not None:
                self.bar.close()
                self.bar = None
