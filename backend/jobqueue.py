"""Thin RQ glue: our queues, job options, retrain coalescing and job status.

Named ``jobqueue`` so that it never shadows the standard library's ``queue``. Jobs are
enqueued by dotted name (``"workers.training.retrain"``) so the web process never imports
``workers``; the worker hands each job function its ``WorkerContext`` as first argument.
Job ids are random: a failed job keeps its id in RQ's failed registry for ``failure_ttl``,
so a fixed per-project id would block the next retrain. Coalescing uses our own keys
instead, checked against the live job's status.

Retrain coalescing (per project):
  al:p:<id>:retrain:pending  id of a queued retrain that has not started yet
  al:p:<id>:retrain:running  id of the retrain running now (expires after the job timeout)
  al:p:<id>:retrain:again    set when a retrain was asked for while one was running
A request with a pending retrain is absorbed by it; a request while one runs (and none is
pending; a pending one RQ has started counts as running) marks ``again``; when the running job
ends, ``again`` becomes exactly one follow-up, enqueued under the same lock.

  al:p:<id>:rescore:latest   id of the project's newest rescore (what reconcile checks before
                             publishing a version whose publish ran out of retries); a sharded
                             rescore hands it on to its fan-in, ``publish_ranking``

A pool larger than SHARD_SIZE is re-scored in shards (:func:`enqueue_shards`): ``score_shard``
jobs on the shard queue, which any worker serves, then one ``publish_ranking`` job that RQ
defers until every shard has ended (``allow_failure``: a shard that failed for good still
releases it, and it refuses to publish a partial ranking, so the project never waits on a
deferred job forever).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import datetime

from redis import Redis
from rq import Callback, Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Dependency, Job, JobStatus
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from backend import metrics, projects
from backend.projects import key
from backend.settings import Settings

TRAIN = "train"
SCORE = "score"
SHARD = "shard"
CLEANUP = "cleanup"
# The order a worker serves them in. Scoring first: a trained version is published before the
# next retrain starts, so a steady stream of annotations (each retrain ending with a follow-up
# queued) cannot starve the re-scores and leave LS's priorities stale (measured with one worker:
# 7 retrains and no re-score in 60 s of load, docs/RELIABILITY.md). Clean-up last: deleting a
# superseded version's predictions takes LS 18-40 s and must never delay the loop. Shards of a
# sharded re-score have a queue of their own, so that a machine can serve only them (its workers
# need MODEL_DIR but neither LS nor the task index: README, "Scaling out").
QUEUES = (SCORE, SHARD, TRAIN, CLEANUP)
RECONCILE_LOCK = "al:reconcile:next"
BACKOFF = (10, 60, 300)  # seconds between retries; the last one repeats
_WAITING = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED}
_LOCK_SECONDS = 10
SYNCED = "synced_project"  # a rescore's or fan-in's meta: the LS project record its retrain or re-score read
_RESCORE_JOBS = ("workers.scoring.rescore", "workers.scoring.score_shard", "workers.scoring.publish_ranking")


@dataclass(frozen=True)
class JobPolicy:
    """Timeouts, TTLs and retries for every job we enqueue."""

    timeout: int = 3600  # RQ's default (180 s) is too short for training
    retries: int = 3
    backoff: tuple[int, ...] = BACKOFF
    result_ttl: int = 24 * 3600  # finished jobs stay visible at /jobs/<id> for a day
    failure_ttl: int = 7 * 24 * 3600  # failed jobs stay inspectable for a week (ids are random)
    ttl: int | None = None  # a queued job never expires unseen: it must run

    @classmethod
    def from_settings(cls, settings: Settings) -> "JobPolicy":
        """Policy with the configured timeout and retry count."""
        return cls(timeout=settings.job_timeout, retries=settings.job_retries)

    def retry(self) -> Retry | None:
        """RQ retry with backoff, or None when retries are off."""
        if self.retries <= 0:
            return None
        intervals = [self.backoff[min(i, len(self.backoff) - 1)] for i in range(self.retries)]
        return Retry(max=self.retries, interval=intervals)


def get_queue(r: Redis, name: str) -> Queue:
    """One of our RQ queues on this connection."""
    if name not in QUEUES:
        raise ValueError(f"unknown queue {name!r}")
    return Queue(name, connection=r)


def enqueue(r: Redis, queue: str, func: str, *args, policy: JobPolicy, description: str,
            timeout: int | None = None, at_front: bool = False, project: int | None = None,
            depends_on: Dependency | Job | str | list[Job | str] | None = None, job_id: str | None = None,
            meta: dict | None = None) -> Job:
    """Enqueue a job function by dotted name with our options, count it, and list it under
    ``project`` (for GET /jobs?project=<id>) when it works on one.

    ``depends_on`` (jobs, ids, or an ``rq.Dependency``) defers the job until those finished
    successfully, e.g. one pool-wide job after the shards it gathers. ``job_id`` (default:
    random) lets a caller name a job before it exists, e.g. a fan-in its shards report to.
    """
    job = get_queue(r, queue).enqueue_call(
        func, args=args, timeout=timeout or policy.timeout, result_ttl=policy.result_ttl,
        failure_ttl=policy.failure_ttl, ttl=policy.ttl, retry=policy.retry(),
        description=description, at_front=at_front, depends_on=depends_on, job_id=job_id, meta=meta,
        on_success=Callback(metrics.on_job_success), on_failure=Callback(metrics.on_job_failure),
    )
    metrics.inc(r, "al_jobs_enqueued_total", {"job": func.rsplit(".", 1)[-1]})
    if project is not None:
        projects.record_job(r, project, job.id)
    return job


def fetch_job(r: Redis, job_id: str | None) -> Job | None:
    """The job with this id, or None when there is no id or RQ no longer has the job."""
    if not job_id:
        return None
    try:
        return Job.fetch(job_id, connection=r)
    except NoSuchJobError:
        return None


def rq_status(r: Redis, job_id: str | None) -> JobStatus | None:
    """RQ's status of the job with this id, or None when there is no id or RQ no longer has it."""
    job = fetch_job(r, job_id)
    return job.get_status(refresh=False) if job is not None else None


