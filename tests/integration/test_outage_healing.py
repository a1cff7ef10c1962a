"""Label Studio down for longer than the retries (issue 13, defect 4): reconcile heals the project.

A rescore that exhausts its retries while LS is down leaves the newest trained version
unpublished and its partial import (orphan predictions) in LS. The next reconcile after LS is
back must publish that version and delete the orphans, and must never fight a publish that is
still queued or running, nor enqueue the same work again at every interval.
"""

from __future__ import annotations

import threading
import time

import pytest
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from backend import jobqueue, projects
from backend.labelstudio import LabelStudioError
from tests.integration.workers_helper import BackgroundWorker, InProcessWorker, drain
from workers import scoring
from workers.context import WorkerContext

POLICY = jobqueue.JobPolicy(retries=2, backoff=(0,))  # three attempts, no waiting between them


@pytest.fixture
def context(settings, ls):
    """Workers whose jobs retry twice at once: an outage outlasts them in milliseconds."""
    return WorkerContext(settings, POLICY, ls.client)


def _finished(r, name: str) -> list[Job]:
    found = []
    for queue in jobqueue.QUEUES:
        jobs = Job.fetch_many(FinishedJobRegistry(queue, connection=r).get_job_ids(), connection=r)
        found += [j for j in jobs if j and j.func_name.endswith("." + name)]
    return found


def _failed(r, name: str) -> list[Job]:
    jobs = Job.fetch_many(FailedJobRegistry(jobqueue.SCORE, connection=r).get_job_ids(), connection=r)
    return [j for j in jobs if j and j.func_name.endswith("." + name)]


def _live_version(r, ls, context) -> str:
    """Train and publish a first version; returns it."""
    projects.register(r, 1)
    jobqueue.enqueue_retrain(r, 1, POLICY, "first model")
    drain(r, context)
    assert ls.model_version and projects.published_version(r, 1) == ls.model_version
    return ls.model_version


def _label_one_more(ls) -> None:
    task = next(i for i in sorted(ls.tasks) if i not in ls.annotations)
    ls.annotations[task] = "neg"


def _retrain_while_ls_goes_down(r, ls, context) -> str:
    """A retrain whose publish dies after 3 predictions, with LS down for every retry."""
    _label_one_more(ls)
    ls.crash_during_import = 3
    jobqueue.enqueue_retrain(r, 1, POLICY, "annotation")
    drain(r, context)
    return context.store.current(1)


def _reconcile(r, context) -> float:
    """Enqueue one reconcile and run everything it leads to; returns the seconds it took."""
    start = time.monotonic()
    jobqueue.enqueue_reconcile(r, POLICY)
    drain(r, context)
    return time.monotonic() - start


def _assert_only_live(ls, r, version: str) -> None:
    assert ls.model_version == version and projects.published_version(r, 1) == version
    assert {p["model_version"] for p in ls.predictions} == {version}
    live = ls.live_predictions()
    assert len(live) == len({p["task"] for p in live}) == len(ls.tasks) - len(ls.annotations)
    assert projects.importing_version(r, 1) is None


def test_reconcile_publishes_a_version_whose_publish_ran_out_of_retries(ls, r, context):
    old = _live_version(r, ls, context)
    new = _retrain_while_ls_goes_down(r, ls, context)
    (failed,) = _failed(r, "rescore")
    assert failed.args == (1, new) and ls.calls["get_project"] >= 3  # all three attempts ran
    # What the outage left: the old version still live, 3 orphan predictions of the new one.
    assert new != old and ls.model_version == old and projects.published_version(r, 1) == old
    assert len(ls.live_predictions(new)) == 3 and projects.importing_version(r, 1) == new

    ls.down = False
    seconds = _reconcile(r, context)
    print(f"reconcile healed the project in {seconds:.2f} s")
    _assert_only_live(ls, r, new)

    # Healed: the next reconcile has nothing to do.
    enqueued = len(Job.fetch_many(projects.recent_jobs(r, 1), connection=r))
    _reconcile(r, context)
    assert len(Job.fetch_many(projects.recent_jobs(r, 1), connection=r)) == enqueued
    _assert_only_live(ls, r, new)


def test_reconcile_deletes_orphans_of_versions_that_never_went_live(ls, r, context):
    old = _live_version(r, ls, context)
    lost = _retrain_while_ls_goes_down(r, ls, context)
    ls.down = False
    # LS came back briefly: long enough to train again, not to publish (or to clean `lost` up).
    newest = _retrain_while_ls_goes_down(r, ls, context)
    assert len({old, lost, newest}) == 3
    assert len(ls.live_predictions(lost)) == 3 and len(ls.live_predictions(newest)) == 3
    assert ls.model_version == old

    ls.down = False
    _reconcile(r, context)
    _assert_only_live(ls, r, newest)  # `lost` was neither live nor current: its orphans are gone


def test_a_version_superseded_during_its_import_is_never_switched_to(ls, r, context):
    old = _live_version(r, ls, context)
    stale = "p1-v0009-aaaaaa"  # e.g. a slow worker's publish, overtaken by a newer version's
    batch = [{"task": t, "result": [], "score": 0.5, "model_version": stale}
             for t in sorted(set(ls.tasks) - set(ls.annotations))]
    assert not scoring.publish(r, ls.client("", ""), 1, stale, batch, POLICY, still_current=lambda: False)
    assert ls.model_version == old and projects.published_version(r, 1) == old
    _reconcile(r, context)  # its import is an orphan: deleted
    _assert_only_live(ls, r, old)


