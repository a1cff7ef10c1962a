"""Our RQ workers: each hands its :class:`~workers.context.WorkerContext` to every job it runs.

``python -m workers`` runs a :class:`ReconcilingWorker` with a context built from the settings.
rq's own CLI cannot pass one, so it takes :class:`EnvironmentWorker`, which reads the settings
from the environment: ``rq worker score shard train cleanup --with-scheduler -w workers.worker.EnvironmentWorker``.
The main process imports the engine's modules once (``PRELOAD``), so work-horses start warm, but
never touches CUDA: the engine is built inside the work-horse, on first use.

``python -m workers --in-process`` (or ``-w workers.worker.EnvironmentInProcessWorker``) runs jobs in
the worker's own process instead (:class:`InProcessWorker`): meant for GPU workers, whose CUDA
context, networks and token ids then stay warm from one job to the next.
"""

from __future__ import annotations

import importlib
import logging
import time

import redis
from rq import SimpleWorker, Worker
from rq.job import Job

from backend import jobqueue, metrics
from backend.settings import Settings
from workers.context import WorkerContext

MAINTENANCE_MAX = 600  # rq's default maintenance interval
# rq restarts a dead scheduler process (which moves jobs whose retry is due back to their queue)
# only in its maintenance; the scheduler dies when Redis goes away, so check every 30 s, not 600 s,
# or retries after a Redis outage wait up to ten minutes (tests/faults/test_redis.py).
SCHEDULER_CHECK = 30
REDIS_WAIT = 300  # seconds a worker waits for Redis to come back when it must read a job's status
PRELOAD = ("workers.scoring", "workers.training", "workers.lifecycle", "backend.al.learner",
           "backend.al.kinds.linear", "backend.al.kinds.head", "backend.al.kinds.full",
           "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto",
           "torch._dynamo")
"""Modules a forking worker imports once, before its first fork: every work-horse inherits them
instead of importing torch and transformers again (2.4 s a job on an idle 2-core machine, about
5 s under load; scripts/bench_loop.py's "other" time). ``torch._dynamo``: torch.optim imports it
when a process builds its first optimizer, which was 2.4-3.1 s of every retrain's "train" time in
scripts/bench_loop.py (a 50-label linear fit: 2.5 s in a fresh work-horse, 0.15 s with it
preloaded). Importing them touches no CUDA."""


class ContextJob(Job):
    """A job whose function is called with the worker's context first: ``func(context, *args)``."""

    context: WorkerContext | None = None  # set by ContextWorker.perform_job, in the work-horse

    def get_status(self, refresh: bool = True):
        """The job's status; while Redis is unreachable, wait for it (up to REDIS_WAIT s).

        rq 3.0's worker asks for the status right after a work-horse ends and does not catch a
        connection error there: a Redis outage at that moment would end the worker process.
        Waiting lets it handle the ended job (a retry if the horse failed) once Redis is back.
        """
        deadline, delay = time.monotonic() + REDIS_WAIT, 0.5
        while True:
            try:
                return super().get_status(refresh)
            except redis.exceptions.ConnectionError:
                if time.monotonic() + delay > deadline:
                    raise
                logging.getLogger(__name__).warning("Redis unreachable while reading job %s's status; "
                                                    "retrying in %.1f s", self.id, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _execute(self):
        # rq 3.0 (pinned in requirements.txt) calls ``self.func(*self.args, **self.kwargs)`` here.
        if self.context is None:
            raise RuntimeError(f"job {self.id} ({self.func_name}) has no WorkerContext: "
                               "run it with a worker from workers.worker (`python -m workers`)")
        return self.func(self.context, *self.args, **self.kwargs)


class ContextWorker(Worker):
    """A forking rq worker that gives every job it performs its context.

    The context is built once, in the main process, and reaches each work-horse by the fork;
    what it builds lazily (the engine) is built in the work-horse. Combined with rq's
    ``SimpleWorker`` (``class W(SimpleWorker, ContextWorker)``) it runs jobs in-process.
    """

    def __init__(self, *args, context: WorkerContext, **kwargs) -> None:
        self.context = context
        kwargs["job_class"] = ContextJob  # rq's CLI passes its plain Job class; ours needs this one
        super().__init__(*args, **kwargs)
        if any(name != "cleanup" for name in self.queue_names()):  # a clean-up-only worker needs no engine
            preload()

    def perform_job(self, job, queue, execution) -> bool:
        """Runs in the work-horse (in-process for a SimpleWorker): hand the job our context."""
        job.context = self.context
        return super().perform_job(job, queue, execution)

    def handle_work_horse_killed(self, job, retpid, ret_val, rusage) -> None:
        """In the parent, when the work-horse died mid-job (SIGKILL, OOM killer, a crash): RQ then
        retries or fails the job but runs no failure callback, so count the attempt here."""
        metrics.count_failure(self.connection, job, abandoned="horse_killed")
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)


def preload(modules: tuple[str, ...] = PRELOAD) -> None:
    """Import the job modules and the engine's heavy dependencies now, in the worker's main process."""
    for name in modules:
        importlib.import_module(name)


class ReconcilingWorker(ContextWorker):
    """Runs rq's maintenance and, every RECONCILE_INTERVAL s, enqueues one reconcile job.

    The reconcile is enqueued by whichever worker takes the Redis lock first, so N workers
    still give one reconcile per interval.
    """

    def __init__(self, *args, context: WorkerContext, **kwargs) -> None:
        interval = context.settings.reconcile_interval or MAINTENANCE_MAX
        kwargs.setdefault("maintenance_interval", max(1, min(interval, SCHEDULER_CHECK)))
        super().__init__(*args, context=context, **kwargs)

    @property
    def dequeue_timeout(self) -> int:
        """Wake from the blocking dequeue often enough to run the reconcile timer."""
        return max(1, min(super().dequeue_timeout, self.maintenance_interval))

    def run_maintenance_tasks(self) -> None:
        """rq's registry maintenance, then the reconcile timer."""
        super().run_maintenance_tasks()
        try:
            jobqueue.schedule_reconcile_if_due(self.connection, self.context.settings.reconcile_interval,
                                               self.context.policy)
        except Exception:  # the timer must never kill the worker
            self.log.exception("could not schedule the reconcile job")


class EnvironmentWorker(ReconcilingWorker):
    """For rq's CLI, which cannot pass a context: builds it from ``Settings.from_env()``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, context=WorkerContext.from_settings(Settings.from_env()), **kwargs)


class InProcessWorker(SimpleWorker, ReconcilingWorker):
    """A :class:`ReconcilingWorker` that runs every job in its own process, not in a forked work-horse.

    For GPU workers: a forked work-horse starts CUDA, loads the network onto the device and pays
    the first pass over each batch shape again for every job; in one process these stay warm (on
    an H100, full-mode MC over a 10k pool took 8.45 s the first time in a process, 1.64 s the
    next: docs/BENCHMARKS.md, "The real BaaL, side by side"). The engine's caches (networks, token
    ids, embeddings) grow with the projects a worker serves. The price is isolation: a job that
    kills the process (the OOM killer, a segfault) takes the worker with it; RQ retries the job
    once its heartbeat lapses (its timeout + 60 s) when a worker next cleans the registries, and a
    supervisor (compose's restart policy) brings the worker back. Job timeouts still apply (SIGALRM).
    """


class EnvironmentInProcessWorker(InProcessWorker):
    """:class:`InProcessWorker` for rq's CLI: builds its context from ``Settings.from_env()``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, context=WorkerContext.from_settings(Settings.from_env()), **kwargs)
