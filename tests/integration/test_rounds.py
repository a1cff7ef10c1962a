"""Webhook -> queue -> real RQ worker -> engine -> (fake) LS, on a real Redis and the real engine."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from backend import jobqueue, projects
from backend.al.store import ModelStore
from backend.labeling import parse_label_config
from backend.labelstudio import LabelStudioError
from tests.integration.workers_helper import BackgroundWorker, drain, ls_calls_of_a_retrain
from workers.context import WorkerContext
from workers.task_index import TaskIndex


def _finished(r, func: str) -> list[Job]:
    found = []
    for name in jobqueue.QUEUES:
        registry = FinishedJobRegistry(name, connection=r)
        jobs = Job.fetch_many(registry.get_job_ids(), connection=r)
        found += [j for j in jobs if j and j.func_name == func]
    return found


def _failed(r, func: str) -> list[Job]:
    registry = FailedJobRegistry("train", connection=r)
    return [j for j in Job.fetch_many(registry.get_job_ids(), connection=r) if j and j.func_name == func]


def _set_up(web, ls) -> None:
    """Connect the project as LS does (/setup, which enqueues prepare_project): webhooks for a
    project never set up are refused."""
    assert web.post("/setup", json={"project": "1.17", "schema": ls.label_config}).status_code == 200


def test_setup_then_start_training_publishes_priorities(web, ls, r, settings, context):
    web.post("/setup", json={"project": "1.17", "schema": ls.label_config})
    drain(r, context)  # prepare -> cold-start rescore
    assert ls.sampling == "Uncertainty sampling" and ls.views == ["Active learning queue"]
    # Annotations exist, so first contact trained a model straight away.
    version = ModelStore(settings.model_dir / "models").current(1)
    assert version is not None and ls.model_version == version
    assert projects.trained_count(r, 1) == 8
    live = ls.live_predictions()
    unlabelled = set(ls.tasks) - set(ls.annotations)
    assert {p["task"] for p in live} == unlabelled and len(live) == len(unlabelled)
    assert all(0.0 <= p["score"] <= 1.0 for p in live)
    assert all(p["result"][0]["value"]["choices"][0] in ("pos", "neg") for p in live)

    for i in list(unlabelled)[:3]:
        ls.annotations[i] = "pos"
    job_id = web.post("/webhook", json={"action": "START_TRAINING", "project": 1}).get_json()["job_id"]
    drain(r, context)
    new_version = ModelStore(settings.model_dir / "models").current(1)
    assert new_version != version and ls.model_version == new_version
    assert projects.published_version(r, 1) == new_version
    # The old version's predictions were removed by a separate job on the score queue.
    assert ls.live_predictions(version) == []
    assert len(ls.live_predictions()) == len(ls.tasks) - len(ls.annotations)
    status = web.get(f"/jobs/{job_id}").get_json()
    assert status["status"] == "finished" and status["progress"]["stage"] == "training"
    metrics = web.get("/metrics").get_data(as_text=True)
    # Two retrains (first contact, START_TRAINING), three rescores (cold start skipped twice or run).
    assert 'al_jobs_finished_total{job="retrain"} 2' in metrics
    assert "al_retrain_seconds_count 2" in metrics
    assert 'al_jobs_finished_total{job="delete_version"} 1' in metrics


def test_cold_start_publishes_a_first_order(web, ls, r, context):
    ls.annotations.clear()
    web.post("/setup", json={"project": "1.17", "schema": ls.label_config})
    drain(r, context)
    assert ls.model_version == projects.cold_start_version(1)
    assert len(ls.live_predictions()) == len(ls.tasks)
    assert all(p["result"] == [] for p in ls.live_predictions())
    tasks = [{"id": 1, "data": {"text": "good"}}]
    response = web.post("/predict", json={"tasks": tasks, "project": "1.1", "label_config": ls.label_config})
    assert response.status_code == 200
    assert response.get_json()["results"][0]["model_version"] == projects.cold_start_version(1)
    # TASKS_CREATED before any model: nothing to score with, nothing imported.
    new_ids = ls.add_tasks(["fresh task"])
    web.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 1}, "tasks": [{"id": new_ids[0]}]})
    drain(r, context)
    assert all(p["task"] != new_ids[0] for p in ls.predictions)


def test_burst_after_which_one_retrain_runs(web, ls, r, context):
    _set_up(web, ls)
    for i in range(100):
        web.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 1},
                                   "task": {"id": i, "project": 1}})
    assert [j.func_name for j in Queue("train", connection=r).jobs] == ["workers.training.retrain"]
    drain(r, context)
    assert len(_finished(r, "workers.training.retrain")) == 1
    assert ls.calls["annotated_tasks"] == 1


def test_burst_during_a_retrain_gives_exactly_one_follow_up(web, ls, r, context):
    _set_up(web, ls)
    import threading
    import time

    ls.block_annotated = threading.Event()
    with BackgroundWorker(r, context):
        start = time.monotonic()
        for i in range(100):
            response = web.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 1},
                                                  "task": {"id": i, "project": 1}})
            assert response.status_code == 200
            if i == 10:  # the first retrain has been triggered: let the worker start it
                deadline = time.monotonic() + 10
                while ls.calls["annotated_tasks"] == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
        assert time.monotonic() - start < 5
        assert ls.calls["annotated_tasks"] == 1  # still inside the first retrain
        ls.block_annotated.set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
                len(_finished(r, "workers.training.retrain")) < 2 or Queue("score", connection=r).count):
            time.sleep(0.05)
    assert len(_finished(r, "workers.training.retrain")) == 2
    assert ls.calls["annotated_tasks"] == 2


def test_failed_retrain_lands_in_failed_registry_and_next_runs(web, ls, r, context):
    _set_up(web, ls)
    ls.fail["get_project"] = LabelStudioError("LS is down (fake)")
    first = web.post("/webhook", json={"action": "START_TRAINING", "project": 1}).get_json()["job_id"]
    drain(r, context)
    assert [j.id for j in _failed(r, "workers.training.retrain")] == [first]
    status = web.get(f"/jobs/{first}").get_json()
    assert status["status"] == "failed" and "LS is down (fake)" in status["error"]
    assert "Traceback" not in status["error"]
    second = web.post("/webhook", json={"action": "START_TRAINING", "project": 1}).get_json()["job_id"]
    assert second != first
    drain(r, context)
    assert web.get(f"/jobs/{second}").get_json()["status"] == "finished"
    assert ls.model_version.startswith("p1-v")
    assert 'al_jobs_failed_total{job="retrain"} 1' in web.get("/metrics").get_data(as_text=True)


def test_retry_with_backoff_reruns_the_same_job(ls, r, context):
    ls.fail["get_project"] = LabelStudioError("transient (fake)")
    policy = jobqueue.JobPolicy(retries=2, backoff=(0,))
    job_id, outcome = jobqueue.enqueue_retrain(r, 1, policy, "test")
    assert outcome == "enqueued"
    drain(r, context)
    job = Job.fetch(job_id, connection=r)
    assert job.get_status() == "finished" and ls.calls["get_project"] >= 2


def test_publish_is_atomic_and_retry_is_idempotent(web, ls, r, context):
    _set_up(web, ls)
    web.post("/webhook", json={"action": "START_TRAINING", "project": 1})
    drain(r, context)
    old = ls.model_version
    old_predictions = [dict(p) for p in ls.live_predictions()]
    assert old and old_predictions

    for i in list(set(ls.tasks) - set(ls.annotations))[:2]:
        ls.annotations[i] = "neg"
    ls.import_fail_after = 3
    web.post("/webhook", json={"action": "START_TRAINING", "project": 1})
    drain(r, context)
    (failed,) = Job.fetch_many(FailedJobRegistry("score", connection=r).get_job_ids(), connection=r)
    assert failed.func_name == "workers.scoring.rescore"
    new = failed.args[1]
    # Nothing switched: LS still samples by the old version, whose predictions are untouched.
    assert ls.model_version == old and projects.published_version(r, 1) == old
    assert ls.live_predictions() == old_predictions
    assert len(ls.live_predictions(new)) == 3  # the partial import, ignored by LS's sampling

    FailedJobRegistry("score", connection=r).requeue(failed.id)
    drain(r, context)
    assert ls.model_version == new and projects.published_version(r, 1) == new
    live = ls.live_predictions()
    assert len(live) == len({p["task"] for p in live}) == len(ls.tasks) - len(ls.annotations)
    assert ls.live_predictions(old) == []


def test_retry_after_a_switch_whose_reply_was_lost(web, ls, r, context):
    _set_up(web, ls)
    ls.switch_then_fail = True
    web.post("/webhook", json={"action": "START_TRAINING", "project": 1})
    drain(r, context)
    (failed,) = Job.fetch_many(FailedJobRegistry("score", connection=r).get_job_ids(), connection=r)
    new = failed.args[1]
    assert ls.model_version == new and projects.published_version(r, 1) != new
    imported = [dict(p) for p in ls.live_predictions(new)]
    deletes = ls.calls["delete_predictions"]
    FailedJobRegistry("score", connection=r).requeue(failed.id)
    drain(r, context)
    assert projects.published_version(r, 1) == new
    assert ls.calls["delete_predictions"] == deletes  # nothing re-imported, nothing deleted
    assert ls.live_predictions(new) == imported


def test_rounds_read_only_new_tasks_and_drop_deleted_ones(web, ls, r, context):
    _set_up(web, ls)
    web.post("/webhook", json={"action": "START_TRAINING", "project": 1})
    drain(r, context)
    assert ls.listed_after[0] == 0
    known_max = max(ls.tasks)
    gone = next(i for i in sorted(ls.tasks) if i not in ls.annotations)
    del ls.tasks[gone]
    (added,) = ls.add_tasks(["brand new good film"])
    ls.listed_after.clear()
    web.post("/webhook", json={"action": "START_TRAINING", "project": 1})
    drain(r, context)
    assert ls.listed_after and min(ls.listed_after) == known_max  # never the whole project again
    tasks = {p["task"] for p in ls.live_predictions()}
    assert gone not in tasks and added in tasks
    assert tasks == set(ls.tasks) - set(ls.annotations)


def test_rounds_without_deletions_never_list_all_task_ids(web, ls, r, context):
    _set_up(web, ls)
    web.post("/webhook", json={"action": "START_TRAINING", "project": 1})
    drain(r, context)
    assert ls.calls["get_project"] >= 1 and ls.calls["count_tasks"] == 0  # the project record carries the count
    assert ls.calls["task_ids"] == 0  # nothing deleted: the cheap count matched
    (added,) = ls.add_tasks(["brand new good film"])
    web.post("/webhook", json={"action": "START_TRAINING", "project": 1})
    drain(r, context)
    assert ls.calls["task_ids"] == 0  # new tasks are listed, not a reason to list every id
    assert added in {p["task"] for p in ls.live_predictions()}
    del ls.tasks[added]
    web.post("/webhook", json={"action": "START_TRAINING", "project": 1})
    drain(r, context)
    assert ls.calls["task_ids"] == 1  # the count dropped: one full check, then the index agrees
    assert added not in {p["task"] for p in ls.live_predictions()}


def test_index_checks_for_deletions_only_when_counts_differ(ls, settings):
    client = ls.client("", "")
    spec = parse_label_config(ls.label_config)
    index = TaskIndex(settings.model_dir, 1)
    (no_text,) = ls.add_tasks([None])  # cannot be indexed, but LS counts it
    assert index.sync(client, spec) == {"added": len(ls.tasks) - 1, "removed": 0, "checked": 0}
    assert index.sync(client, spec) == {"added": 0, "removed": 0, "checked": 0}
    assert ls.listed_after[-1] == no_text  # the unreadable task is not listed again either
    gone = min(ls.tasks)
    del ls.tasks[gone]
    assert index.sync(client, spec) == {"added": 0, "removed": 1, "checked": 1}
    assert gone not in index.unlabelled()[0]
    del ls.tasks[no_text]
    assert index.sync(client, spec) == {"added": 0, "removed": 1, "checked": 1}
    assert index.sync(client, spec) == {"added": 0, "removed": 0, "checked": 0}
    assert ls.calls["task_ids"] == 2


def test_index_written_before_skipped_ids_were_kept_heals_after_one_check(ls, settings):
    client = ls.client("", "")
    spec = parse_label_config(ls.label_config)
    index = TaskIndex(settings.model_dir, 1)
    ls.add_tasks([None, "one more good film"])
    index.sync(client, spec)
    with closing(sqlite3.connect(index.path)) as db, db:
        db.execute("DELETE FROM skipped")  # as an index from before the `skipped` table
    assert index.sync(client, spec)["checked"] == 1
    assert index.sync(client, spec)["checked"] == 0
    assert ls.calls["task_ids"] == 1


def test_stale_rescore_is_skipped(ls, r, context):
    jobqueue.enqueue_retrain(r, 1, jobqueue.JobPolicy(retries=0), "a")
    drain(r, context)
    live = ls.model_version
    job = jobqueue.enqueue_rescore(r, 1, "p1-v0000-aaaaaa", jobqueue.JobPolicy(retries=0))
    drain(r, context)
    assert Job.fetch(job.id, connection=r).return_value()["skipped"] is True
    assert ls.model_version == live


def test_new_tasks_are_scored_with_the_live_model(web, ls, r, context):
    _set_up(web, ls)
    web.post("/webhook", json={"action": "START_TRAINING", "project": 1})
    drain(r, context)
    version = ls.model_version
    new_ids = ls.add_tasks(["great good lovely", "awful bad poor"])
    response = web.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 1},
                                          "tasks": [{"id": i} for i in new_ids]})
    assert response.get_json()["action"] == "score_new"
    drain(r, context)
    scored = [p for p in ls.live_predictions() if p["task"] in new_ids]
    assert len(scored) == 2 and all(p["model_version"] == version for p in scored)
    assert all(0.0 <= p["score"] <= 1.0 for p in scored)


def test_label_config_change_resets_and_retrains(web, ls, r, settings, context):
    web.post("/setup", json={"project": "1.1", "schema": ls.label_config})
    drain(r, context)
    store = ModelStore(settings.model_dir / "models")
    before = store.current(1)
    ls.label_config = ls.label_config.replace('"neg"', '"negative"')
    for n, task_id in enumerate(ls.annotations):
        ls.annotations[task_id] = "pos" if n % 2 else "negative"
    web.post("/webhook", json={"action": "PROJECT_UPDATED",
                               "project": {"id": 1, "label_config": ls.label_config}})
    assert [j.func_name for j in Queue("train", connection=r).jobs] == ["workers.lifecycle.reset_project"]
    drain(r, context)
    after = store.current(1)
    assert after and after != before
    assert store.load(1).classes == ["pos", "negative"]


def test_one_class_only_waits_for_more_labels(ls, r, settings, context):
    for task_id in ls.annotations:
        ls.annotations[task_id] = "pos"
    job_id, _ = jobqueue.enqueue_retrain(r, 1, jobqueue.JobPolicy(retries=0), "test")
    drain(r, context)
    job = Job.fetch(job_id, connection=r)
    assert job.get_status() == "finished" and job.return_value() is None
    assert projects.trained_count(r, 1) == 8  # reconcile will not keep retrying it
    assert ModelStore(settings.model_dir / "models").current(1) is None


def test_reconcile_catches_lost_webhooks(ls, r, context):
    projects.register(r, 1)
    policy = jobqueue.JobPolicy(retries=0)
    jobqueue.enqueue_reconcile(r, policy)
    drain(r, context)
    assert projects.trained_count(r, 1) == 8
    assert len(_finished(r, "workers.training.retrain")) == 1
    ls.annotations[max(ls.tasks)] = "neg"  # its webhook got lost
    jobqueue.enqueue_reconcile(r, policy)
    drain(r, context)
    assert projects.trained_count(r, 1) == 9
    assert len(_finished(r, "workers.training.retrain")) == 2
    jobqueue.enqueue_reconcile(r, policy)
    drain(r, context)
    assert len(_finished(r, "workers.training.retrain")) == 2  # up to date: nothing to do


def test_reconcile_timer_fires_once_per_interval(r):
    policy = jobqueue.JobPolicy(retries=0)
    assert jobqueue.schedule_reconcile_if_due(r, 60, policy) is not None
    assert jobqueue.schedule_reconcile_if_due(r, 60, policy) is None
    assert jobqueue.schedule_reconcile_if_due(r, 0, policy) is None
    assert [j.func_name for j in Queue("train", connection=r).jobs] == ["workers.lifecycle.reconcile"]


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_retrain_uses_the_gpu_when_there_is_one(ls, r, context):
    jobqueue.enqueue_retrain(r, 1, jobqueue.JobPolicy(retries=0), "gpu")
    drain(r, context)
    assert context.learner.device.type == "cuda"
    assert ls.model_version.startswith("p1-v")


def test_worker_timer_enqueues_reconcile_and_it_retrains(ls, r, settings):
    import dataclasses

    from tests.integration.workers_helper import InProcessWorker
    from workers.worker import ReconcilingWorker

    class Worker(InProcessWorker, ReconcilingWorker):
        """Our worker's timer with in-process job execution (the fake LS lives in this process)."""

    projects.register(r, 1)  # known, but its annotations' webhooks were all lost
    timed = WorkerContext.from_settings(dataclasses.replace(settings, reconcile_interval=60),
                                        client_factory=ls.client)
    worker = Worker(list(jobqueue.QUEUES), connection=r, context=timed)
    assert worker.maintenance_interval <= 60 and worker.dequeue_timeout <= 60
    worker.work(burst=True, logging_level="WARNING")
    assert [j.func_name for j in _finished(r, "workers.lifecycle.reconcile")] == ["workers.lifecycle.reconcile"]
    assert projects.trained_count(r, 1) == 8 and ls.model_version.startswith("p1-v")
    # A second worker within the interval does not enqueue another reconcile.
    Worker(list(jobqueue.QUEUES), connection=r, context=timed).work(burst=True, logging_level="WARNING")
    assert len(_finished(r, "workers.lifecycle.reconcile")) == 1


