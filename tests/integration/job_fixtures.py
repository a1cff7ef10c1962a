"""Job functions for the queue tests, enqueued by dotted name like the real ones."""

from __future__ import annotations

from workers.context import WorkerContext, current_job, takes_context

ORDER = "test:order"


@takes_context
def record(context: WorkerContext, name: str) -> str:
    """Append ``name`` to the Redis list ORDER: the order in which jobs ran."""
    current_job().connection.rpush(ORDER, name)
    return name
