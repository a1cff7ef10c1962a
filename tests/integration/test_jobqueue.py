"""The queue glue with real RQ workers: dependencies, and the context every job is handed."""

from __future__ import annotations

import pytest
from rq import SimpleWorker
from rq.job import Job

from backend import jobqueue
from tests.integration import job_fixtures
from tests.integration.workers_helper import drain
from workers.context import WorkerContext
from workers.worker import ContextJob

RECORD = "tests.integration.job_fixtures.record"
POLICY = jobqueue.JobPolicy(retries=0)


@pytest.fixture
def context(settings):
    return WorkerContext.from_settings(settings)


def test_a_job_that_depends_on_another_runs_after_it(r, context):
    first = jobqueue.enqueue(r, jobqueue.SCORE, RECORD, "first", policy=POLICY, description="first")
    # On the queue the worker reads first: without the dependency it would run before `first`.
    second = jobqueue.enqueue(r, jobqueue.TRAIN, RECORD, "second", policy=POLICY, description="second",
                              depends_on=first)
    assert second.get_status() == "deferred"
    drain(r, context)
    assert [x.decode() for x in r.lrange(job_fixtures.ORDER, 0, -1)] == ["first", "second"]
    assert second.get_status() == "finished" and second.return_value() == "second"


def test_a_job_waits_for_every_job_it_depends_on(r, context):
    shards = [jobqueue.enqueue(r, jobqueue.SCORE, RECORD, f"shard {i}", policy=POLICY, description="shard")
              for i in range(3)]
    gather = jobqueue.enqueue(r, jobqueue.TRAIN, RECORD, "gather", policy=POLICY, description="gather",
                              depends_on=shards)
    drain(r, context)
    assert r.lrange(job_fixtures.ORDER, -1, -1) == [b"gather"]
    assert gather.get_status() == "finished"


@pytest.mark.parametrize("job_class, message", [
    (None, "takes a WorkerContext first"),  # a plain rq worker calls record("x")
    (ContextJob, "has no WorkerContext"),  # our job class on a worker that has no context
])
def test_a_job_fails_clearly_on_a_worker_without_context(r, job_class, message):
    job = jobqueue.enqueue(r, jobqueue.SCORE, RECORD, "x", policy=POLICY, description="no context")
    SimpleWorker([jobqueue.SCORE], connection=r, job_class=job_class).work(burst=True, logging_level="WARNING")
    job = Job.fetch(job.id, connection=r)
    assert job.get_status() == "failed"
    assert message in job.latest_result().exc_string
    assert r.llen(job_fixtures.ORDER) == 0