def test_a_new_order_does_not_wait_behind_old_prediction_deletes(r):
    policy = jobqueue.JobPolicy(retries=0)
    jobqueue.enqueue_cleanup(r, 1, "p1-v0001-aaaaaa", policy)
    jobqueue.enqueue_score_new(r, 1, [5], policy)
    jobqueue.enqueue_rescore(r, 1, "p1-v0002-bbbbbb", policy)
    assert [j.func_name for j in Queue("score", connection=r).jobs] == [
        "workers.scoring.rescore", "workers.scoring.score_new_tasks"]
    assert [j.func_name for j in Queue("cleanup", connection=r).jobs] == ["workers.lifecycle.delete_version"]
    assert jobqueue.QUEUES[-1] == "cleanup"  # served last: deletes never delay the loop


def test_a_queued_rescore_runs_before_the_next_retrain(web, ls, r, context):
    """One worker under a steady stream of annotations still publishes every trained version."""
    _set_up(web, ls)
    drain(r, context)
    policy = jobqueue.JobPolicy(retries=0)
    retrain_id, _ = jobqueue.enqueue_retrain(r, 1, policy, "follow-up")
    rescore = jobqueue.enqueue_rescore(r, 1, ModelStore(context.settings.model_dir / "models").current(1), policy)
    drain(r, context)
    retrain, rescore = Job.fetch(retrain_id, connection=r), Job.fetch(rescore.id, connection=r)
    assert rescore.ended_at <= retrain.started_at


def test_a_retrains_rescore_reuses_its_read_of_label_studio_on_its_first_attempt_only(web, ls, r, settings):
    fast = WorkerContext(settings, jobqueue.JobPolicy(retries=2, backoff=(0,)), ls.client)
    store = ModelStore(settings.model_dir / "models")
    _set_up(web, ls)
    drain(r, fast)  # prepare, cold start, first retrain and its re-score
    reads = ls_calls_of_a_retrain(r, fast, ls)
    assert reads["get_project"] == 1 and reads["list_tasks"] == 1  # the retrain's: its re-score read nothing
    assert reads["count_tasks"] == reads["count_annotations"] == 0  # the project record carries both counts
    assert ls.model_version == store.current(1) and ls.live_predictions()
    ls.fail["import_predictions"] = LabelStudioError("transient (fake)")
    reads = ls_calls_of_a_retrain(r, fast, ls)
    assert reads["get_project"] == 2 and reads["list_tasks"] == 2  # the retry read LS afresh
    assert ls.model_version == store.current(1)
    assert {p["task"] for p in ls.live_predictions()} == set(ls.tasks) - set(ls.annotations)