def enqueue_retrain(r: Redis, project_id: int, policy: JobPolicy, reason: str) -> tuple[str, str]:
    """Ask for a retrain; returns (job id or "", outcome).

    outcome: "enqueued" (a new job), "coalesced" (a queued one will do), or
    "follow-up" (one is running; exactly one more will run after it).
    """
    with _retrain_lock(r, project_id):
        return _enqueue_retrain_locked(r, project_id, policy, reason)


def _retrain_lock(r: Redis, project_id: int):
    return r.lock(key(project_id, "retrain:lock"), timeout=_LOCK_SECONDS, blocking_timeout=_LOCK_SECONDS)


def _enqueue_retrain_locked(r: Redis, project_id: int, policy: JobPolicy, reason: str) -> tuple[str, str]:
    pending = projects.as_text(r.get(key(project_id, "retrain:pending")))
    status = rq_status(r, pending)
    if status in _WAITING:
        return pending, "coalesced"
    # A pending job RQ has started is running, though it has not said so yet (retrain_started).
    running = pending if status == JobStatus.STARTED else projects.as_text(r.get(key(project_id, "retrain:running")))
    if running and rq_status(r, running) == JobStatus.STARTED:
        r.set(key(project_id, "retrain:again"), reason, ex=policy.timeout * 2)
        return running, "follow-up"
    job = enqueue(r, TRAIN, "workers.training.retrain", int(project_id), policy=policy,
                  description=f"retrain project {project_id} ({reason})", project=project_id)
    r.set(key(project_id, "retrain:pending"), job.id, ex=policy.timeout * 4)
    return job.id, "enqueued"


def retrain_started(r: Redis, project_id: int, job_id: str, policy: JobPolicy) -> None:
    """Called by the retrain job when it starts: it is no longer pending, it is running."""
    with _retrain_lock(r, project_id):
        if projects.as_text(r.get(key(project_id, "retrain:pending"))) == job_id:
            r.delete(key(project_id, "retrain:pending"))
        r.set(key(project_id, "retrain:running"), job_id, ex=policy.timeout + 60)


def retrain_ended(r: Redis, project_id: int, job_id: str, policy: JobPolicy) -> str | None:
    """Called by the retrain job when it ends (success or not); enqueues the follow-up if asked.

    All under the one lock: were the follow-up enqueued after the lock was let go, a request
    arriving in between would find neither a running nor a pending retrain and enqueue one of its
    own, which the follow-up would then join (one retrain still, but not the follow-up it is).
    """
    with _retrain_lock(r, project_id):
        if projects.as_text(r.get(key(project_id, "retrain:running"))) == job_id:
            r.delete(key(project_id, "retrain:running"))
        again = projects.as_text(r.getdel(key(project_id, "retrain:again")))
        if again is None:
            return None
        follow_id, _ = _enqueue_retrain_locked(r, project_id, policy, f"follow-up: {again}")
    return follow_id


