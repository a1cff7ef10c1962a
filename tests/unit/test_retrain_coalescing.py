"""Retrain coalescing (backend.jobqueue) against a real Redis and real RQ jobs, with the one
interleaving a burst of webhooks makes likely: a request arriving the moment a lock is let go.
"""

from __future__ import annotations

from redis import Redis
from redis.lock import Lock
from rq import Queue
from rq.job import Job, JobStatus

from backend import jobqueue
from backend.projects import key

POLICY = jobqueue.JobPolicy(retries=0)


class RequestOnRelease(Lock):
    """A lock that, once armed, lets one more retrain request in right after it is released."""

    armed = False

    def release(self) -> None:
        super().release()
        if RequestOnRelease.armed and self.name == key(1, "retrain:lock"):
            RequestOnRelease.armed = False
            jobqueue.enqueue_retrain(self.redis, 1, POLICY, "ANNOTATION_CREATED")


def _start(r: Redis, job_id: str) -> None:
    """What the worker does when it takes the retrain: RQ marks it started, the job says so."""
    Job.fetch(job_id, connection=r).set_status(JobStatus.STARTED)
    jobqueue.retrain_started(r, 1, job_id, POLICY)


def test_requests_while_queued_coalesce_and_while_running_make_one_follow_up(r):
    first, outcome = jobqueue.enqueue_retrain(r, 1, POLICY, "ANNOTATION_CREATED")
    assert outcome == "enqueued"
    assert jobqueue.enqueue_retrain(r, 1, POLICY, "ANNOTATION_CREATED") == (first, "coalesced")
    Queue(jobqueue.TRAIN, connection=r).remove(first)
    _start(r, first)
    for _ in range(5):
        assert jobqueue.enqueue_retrain(r, 1, POLICY, "ANNOTATION_CREATED") == (first, "follow-up")
    follow = jobqueue.retrain_ended(r, 1, first, POLICY)
    queued = Queue(jobqueue.TRAIN, connection=r).jobs
    assert [j.id for j in queued] == [follow]
    assert queued[0].description == "retrain project 1 (follow-up: ANNOTATION_CREATED)"
    assert jobqueue.retrain_ended(r, 1, follow, POLICY) is None  # nothing asked during it: no more


def test_a_request_at_the_end_of_a_retrain_joins_its_follow_up(r):
    """Seen in CI: a webhook that came between the ended retrain letting go of the lock and its
    follow-up being enqueued found neither a running nor a pending retrain and enqueued one of its
    own (one retrain still, but no longer the follow-up it was)."""
    first, _ = jobqueue.enqueue_retrain(r, 1, POLICY, "ANNOTATION_CREATED")
    Queue(jobqueue.TRAIN, connection=r).remove(first)
    _start(r, first)
    assert jobqueue.enqueue_retrain(r, 1, POLICY, "ANNOTATION_CREATED")[1] == "follow-up"
    racing = Redis(connection_pool=r.connection_pool)
    racing.lock = lambda name, **kwargs: RequestOnRelease(racing, name, **kwargs)
    RequestOnRelease.armed = True
    try:
        follow = jobqueue.retrain_ended(racing, 1, first, POLICY)
    finally:
        RequestOnRelease.armed = False
    queued = Queue(jobqueue.TRAIN, connection=r).jobs
    assert [j.id for j in queued] == [follow]
    assert "follow-up" in queued[0].description, queued[0].description


def test_a_request_between_rq_starting_a_retrain_and_the_job_saying_so_is_its_follow_up(r):
    """A forking worker marks the job started, then forks and imports before the job function
    runs: a request in that window is for the running retrain, not a new one beside it."""
    first, _ = jobqueue.enqueue_retrain(r, 1, POLICY, "ANNOTATION_CREATED")
    Queue(jobqueue.TRAIN, connection=r).remove(first)
    Job.fetch(first, connection=r).set_status(JobStatus.STARTED)
    assert jobqueue.enqueue_retrain(r, 1, POLICY, "ANNOTATION_CREATED") == (first, "follow-up")
    assert Queue(jobqueue.TRAIN, connection=r).count == 0
    assert jobqueue.retrain_under_way(r, 1)
    jobqueue.retrain_started(r, 1, first, POLICY)
    follow = jobqueue.retrain_ended(r, 1, first, POLICY)
    assert [j.id for j in Queue(jobqueue.TRAIN, connection=r).jobs] == [follow]
    assert jobqueue.retrain_under_way(r, 1)  # the follow-up waits
