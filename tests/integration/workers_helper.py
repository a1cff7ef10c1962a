"""Real RQ workers for tests: in-process (so the fake LS client is visible to jobs)."""

from __future__ import annotations

from collections import Counter

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


def ls_calls_of_a_retrain(r, context, ls, project_id: int = 1) -> Counter:
    """Enqueue a retrain of the project, drain the queues, and count the fake LS's calls meanwhile
    (by method: what the retrain and the jobs after it read and wrote)."""
    before = Counter(ls.calls)
    jobqueue.enqueue_retrain(r, project_id, context.policy, "test")
    drain(r, context)
    return Counter({k: v - before[k] for k, v in ls.calls.items()})


class BackgroundWorker(Periodic):
    """A worker thread that keeps draining the queues until stopped."""

    def __init__(self, r, context) -> None:
        super().__init__(lambda: drain(r, context), interval=0.02)