def enqueue_rescore(r: Redis, project_id: int, version: str | None, policy: JobPolicy,
                    synced: dict | None = None) -> Job:
    """Score the pool with a model version (None: cold start) and publish the priorities.

    Enqueued at the front of the score queue: a new order goes before new-task scoring and
    project preparation. ``synced``: LS's project record as the enqueuing job read it moments ago
    (a retrain's), which the re-score's first attempt uses instead of reading LS again
    (:func:`workers.scoring.rescore`).
    """
    job = enqueue(r, SCORE, "workers.scoring.rescore", int(project_id), version, policy=policy,
                  description=f"rescore project {project_id} with {version or 'cold start'}",
                  at_front=True, project=project_id, meta={SYNCED: synced} if synced is not None else None)
    r.set(key(project_id, "rescore:latest"), job.id, ex=policy.failure_ttl)
    return job


def enqueue_shards(r: Redis, project_id: int, version: str | None, run: str, shards: int,
                   policy: JobPolicy, rescore_id: str, synced: dict | None = None) -> Job:
    """Fan a re-score out: ``shards`` shard jobs on the shard queue, then their fan-in
    ``publish_ranking`` on the score queue, whose job id is ``run`` (the shards' folder and
    progress target). ``synced``: the LS project record the fanning-out re-score read, for the
    fan-in's first attempt (``SYNCED``, as :func:`enqueue_rescore` passes a retrain's).

    The fan-in becomes the project's latest rescore (what reconcile and ``rescore_under_way``
    look at) unless a newer rescore was enqueued meanwhile (``rescore_id``: the fanning-out job).
    """
    what = f"project {project_id} with {version or 'cold start'}"
    jobs = [enqueue(r, SHARD, "workers.scoring.score_shard", int(project_id), version, index, run, policy=policy,
                    description=f"score shard {index + 1}/{shards} of {what}") for index in range(shards)]
    fan_in = enqueue(r, SCORE, "workers.scoring.publish_ranking", int(project_id), version, run, shards,
                     policy=policy, description=f"rank and publish {shards} shards of {what}", project=project_id,
                     job_id=run, depends_on=Dependency(jobs=jobs, allow_failure=True, enqueue_at_front=True),
                     meta={SYNCED: synced} if synced is not None else None)
    with r.lock(key(project_id, "rescore:lock"), timeout=_LOCK_SECONDS, blocking_timeout=_LOCK_SECONDS):
        if projects.as_text(r.get(key(project_id, "rescore:latest"))) == rescore_id:
            r.set(key(project_id, "rescore:latest"), fan_in.id, ex=policy.failure_ttl)
    return fan_in


def enqueue_rescore_once(r: Redis, project_id: int, version: str | None, policy: JobPolicy) -> Job | None:
    """Enqueue a rescore unless one of the project already waits or runs (then None).

    For the jobs that ask on their own (reconcile, first contact): a retrain's new version is
    always enqueued (:func:`enqueue_rescore`), and a stale rescore skips itself.
    """
    with r.lock(key(project_id, "rescore:lock"), timeout=_LOCK_SECONDS, blocking_timeout=_LOCK_SECONDS):
        if rescore_under_way(r, project_id):
            return None
        return enqueue_rescore(r, project_id, version, policy)


def latest_rescore(r: Redis, project_id: int) -> Job | None:
    """The project's newest rescore job, or None when RQ no longer has it."""
    return fetch_job(r, projects.as_text(r.get(key(project_id, "rescore:latest"))))


def rescore_under_way(r: Redis, project_id: int) -> bool:
    """Whether a rescore of the project waits (in a queue, for a retry) or runs now.

    Besides the newest rescore, any running one (or a shard or fan-in of one) counts: an older
    one may still be publishing.
    """
    latest = latest_rescore(r, project_id)
    if latest is not None and latest.get_status(refresh=False) in _WAITING | {JobStatus.STARTED}:
        return True
    ids = [i for queue in (SCORE, SHARD) for i in StartedJobRegistry(queue, connection=r).get_job_ids(cleanup=False)]
    running = Job.fetch_many(ids, connection=r)
    return any(job is not None and job.func_name in _RESCORE_JOBS and job.args[0] == int(project_id)
               for job in running)


def retrain_under_way(r: Redis, project_id: int) -> bool:
    """Whether a retrain of the project waits in the queue or runs now."""
    pending = projects.as_text(r.get(key(project_id, "retrain:pending")))
    running = projects.as_text(r.get(key(project_id, "retrain:running")))
    return rq_status(r, pending) in _WAITING | {JobStatus.STARTED} or rq_status(r, running) == JobStatus.STARTED


def enqueue_score_new(r: Redis, project_id: int, task_ids: list[int], policy: JobPolicy) -> Job:
    """Score just-created tasks with the live model."""
    return enqueue(r, SCORE, "workers.scoring.score_new_tasks", int(project_id), list(task_ids),
                   policy=policy, description=f"score {len(task_ids)} new tasks of project {project_id}",
                   project=project_id)


