"""Hostile or repeated webhooks against the real engine and a real RQ worker (issue 13).

The same ANNOTATION_CREATED delivered 5 times (two at once, one during the retrain it
triggered, two after the new version went live) with RETRAIN_EVERY=1 must retrain and
re-score once; a webhook for a project never set up must leave the worker nothing to do.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
from rq import Queue
from rq.job import Job
from rq.registry import FinishedJobRegistry, StartedJobRegistry

from backend import jobqueue, projects
from tests.integration.workers_helper import BackgroundWorker, drain

STAMP = "2026-11-22T10:00:00.123456Z"


@pytest.fixture
def settings(settings):  # noqa: F811
    """Every annotation change asks for a retrain (RETRAIN_EVERY=1)."""
    return dataclasses.replace(settings, retrain_every=1)


def _finished(r, name: str) -> int:
    count = 0
    for queue in jobqueue.QUEUES:
        ids = FinishedJobRegistry(queue, connection=r).get_job_ids()
        count += sum(1 for j in Job.fetch_many(ids, connection=r) if j and j.func_name.endswith("." + name))
    return count


def _idle(r) -> bool:
    return all(Queue(q, connection=r).count == 0 and StartedJobRegistry(q, connection=r).count == 0
               for q in jobqueue.QUEUES)


def _wait(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.faults
def test_one_annotation_delivered_five_times_retrains_and_rescores_once(web, ls, r, context):
    assert web.post("/setup", json={"project": "1.17", "schema": ls.label_config}).status_code == 200
    drain(r, context)  # first contact: trains on the 8 annotations and publishes
    live, retrains, rescores = ls.model_version, _finished(r, "retrain"), _finished(r, "rescore")
    assert live and retrains == 1

    task = next(i for i in sorted(ls.tasks) if i not in ls.annotations)
    ls.annotations[task] = "pos"
    payload = {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "task": {"id": task, "project": 1},
               "annotation": {"id": 501, "task": task, "project": 1, "created_at": STAMP, "updated_at": STAMP}}

    def deliver():
        assert web.post("/webhook", json=payload).status_code == 200

    pair = [threading.Thread(target=deliver) for _ in range(2)]  # two at once
    for thread in pair:
        thread.start()
    for thread in pair:
        thread.join(30)
    ls.block_annotated = threading.Event()
    with BackgroundWorker(r, context):
        calls = ls.calls["annotated_tasks"]
        _wait(lambda: ls.calls["annotated_tasks"] > calls, 30, "the retrain to start")
        deliver()  # one during the retrain it triggered
        ls.block_annotated.set()
        _wait(lambda: ls.model_version != live and _idle(r), 60, "the new version to go live")
        deliver()  # two after the new version went live
        deliver()
        time.sleep(0.5)
        _wait(lambda: _idle(r), 60, "the queues to drain")
    assert _finished(r, "retrain") == retrains + 1
    assert _finished(r, "rescore") == rescores + 1
    assert int(r.get(projects.key(1, "changes")) or 0) == 0
    assert "al_duplicate_changes_total 4" in web.get("/metrics").get_data(as_text=True)


@pytest.mark.faults
def test_a_webhook_for_an_unknown_project_gives_the_worker_nothing_to_do(web, ls, r, context):
    response = web.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 987654}})
    assert response.status_code == 403
    drain(r, context)
    assert _finished(r, "retrain") == _finished(r, "prepare_project") == 0
    assert projects.known_projects(r) == []
    assert ls.calls == {}  # nothing reached Label Studio
