"""Our RQ worker: a forking ``rq.Worker`` that also schedules the periodic reconciliation.

Usable from rq's CLI too: ``rq worker train score --with-scheduler -w workers.worker.ReconcilingWorker``.
The main process never touches CUDA; the engine picks the device inside the work-horse.
"""

from __future__ import annotations

from rq import Worker

from backend import queue as jobs_queue
from backend.settings import Settings

MAINTENANCE_MAX = 600  # rq's default maintenance interval


class ReconcilingWorker(Worker):
    """Runs rq's maintenance and, every RECONCILE_INTERVAL s, enqueues one reconcile job.

    The reconcile is enqueued by whichever worker takes the Redis lock first, so N workers
    still give one reconcile per interval.
    """

    settings: Settings | None = None

    def __init__(self, *args, settings: Settings | None = None, **kwargs) -> None:
        self.settings = settings or Settings.from_env()
        interval = self.settings.reconcile_interval
        if interval > 0:
            kwargs.setdefault("maintenance_interval", max(1, min(interval, MAINTENANCE_MAX)))
        super().__init__(*args, **kwargs)

    @property
    def dequeue_timeout(self) -> int:
        """Wake from the blocking dequeue often enough to run the reconcile timer."""
        return max(1, min(super().dequeue_timeout, self.maintenance_interval))

    def run_maintenance_tasks(self) -> None:
        """rq's registry maintenance, then the reconcile timer."""
        super().run_maintenance_tasks()
        try:
            jobs_queue.schedule_reconcile_if_due(
                self.connection, self.settings.reconcile_interval,
                jobs_queue.JobPolicy.from_settings(self.settings))
        except Exception:  # the timer must never kill the worker
            self.log.exception("could not schedule the reconcile job")
