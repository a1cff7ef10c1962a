"""Audit records through real jobs: rescore keeps the live model's predictions on explored tasks,
retrain pairs their labels, and /projects/<id>/status reports the audit computed here by hand."""

from __future__ import annotations

import dataclasses
import math

import pytest

from backend import audits, projects
from backend.al.store import ModelStore
from backend.app import create_app
from backend.settings import Settings
from tests.integration.fake_ls import FakeLabelStudio
from tests.integration.workers_helper import drain
from workers.context import WorkerContext
from workers.task_index import TaskIndex


@dataclasses.dataclass
class Loop:
    """The fake LS (30 reviews, 8 labelled), the web app and a worker context, half the order explored
    so that a 22-task pool has audit tasks to label."""

    settings: Settings
    ls: FakeLabelStudio
    web: object
    context: WorkerContext


@pytest.fixture
def loop(settings):
    settings = dataclasses.replace(settings, engine=dataclasses.replace(settings.engine, exploration=0.5))
    ls = FakeLabelStudio.reviews()
    return Loop(settings, ls, create_app(settings).test_client(), WorkerContext.from_settings(settings, ls.client))


def _choice(prediction: dict) -> str:
    return prediction["result"][0]["value"]["choices"][0]


def _wilson(correct: int, n: int) -> tuple[float, float]:
    z, p = 1.959963984540054, correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if correct == 0 else centre - half), (1.0 if correct == n else centre + half)


def _explored(context, settings, version: str) -> set[int]:
    """The explored tasks of a version's ranking, ranked again here (the ranking is deterministic)."""
    model = ModelStore(settings.model_dir / "models").load(1, version)
    ids, texts = TaskIndex(settings.model_dir, 1).unlabelled()
    ranking = context.learner.rank(model, texts, ids=ids)
    return {ids[i] for i, flag in enumerate(ranking.explored.tolist()) if flag}


def test_audit_of_explored_tasks_matches_a_hand_count(loop, r):
    web, ls, context = loop.web, loop.ls, loop.context
    web.post("/setup", json={"project": "1.17", "schema": ls.label_config})
    drain(r, context)  # first contact: 8 labels -> v1 trained and published
    v1 = ls.model_version
    explored = _explored(context, loop.settings, v1)
    live = {p["task"]: _choice(p) for p in ls.live_predictions()}
    assert explored and audits.stop_predictions(r, 1, v1)
    assert r.hgetall(f"al:p:1:audit:pred:{v1}") == {str(t).encode(): live[t].encode() for t in explored}

    # Annotators label three explored tasks (one against the model's guess) and two actively chosen.
    audit_tasks = sorted(explored)[:3]
    labels = {t: live[t] for t in audit_tasks[:2]} | {audit_tasks[2]: "neg" if live[audit_tasks[2]] == "pos" else "pos"}
    active = sorted(set(live) - explored)[:2]
    ls.annotations.update(labels | {t: "pos" for t in active})
    web.post("/webhook", json={"action": "START_TRAINING", "project": 1})
    drain(r, context)
    v2 = ls.model_version
    assert v2 != v1

    correct = sum(live[t] == labels[t] for t in audit_tasks)
    low, high = _wilson(correct, len(audit_tasks))
    body = web.get("/projects/1/status").get_json()
    overall = body["audit"]["overall"]
    assert (overall["items"], overall["correct"]) == (3, correct) == (3, 2)
    assert overall["accuracy"] == pytest.approx(correct / 3)
    assert (overall["low"], overall["high"]) == (pytest.approx(low), pytest.approx(high))
    assert [(v["version"], v["labels"], v["items"]) for v in body["audit"]["versions"]] == [(v1, 8, 3)]
    assert body["learning_curve"][0]["labels"] == 8
    assert body["labels"] == projects.trained_count(r, 1) == 13
    assert body["model_version"] == v2 and body["queue"] == {"pending": [], "running": []}

    # v2 went live after v1: its stability against v1 is one kappa on their common stop-set tasks.
    (kappa,) = body["stopping"]["stability"]
    assert (kappa["version"], kappa["previous"]) == (v2, v1) and -1 <= kappa["kappa"] <= 1
    assert kappa["tasks"] == len(audits.stop_predictions(r, 1, v1).keys() & audits.stop_predictions(r, 1, v2).keys())
    assert body["stopping"]["kappas"] == [kappa["kappa"]] and body["stopping"]["state"] == "keep labelling"

    # The same labels read again (a retried or later retrain) add no audit item.
    web.post("/webhook", json={"action": "START_TRAINING", "project": 1})
    drain(r, context)
    assert web.get("/projects/1/status").get_json()["audit"]["overall"]["items"] == 3


def test_reset_forgets_the_audit(loop, r):
    web, ls, context = loop.web, loop.ls, loop.context
    web.post("/setup", json={"project": "1.17", "schema": ls.label_config})
    drain(r, context)
    assert audits.recorded_versions(r, 1)
    changed = ls.label_config.replace('value="neg"', 'value="neg"/><Choice value="mixed"')
    web.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1, "label_config": changed}})
    drain(r, context)
    assert audits.audit_items(r, 1) == [] and audits.kappas(r, 1) == []
    assert audits.recorded_versions(r, 1) == [ls.model_version]
