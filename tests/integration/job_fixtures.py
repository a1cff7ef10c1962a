"""Job functions for the queue tests, enqueued by dotted name like the real ones."""

from __future__ import annotations

import os
import time

from workers.context import WorkerContext, current_job, takes_context

ORDER = "test:order"


@takes_context
def record(context: WorkerContext, name: str) -> str:
    """Append ``name`` to the Redis list ORDER: the order in which jobs ran."""
    current_job().connection.rpush(ORDER, name)
    return name


@takes_context
def sleep_on_first_attempt(context: WorkerContext, name: str, seconds: float) -> int:
    """A job to kill mid-run: writes its process id to ``test:pid:<name>``, then sleeps, on its
    first attempt only; returns the number of attempts."""
    r = current_job().connection
    attempt = r.incr(f"test:attempts:{name}")
    r.set(f"test:pid:{name}", os.getpid())
    if attempt == 1:
        time.sleep(seconds)
    return attempt
