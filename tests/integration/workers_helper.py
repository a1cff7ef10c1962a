"""Real RQ workers for tests: in-process (so the fake LS client is visible to jobs)."""

from __future__ import annotations

import threading
import time

from rq import SimpleWorker
from rq.timeouts import TimerDeathPenalty

from backend import jobqueue
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


class BackgroundWorker:
    """A worker thread that keeps draining the queues until stopped."""

    def __init__(self, r, context) -> None:
        self.r, self.context = r, context
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            drain(self.r, self.context)
            time.sleep(0.02)

    def __enter__(self) -> "BackgroundWorker":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(60)
