"""A per-thread on/off switch, turned on for the length of a ``with`` block."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class ThreadSwitch:
    """Off unless this thread is inside :meth:`on`; nested blocks restore the previous state."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __bool__(self) -> bool:
        return getattr(self._local, "on", False)

    @contextmanager
    def on(self) -> Iterator[None]:
        before = bool(self)
        self._local.on = True
        try:
            yield
        finally:
            self._local.on = before
