"""Run one callable from several threads released at the same instant (for race tests)."""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

T = TypeVar("T")


def at_once(call: Callable[[], T], times: int, timeout: float = 60.0) -> list[T]:
    """Call ``call`` from ``times`` threads that start together behind a barrier; their results."""
    barrier, results, lock = threading.Barrier(times), [], threading.Lock()

    def run() -> None:
        barrier.wait()
        result = call()
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run) for _ in range(times)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return results
