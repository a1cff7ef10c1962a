"""Bad input on the worker side (issue 13, "Bad input"): odd task texts, label configs changed
mid-project, one class, an empty pool, broken checkpoints. Each is a logged, skipped item or a
retrain, with the rest of the work done; no job is left failing for good.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from backend import jobqueue, projects
from backend.al.kinds.base import Model
from backend.app import create_app
from tests.integration.fake_ls import CONFIG, NULL, POS
from tests.integration.workers_helper import InProcessWorker, drain
from workers.context import WorkerContext

POLICY = jobqueue.JobPolicy(retries=0)
WITH_MEH = CONFIG.replace('<Choice value="neg"/>', '<Choice value="neg"/><Choice value="meh"/>')


def _jobs(r, registry, name: str) -> list[Job]:
    found = []
    for queue in jobqueue.QUEUES:
        jobs = Job.fetch_many(registry(queue, connection=r).get_job_ids(), connection=r)
        found += [j for j in jobs if j and j.func_name.endswith("." + name)]
    return found


def _no_failures(r) -> None:
    failed = [j for q in jobqueue.QUEUES
              for j in Job.fetch_many(FailedJobRegistry(q, connection=r).get_job_ids(), connection=r) if j]
    assert not failed, [(j.func_name, j.latest_result().exc_string[-300:]) for j in failed]


def _train(r, context) -> str:
    jobqueue.enqueue_retrain(r, 1, POLICY, "test")
    drain(r, context)
    _no_failures(r)
    return context.store.current(1)


def _train_only(r, context) -> str:
    """Run a retrain but leave its rescore queued."""
    jobqueue.enqueue_retrain(r, 1, POLICY, "test")
    InProcessWorker([jobqueue.TRAIN], connection=r, context=context).work(burst=True, logging_level="WARNING")
    return context.store.current(1)


def _assert_live(ls, r, version: str) -> None:
    assert ls.model_version == version and projects.published_version(r, 1) == version
    live = ls.live_predictions()
    assert len(live) == len({p["task"] for p in live})
    assert all(0.0 <= p["score"] <= 1.0 for p in live)


def _last(r, name: str) -> dict:
    return max(_jobs(r, FinishedJobRegistry, name), key=lambda job: job.ended_at).return_value()


def test_odd_task_texts_are_ranked_or_skipped_and_the_rest_is_published(ls, r, context):
    odd = {"missing": None, "null": NULL, "empty": "", "huge": "good film " * 50_000,
           "lone surrogate": "bad \ud800 film",  # JSON allows "\ud800"; it has no UTF-8 encoding
           "nul and escapes": "good\x00 film\x1b[31m", "number": 42, "object": {"a": [1, 2]}}
    ids = dict(zip(odd, ls.add_tasks(list(odd.values())), strict=True))
    for name in ("missing", "lone surrogate"):
        ls.annotations[ids[name]] = "neg"
    version = _train(r, context)
    _assert_live(ls, r, version)
    without_text = {ids["missing"], ids["null"]}
    assert {p["task"] for p in ls.live_predictions()} == set(ls.tasks) - set(ls.annotations) - without_text
    assert context.store.load(1).n_train == 8 + 1  # the surrogate task trained; the one without text not

    # The same texts arriving as new tasks are placed in the live order, or skipped.
    new = dict(zip(odd, ls.add_tasks(list(odd.values())), strict=True))
    jobqueue.enqueue_score_new(r, 1, list(new.values()), POLICY)
    drain(r, context)
    _no_failures(r)
    scored = {p["task"] for p in ls.live_predictions()} & set(new.values())
    assert scored == set(new.values()) - {new["missing"], new["null"]}


@pytest.mark.parametrize(("before", "after", "relabel"), [
    (CONFIG, WITH_MEH, {}),  # a label added
    (WITH_MEH, CONFIG, {"neg": "meh"}),  # a label removed: annotations with it stop counting
    (CONFIG, CONFIG.replace('"pos"', '"positive"'), {"pos": "positive"}),  # renamed, then relabelled
], ids=["added", "removed", "renamed"])
def test_a_label_config_changed_mid_project_retrains_on_the_new_labels(ls, r, settings, context,
                                                                       before, after, relabel):
    ls.label_config = before
    if "meh" in before:  # two annotations with the label that will be removed
        for task in [t for t in sorted(ls.tasks) if t not in ls.annotations][:2]:
            ls.annotations[task] = "meh"
    web = create_app(settings).test_client()
    assert web.post("/setup", json={"project": "1.1", "schema": before}).status_code == 200
    drain(r, context)
    first = ls.model_version
    ls.label_config = after
    ls.annotations.update({t: relabel.get(c, c) for t, c in list(ls.annotations.items())[:3]})
    web.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1, "label_config": after}})
    drain(r, context)
    _no_failures(r)
    version = context.store.current(1)
    assert version != first
    _assert_live(ls, r, version)
    assert context.store.load(1).classes == [c for c in ("pos", "positive", "neg", "meh") if f'"{c}"' in after]


def test_a_label_set_changed_without_its_webhook_is_never_published_with_old_labels(ls, r, context):
    old = _train(r, context)
    _assert_live(ls, r, old)
    # The PROJECT_UPDATED webhook was lost: LS now has three labels, the live model two.
    ls.label_config = WITH_MEH.replace('"neg"', '"negative"')
    for task in [t for t, c in ls.annotations.items() if c == "neg"]:
        ls.annotations[task] = "negative"
    new_tasks = ls.add_tasks(["brand new good film"])
    jobqueue.enqueue_score_new(r, 1, new_tasks, POLICY)
    drain(r, context)
    _no_failures(r)
    assert _last(r, "score_new_tasks")["skipped"] is True  # no labels of the old set written
    assert not [p for p in ls.predictions if p["task"] in new_tasks]

    # A rescore of the old version (a retry, or a reconcile's) retrains on the new label set instead.
    jobqueue.enqueue_rescore(r, 1, old, POLICY)
    drain(r, context)
    _no_failures(r)
    version = context.store.current(1)
    assert version != old and context.store.load(1).classes == ["pos", "negative", "meh"]
    _assert_live(ls, r, version)
    assert {c for p in ls.live_predictions() for c in p["result"][0]["value"]["choices"]} <= {"pos", "negative", "meh"}


def test_only_one_class_gets_a_cold_start_order_once(ls, r, context):
    for task in ls.annotations:
        ls.annotations[task] = "pos"
    projects.register(r, 1)
    for _ in range(3):
        jobqueue.enqueue_reconcile(r, POLICY)
        drain(r, context)
    _no_failures(r)
    assert context.store.current(1) is None  # nothing to learn from one class
    assert ls.model_version == projects.cold_start_version(1)  # but annotators get a diverse order
    assert len(_jobs(r, FinishedJobRegistry, "retrain")) == 1
    assert len(_jobs(r, FinishedJobRegistry, "rescore")) == 1


def test_an_empty_pool_publishes_nothing_and_fails_nothing(ls, r, context):
    old = _train(r, context)
    for task in ls.tasks:  # every task labelled: nothing left to rank
        ls.annotations.setdefault(task, "pos" if ls.tasks[task] in POS else "neg")
    version = _train(r, context)
    assert version != old
    assert _last(r, "rescore") == {"skipped": True, "reason": "empty pool", "version": version}
    assert ls.model_version == old  # LS refuses to switch to a version without predictions
    jobqueue.enqueue_reconcile(r, POLICY)
    drain(r, context)
    assert len(_jobs(r, FinishedJobRegistry, "rescore")) == 2  # not repeated by the reconcile


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _checkpoint(context, version: str):
    return context.store.root / "project-1" / f"{version}.pt"


def test_a_truncated_checkpoint_is_retrained_not_a_blocked_project(ls, r, settings, context):
    old = _train(r, context)
    ls.annotations[next(t for t in sorted(ls.tasks) if t not in ls.annotations)] = "neg"
    broken = _train_only(r, context)
    _truncate(_checkpoint(context, broken))  # e.g. a disk that filled up, a bad copy
    drain(r, context)  # its rescore cannot load it: it asks for a retrain instead of failing forever
    _no_failures(r)
    version = context.store.current(1)
    assert version not in (old, broken)
    _assert_live(ls, r, version)

    # The live checkpoint broken: /predict answers the cold start, new tasks wait, nothing fails.
    _truncate(_checkpoint(context, version))
    web = create_app(settings).test_client()
    projects.register(r, 1)
    answer = web.post("/predict", json={"tasks": [{"id": 1, "data": {"text": "good"}}], "project": "1.1",
                                         "label_config": ls.label_config})
    assert answer.status_code == 200
    assert answer.get_json()["results"][0]["model_version"] == projects.cold_start_version(1)
    jobqueue.enqueue_score_new(r, 1, ls.add_tasks(["one more good film"]), POLICY)
    drain(r, context)
    _no_failures(r)
    assert _last(r, "score_new_tasks")["skipped"] is True

    # A warm-starting retrain trains from scratch rather than failing on it.
    warm = dataclasses.replace(settings, engine=dataclasses.replace(settings.engine, warm_start=True))
    newest = _train(r, WorkerContext.from_settings(warm, client_factory=ls.client))
    assert newest != version
    _assert_live(ls, r, newest)


def test_a_checkpoint_from_another_label_set_is_retrained(ls, r, context):
    old = _train(r, context)
    ls.annotations[next(t for t in sorted(ls.tasks) if t not in ls.annotations)] = "neg"
    foreign = _train_only(r, context)
    path = _checkpoint(context, foreign)
    model = Model.from_dict(torch.load(path, weights_only=True))
    torch.save(dataclasses.replace(model, classes=["spam", "ham"]).to_dict(), path)  # e.g. a restored backup
    drain(r, context)
    _no_failures(r)
    version = context.store.current(1)
    assert version not in (old, foreign) and context.store.load(1).classes == ["pos", "neg"]
    _assert_live(ls, r, version)
