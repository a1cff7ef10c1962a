"""A retrain through the real worker hands the project's unlabelled tasks to the learner for
pseudo-labels when PROPAGATION is on, and nothing when it is off; with `auto` (checked deferred)
each retrain queues the check the next one reads."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from backend.al.store import ModelStore
from backend.app import create_app
from tests.integration.workers_helper import drain
from workers.context import WorkerContext


@pytest.mark.parametrize("setting", ["on", "off"])
def test_first_contact_trains_with_the_unlabelled_tasks_only_when_propagation_is_on(setting, ls, r, settings):
    settings = dataclasses.replace(settings, engine=dataclasses.replace(settings.engine, propagation=setting))
    context = WorkerContext.from_settings(settings, client_factory=ls.client)
    web = create_app(settings).test_client()
    assert web.post("/setup", json={"project": "1.17", "schema": ls.label_config}).status_code == 200
    drain(r, context)  # prepare -> cold-start rescore -> first retrain (8 tasks are labelled) -> rescore
    model = ModelStore(settings.model_dir / "models").load(1)
    assert model is not None and model.kind == "linear" and model.n_train == len(ls.annotations)
    if setting == "on":
        assert model.stats["propagation_pool"] == len(ls.tasks) - len(ls.annotations)  # every unlabelled task
        assert model.stats["pseudo_labels"] > 0
    else:
        assert "propagation_pool" not in model.stats and "pseudo_labels" not in model.stats
    assert ls.model_version == ModelStore(settings.model_dir / "models").current(1)  # and it was published


def test_the_retrain_reads_only_the_sampled_unlabelled_texts(ls, settings):
    """With a pool larger than PROPAGATION_POOL the worker reads the sample the learner would draw
    from the whole pool (the smallest digests), and only that; with too few labels a class for `auto`, nothing."""
    from backend.al import propagation
    from backend.al.embeddings import text_digests
    from backend.labeling import parse_label_config
    from workers.task_index import TaskIndex
    from workers.training import unlabelled_texts

    spec = parse_label_config(ls.label_config)
    index = TaskIndex(settings.model_dir, 1)
    ls.add_tasks([f"extra review number {i}, quite long and rather good" for i in range(40)])
    index.sync(ls.client("", ""), spec)
    ids, texts = index.unlabelled()
    engine = dataclasses.replace(settings.engine, propagation="on", propagation_pool=7, seed=3)
    context = WorkerContext.from_settings(dataclasses.replace(settings, engine=engine), client_factory=ls.client)
    picked = propagation.sample_by_digest(text_digests(texts), 7).tolist()
    assert len(picked) == 7 and unlabelled_texts(context, index, spec, 10) == [texts[i] for i in picked]
    index.mark_labelled([ids[picked[0]]])  # one of them labelled: the next digest takes its place
    rest = [t for i, t in enumerate(texts) if i != picked[0]]
    again = unlabelled_texts(context, index, spec, 10)
    assert again == [rest[i] for i in propagation.sample_by_digest(text_digests(rest), 7).tolist()]
    assert sum((Counter(again) & Counter(texts[i] for i in picked)).values()) == 6  # one swapped
    assert index.texts([ids[2], ids[0]]) == [texts[2], texts[0]]
    few = propagation.FOLDS * len(spec.classes) - 1
    inline = dataclasses.replace(settings, engine=dataclasses.replace(engine, propagation="auto",
                                                                       propagation_check="inline"))
    inline_context = WorkerContext.from_settings(inline, client_factory=ls.client)
    assert unlabelled_texts(inline_context, index, spec, few) == []
    assert len(unlabelled_texts(inline_context, index, spec, few + 1)) == 7
    deferred = dataclasses.replace(settings, engine=dataclasses.replace(engine, propagation="auto"))
    deferred_context = WorkerContext.from_settings(deferred, client_factory=ls.client)
    assert len(unlabelled_texts(deferred_context, index, spec, few + 1)) == 7  # no check yet: the fit checks
    assert unlabelled_texts(deferred_context, index, spec, few + 1, propagation.Check(5, 6, 10)) == []
    assert len(unlabelled_texts(deferred_context, index, spec, few + 1, propagation.Check(6, 5, 10))) == 7
    assert unlabelled_texts(deferred_context, index, spec, few, propagation.Check(6, 5, 10)) == []


def _ten_labels(ls) -> None:
    ids = sorted(ls.tasks)
    ls.annotations.update({i: "pos" for i in ids[:5]} | {i: "neg" for i in ids[15:20]})  # 5 a class: checkable


def test_each_retrain_reads_the_check_its_predecessor_queued(ls, r, settings):
    """PROPAGATION=auto checked deferred: the first retrain with enough labels checks them itself and
    records it; later ones run no check, they read the recorded one and queue one on their own labels
    for the next; a reset forgets it."""
    from backend import jobqueue, projects

    _ten_labels(ls)
    context = WorkerContext.from_settings(settings, client_factory=ls.client)
    web = create_app(settings).test_client()
    assert web.post("/setup", json={"project": "1.17", "schema": ls.label_config}).status_code == 200
    drain(r, context)  # prepare, cold start, the first retrain (and its re-score)
    store = ModelStore(settings.model_dir / "models")
    first = store.current(1)
    stats = store.load(1, first).stats
    assert stats["propagation_checked_here"] and stats["propagation_check"][2] == 10
    record = projects.propagation_check(r, 1)
    assert record == {"version": first, "check": stats["propagation_check"], "classes": ["pos", "neg"]}
    checks = [j for j in jobqueue.project_jobs(r, 1) if j["description"].startswith("propagation check")]
    assert checks == []  # the fit's own check is recorded: no job
    jobqueue.enqueue_retrain(r, 1, context.policy, "test")
    drain(r, context)  # the retrain, its re-score, then the check job on its labels
    second = store.current(1)
    stats = store.load(1, second).stats
    assert second != first and stats["propagation_check"] == record["check"] and not stats["propagation_checked_here"]
    assert projects.propagation_check(r, 1)["version"] == second
    assert ls.model_version == second
    late = jobqueue.enqueue_check(r, 1, first, sorted(ls.annotations), ["pos"] * 10, ["pos", "neg"], context.policy)
    drain(r, context)  # a check of a superseded version (queued late, or retried) is skipped
    assert late.get_status() == "finished" and late.return_value() is None
    assert projects.propagation_check(r, 1)["version"] == second
    jobqueue.enqueue_reset(r, 1, context.policy)  # the label config changed: forget, retrain from scratch
    drain(r, context)
    third = store.current(1)
    assert third != second and store.load(1, third).stats["propagation_checked_here"]  # none recorded: its own
    assert projects.propagation_check(r, 1)["version"] == third


def test_a_check_of_a_superseded_version_is_neither_run_nor_recorded(ls, r, settings):
    from backend import projects

    assert projects.record_propagation_check(r, 1, "p1-v0003-abcdef", [3, 2, 10], ["pos", "neg"])
    assert not projects.record_propagation_check(r, 1, "p1-v0002-abcdef", [2, 3, 10], ["pos", "neg"])
    assert projects.propagation_check(r, 1)["check"] == [3, 2, 10]
    assert projects.record_propagation_check(r, 1, "p1-v0010-abcdef", [2, 3, 20], ["pos", "neg"])
    projects.forget_propagation_check(r, 1)
    assert projects.propagation_check(r, 1) is None


def test_the_k_nn_lists_are_built_once_after_the_first_model_where_ls_held_labels_at_first_contact(
        ls, r, settings, monkeypatch):
    from backend import jobqueue, projects
    from backend.al import propagation

    assert len(ls.annotations) == 8  # 4 a class: a first model, too few a class to check propagation
    context = WorkerContext.from_settings(settings, client_factory=ls.client)
    web = create_app(settings).test_client()
    assert web.post("/setup", json={"project": "1.17", "schema": ls.label_config}).status_code == 200
    drain(r, context)  # prepare, a retrain on LS's labels (no cold start), its re-score, then the lists
    assert ls.predictions and not any(projects.is_cold_start(p["model_version"]) for p in ls.predictions)
    (job,) = [j for j in jobqueue.project_jobs(r, 1) if j["name"] == "prepare_propagation"]
    assert job["status"] == "finished"

    computed, nearest = [], propagation.nearest

    def counted(x, k=propagation.NEIGHBOURS, rows=None):
        computed.append(len(x) if rows is None else len(rows))
        return nearest(x, k, rows)

    monkeypatch.setattr(propagation, "nearest", counted)
    _ten_labels(ls)  # 5 a class: the first retrain that checks reads the lists built after the first model
    jobqueue.enqueue_retrain(r, 1, context.policy, "10 labels")
    drain(r, context)
    model = ModelStore(settings.model_dir / "models").load(1)
    assert model.stats["propagation_checked_here"] and model.stats["propagation_pool"] == len(ls.tasks) - 10
    # Its graph (the labelled texts and the unlabelled ones) holds the texts the lists were built on,
    # the 8 labelled at first contact included: read, nothing computed.
    assert computed == []
    assert [j["name"] for j in jobqueue.project_jobs(r, 1)].count("prepare_propagation") == 1  # once
    jobqueue.enqueue_reset(r, 1, context.policy)  # the label config changed: its first publish queues them again
    drain(r, context)
    assert [j["name"] for j in jobqueue.project_jobs(r, 1)].count("prepare_propagation") == 2


def test_the_k_nn_lists_are_built_after_the_cold_start_and_the_first_check_reads_them(ls, r, settings, monkeypatch):
    from backend import jobqueue
    from backend.al import propagation

    ls.annotations.clear()  # a new project: nothing labelled at first contact
    context = WorkerContext.from_settings(settings, client_factory=ls.client)
    web = create_app(settings).test_client()
    assert web.post("/setup", json={"project": "1.17", "schema": ls.label_config}).status_code == 200
    drain(r, context)  # prepare, the cold start, then the k-NN lists of the pool
    (job,) = [j for j in jobqueue.project_jobs(r, 1) if j["name"] == "prepare_propagation"]
    assert job["status"] == "finished"

    def no_lists(*args, **kwargs):
        raise AssertionError("the retrain built k-NN lists")

    monkeypatch.setattr(propagation, "nearest", no_lists)
    _ten_labels(ls)
    jobqueue.enqueue_retrain(r, 1, context.policy, "10 labels")
    drain(r, context)
    model = ModelStore(settings.model_dir / "models").load(1)
    assert model.stats["propagation_checked_here"] and model.stats["propagation_check"][2] == 10
    off = dataclasses.replace(settings, engine=dataclasses.replace(settings.engine, propagation="off"))
    assert not WorkerContext.from_settings(off, client_factory=ls.client).learner.prepare_propagation(list("ab"))