def enqueue_cleanup(r: Redis, project_id: int, version: str, policy: JobPolicy) -> Job:
    """Delete an old version's predictions from LS, off the critical path."""
    return enqueue(r, CLEANUP, "workers.lifecycle.delete_version", int(project_id), version, policy=policy,
                   description=f"delete predictions of {version} in project {project_id}",
                   project=project_id)


def enqueue_check(r: Redis, project_id: int, version: str, task_ids: list[int], labels: list[str],
                  classes: list[str], policy: JobPolicy) -> Job:
    """Run ``PROPAGATION=auto``'s check on a retrain's labels, for the next retrain, off the loop: on the
    train queue, so it runs after the new version's re-score and before a later retrain."""
    return enqueue(r, TRAIN, "workers.training.check_propagation", int(project_id), version, list(task_ids),
                   list(labels), list(classes), policy=policy, project=project_id,
                   description=f"propagation check of {version} ({len(task_ids)} labels) in project {project_id}")


def enqueue_prepare_propagation(r: Redis, project_id: int, policy: JobPolicy) -> Job:
    """Build the k-NN lists of a project's pool ahead of its first retrain that checks propagation
    (after the cold start, off the loop; train queue)."""
    return enqueue(r, TRAIN, "workers.training.prepare_propagation", int(project_id), policy=policy,
                   project=project_id, description=f"k-NN lists of project {project_id}'s pool for propagation")


def enqueue_reset(r: Redis, project_id: int, policy: JobPolicy) -> Job:
    """Forget the project's model (label config changed) and retrain from scratch."""
    return enqueue(r, TRAIN, "workers.lifecycle.reset_project", int(project_id), policy=policy,
                   description=f"reset project {project_id}", project=project_id)


def enqueue_prepare(r: Redis, project_id: int, policy: JobPolicy) -> Job:
    """First contact: set up sampling and the Data Manager view in LS."""
    return enqueue(r, SCORE, "workers.lifecycle.prepare_project", int(project_id), policy=policy,
                   description=f"prepare project {project_id}", timeout=600, project=project_id)


def enqueue_reconcile(r: Redis, policy: JobPolicy) -> Job:
    """Compare LS's annotation counts with what the models were trained on."""
    return enqueue(r, TRAIN, "workers.lifecycle.reconcile", policy=policy, description="reconcile",
                   timeout=600)


def schedule_reconcile_if_due(r: Redis, interval: int, policy: JobPolicy) -> Job | None:
    """Enqueue a reconcile when none ran in the last ``interval`` s (one across all workers)."""
    if interval <= 0:
        return None
    if not r.set(RECONCILE_LOCK, socket.gethostname(), nx=True, ex=int(interval)):
        return None
    return enqueue_reconcile(r, policy)


def job_status(r: Redis, job_id: str) -> dict | None:
    """Status, progress and error of a job, or None when RQ does not know the id."""
    job = fetch_job(r, job_id)
    return describe(job) if job is not None else None


def project_jobs(r: Redis, project_id: int) -> list[dict]:
    """The project's latest jobs (at most ``projects.JOBS_KEPT``), newest first.

    Ids whose job RQ no longer has (its result or failure TTL passed) are left out.
    """
    ids = projects.recent_jobs(r, project_id)
    return [describe(job) for job in Job.fetch_many(ids, connection=r) if job is not None]


def describe(job: Job) -> dict:
    """Status, progress and error of a fetched job, as /jobs shows it."""
    status = job.get_status(refresh=False)
    error = None
    if status == JobStatus.FAILED:
        result = job.latest_result()
        text = (result.exc_string if result is not None else None) or ""
        lines = [line for line in text.strip().splitlines() if line.strip()]
        error = lines[-1] if lines else "failed"
    return {
        "id": job.id,
        "status": str(status.value if status else "unknown"),
        "function": job.func_name,
        "name": job.func_name.rsplit(".", 1)[-1],
        "description": job.description,
        "progress": job.meta.get("progress"),
        "error": error,
        "enqueued_at": _iso(job.enqueued_at),
        "started_at": _iso(job.started_at),
        "ended_at": _iso(job.ended_at),
        "retries_left": job.retries_left,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def queue_gauges(r: Redis) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Queue depth and registry sizes for /metrics."""
    depth, registries = {}, {}
    for name in QUEUES:
        queue = get_queue(r, name)
        depth[(("queue", name),)] = float(queue.count)
        for reg_name, registry in (("started", StartedJobRegistry), ("failed", FailedJobRegistry),
                                   ("scheduled", ScheduledJobRegistry)):
            count = registry(queue=queue).count
            registries[(("queue", name), ("registry", reg_name))] = float(count)
    return {"al_queue_depth": depth, "al_jobs_in_registry": registries}
