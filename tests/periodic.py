"""A step repeated in a background thread while a ``with`` block runs: samplers and test workers."""

from __future__ import annotations

import threading
from typing import Callable


class Periodic:
    """Call ``step()`` every ``interval`` seconds in a daemon thread, from ``__enter__`` to ``__exit__``."""

    def __init__(self, step: Callable[[], object], interval: float) -> None:
        self.step, self.interval = step, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.step()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)