def test_reconcile_leaves_a_queued_publish_alone(ls, r, context):
    old = _live_version(r, ls, context)
    _label_one_more(ls)
    jobqueue.enqueue_retrain(r, 1, POLICY, "annotation")
    train_only = InProcessWorker([jobqueue.TRAIN], connection=r, context=context)
    train_only.work(burst=True, logging_level="WARNING")  # trains; its rescore waits in the queue
    new = context.store.current(1)
    assert [j.args for j in Queue(jobqueue.SCORE, connection=r).jobs] == [(1, new)]

    jobqueue.enqueue_reconcile(r, POLICY)
    InProcessWorker([jobqueue.TRAIN], connection=r, context=context).work(burst=True, logging_level="WARNING")
    assert [j.args for j in Queue(jobqueue.SCORE, connection=r).jobs] == [(1, new)]  # no second one
    assert ls.model_version == old
    drain(r, context)
    _assert_only_live(ls, r, new)


def test_reconcile_leaves_a_running_publish_alone(ls, r, context):
    _live_version(r, ls, context)
    _label_one_more(ls)
    ls.block_import = threading.Event()
    with BackgroundWorker(r, context):
        jobqueue.enqueue_retrain(r, 1, POLICY, "annotation")
        deadline = time.monotonic() + 30
        while projects.importing_version(r, 1) is None:  # the publish is under way, blocked in LS
            assert time.monotonic() < deadline, "the rescore never started importing"
            time.sleep(0.02)
        new = projects.importing_version(r, 1)
        deletes = ls.calls["delete_predictions"]
        jobqueue.enqueue_reconcile(r, POLICY)  # run by a second worker, the first being busy
        InProcessWorker([jobqueue.TRAIN], connection=r, context=context).work(burst=True, logging_level="WARNING")
        assert len(_finished(r, "reconcile")) == 1
        # Nothing enqueued that would delete or re-import the version being published.
        assert [j.func_name for j in Queue(jobqueue.SCORE, connection=r).jobs] == []
        assert ls.calls["delete_predictions"] == deletes
        ls.block_import.set()
        deadline = time.monotonic() + 30
        while projects.published_version(r, 1) != new or Queue(jobqueue.SCORE, connection=r).count:
            assert time.monotonic() < deadline, "the publish did not finish"
            time.sleep(0.02)
    drain(r, context)
    _assert_only_live(ls, r, new)
    assert len(_finished(r, "rescore")) == 2  # the first version's and this one: no duplicate


def test_a_rescore_that_found_nothing_to_publish_is_not_repeated(ls, r, context):
    projects.register(r, 1)
    ls.tasks.clear()  # an empty project: nothing to rank, nothing to publish
    ls.annotations.clear()
    jobqueue.enqueue_rescore(r, 1, None, POLICY)
    drain(r, context)
    (rescore,) = _finished(r, "rescore")
    assert rescore.return_value()["skipped"] is True and ls.model_version == ""
    for _ in range(2):
        _reconcile(r, context)
    assert len(_finished(r, "rescore")) == 1 and not _failed(r, "rescore")


class _MarkLost:
    """The fake LS's import fails midway once, and Redis loses the importing mark with it, as a
    Redis crash with ``appendfsync everysec`` can lose the last second's writes."""

    def __init__(self, ls, r, keep: int) -> None:
        self.ls, self.r, self.keep = ls, r, keep

    def __call__(self, original):
        def import_predictions(client, project_id, predictions):
            if self.keep is None:
                return original(client, project_id, predictions)
            keep, self.keep = self.keep, None
            self.ls.predictions.extend(dict(p) for p in predictions[:keep])
            self.r.delete(f"al:p:{project_id}:importing")
            raise LabelStudioError("import failed midway (fake), and Redis lost the mark")
        return import_predictions


def test_a_retried_publish_that_redis_lost_the_mark_of_deletes_what_ls_holds_first(ls, r, context, monkeypatch):
    """Seen in the faults suite: LS held a failed attempt's predictions, Redis no mark of them, and
    the retry imported the version a second time (two predictions a task)."""
    from tests.integration.fake_ls import FakeClient

    old = _live_version(r, ls, context)
    monkeypatch.setattr(FakeClient, "import_predictions", _MarkLost(ls, r, keep=3)(FakeClient.import_predictions))
    _label_one_more(ls)
    jobqueue.enqueue_retrain(r, 1, POLICY, "annotation")
    drain(r, context)  # the re-score fails once, then its retry publishes
    new = context.store.current(1)
    assert new != old
    _assert_only_live(ls, r, new)  # one prediction a task: the retry deleted the 3 LS held first


def test_a_retry_after_ls_switched_records_the_version_without_importing_it_again(ls, r, context):
    """The failed attempt imported and switched, then lost Redis before recording it, and the mark
    with it: LS switches only after a complete import, so the retry only records the version."""
    old = _live_version(r, ls, context)
    new = "p1-v0009-bbbbbb"
    batch = [{"task": t, "result": [], "score": 0.5, "model_version": new}
             for t in sorted(set(ls.tasks) - set(ls.annotations))]
    client = ls.client("", "")
    client.import_predictions(1, batch)
    client.set_model_version(1, new)
    imports = ls.calls["import_predictions"]
    assert scoring.publish(r, client, 1, new, batch, POLICY, ls_version=new, retry=True)
    assert ls.calls["import_predictions"] == imports
    assert projects.published_version(r, 1) == new and len(ls.live_predictions(new)) == len(batch)
    assert [j.args for j in Queue(jobqueue.CLEANUP, connection=r).jobs] == [(1, old)]
