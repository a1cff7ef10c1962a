"""Real RQ workers for tests: in-process (so the fake LS client is visible to jobs)."""

from __future__ import annotations

from rq import SimpleWorker
from rq.timeouts import TimerDeathPenalty

from backend import jobqueue
from tests.periodic import Periodic
from workers.worker import ContextWorker


class InProcessWorker(SimpleWorker, ContextWorker):
    """Our worker running jobs in-process, without signal handlers (job timeouts by timer), so it
    can run in a thread."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self):
        pass


def drain(r, context) -> None:
    """Run every queued job (and the jobs they enqueue) to completion, handing them ``context``."""
    InProcessWorker(list(jobqueue.QUEUES), connection=r, context=context).work(
        burst=True, logging_level="WARNING")


class BackgroundWorker(Periodic):
    """A worker thread that keeps draining the queues until stopped."""

    def __init__(self, r, context) -> None:
        super().__init__(lambda: drain(r, context), interval=0.02)
