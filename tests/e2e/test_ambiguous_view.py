"""The "Ambiguous" Data Manager view against a real Label Studio 1.23.

With ambiguity routing on, queued tasks are published with priorities in [0, 0.5] and tasks set
aside as ambiguous with scores in [0.75, 1] (``labeling.QUEUE_TOP``, ``AMBIGUOUS_SCORE``). This
test checks what that design relies on in LS itself: a score outside [0, 1] is refused (so the
reserved range must lie inside it), the view's filter ``prediction score > 0.625`` (of the
project's model_version only) finds exactly the set-aside tasks, and uncertainty sampling
serves them after every queued task of the version. Then the backend itself, with
``AMBIGUITY=on``: it makes the view on first contact and publishes every set-aside task, beyond
``PUBLISH_TOP_K``, in that range.
"""

from __future__ import annotations

import shutil

import pytest

from backend.labeling import AMBIGUOUS_ABOVE, AMBIGUOUS_SCORE, AMBIGUOUS_VIEW, QUEUE_TOP, queued_score, set_aside_score
from backend.labelstudio import LabelStudioClient
from tests.e2e.conftest import start_backend
from tests.e2e.lsserver import agnews
from tests.e2e.service import wait_for
from tests.e2e.test_ui_e2e import live_version

pytestmark = pytest.mark.e2e


def _predictions(task_ids, scores, version):
    result = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["World"]}}]
    return [{"task": t, "result": result, "score": s, "model_version": version}
            for t, s in zip(task_ids, scores, strict=True)]


def _view_ids(api, view_id: int) -> list[int]:
    body = api.call("GET", "/api/tasks", params={"view": view_id, "page_size": 1000, "include": "id"})
    return [t["id"] for t in body["tasks"]]


def test_ambiguous_view_lists_set_aside_tasks_and_sampling_serves_them_last(ls):
    api, client = ls.api(), LabelStudioClient(ls.url, ls.token)
    pid = api.create_project("ambiguous view")
    ids = api.import_tasks(pid, [text for text, _ in agnews(24, offset=500)])
    queued, aside = ids[:18], ids[18:]
    queue_scores = [queued_score(i / (len(queued) - 1)) for i in range(len(queued))][::-1]  # the last task first
    aside_scores = [set_aside_score(j / (len(aside) - 1)) for j in range(len(aside))]
    assert max(queue_scores) == 0.5 < AMBIGUOUS_ABOVE < aside_scores[0] == 0.75 and aside_scores[-1] == 1.0

    # LS 1.23 refuses a score above 1 (logs it, imports the rest): the reason the range is inside [0, 1]
    assert client.import_predictions(pid, _predictions(queued[:2], [0.5, 2.0], "p1-v0000-probe")) == 1
    # an older version set other tasks aside: the view must not show them
    assert client.import_predictions(pid, _predictions(queued[:3], [0.9] * 3, "p1-v0001-old")) == 3
    assert client.import_predictions(pid, _predictions(queued + aside, queue_scores + aside_scores,
                                                       "p1-v0002-new")) == len(ids)
    client.set_sampling(pid)
    client.set_model_version(pid, "p1-v0002-new")

    stored = {p["score"] for t in aside for p in api.predictions(t) if p["model_version"] == "p1-v0002-new"}
    assert stored == set(aside_scores)

    queue = client.ensure_view(pid)
    view = client.ensure_view(pid, AMBIGUOUS_VIEW, score_above=AMBIGUOUS_ABOVE)
    assert client.ensure_view(pid, AMBIGUOUS_VIEW, score_above=AMBIGUOUS_ABOVE) == view != queue
    views = api.call("GET", "/api/dm/views/", params={"project": pid})
    assert sorted(v["data"]["title"] for v in views) == sorted(["Active learning queue", AMBIGUOUS_VIEW])
    assert _view_ids(api, view) == aside  # exactly the set-aside tasks, in score order
    assert _view_ids(api, queue) == queued[::-1] + aside

    # "Label All Tasks": every queued task first (lowest score first), then the set-aside ones
    served = []
    for _ in range(len(queued) + 1):
        task = api.next_task(pid)
        served.append(task["id"])
        api.annotate(task["id"], "World")
    assert served == queued[::-1] + aside[:1]
    assert _view_ids(api, view) == aside  # the view does not depend on annotations


TOP_K = 8


@pytest.fixture(scope="module")
def routing_backend(ls_server, e2e_encoder):
    """A backend with ambiguity routing on, publishing the top 8 of the queue; the MC-dropout head
    (the kind the ambiguity thresholds are calibrated for), whatever the default kind."""
    service = start_backend(ls_server, e2e_encoder, ls_server.personal_access_token(), AMBIGUITY="on",
                            PUBLISH_TOP_K=str(TOP_K), MODEL_MODE="head")
    yield service
    service.stop()
    shutil.rmtree(service.workdir, ignore_errors=True)


def _scores(api, pid: int, version: str) -> dict[int, float]:
    rows = api.call("GET", "/api/predictions/", params={"project": pid})
    return {p["task"]: p["score"] for p in rows if p["model_version"] == version}


def test_backend_with_routing_makes_the_view_and_publishes_every_set_aside_task(ls_server, routing_backend):
    api = ls_server.api()
    pid, ids, rows = api.create_agnews_project("Ambiguity routing", 40, offset=6000)
    api.connect_backend(pid, routing_backend.url)
    cold = wait_for(lambda: live_version(api, pid), 180, what="cold-start priorities")
    views = {v["data"]["title"]: v["id"] for v in api.call("GET", "/api/dm/views/", params={"project": pid})}
    assert set(views) == {"Active learning queue", AMBIGUOUS_VIEW}
    scores = _scores(api, pid, cold)
    assert len(scores) == TOP_K and max(scores.values()) <= QUEUE_TOP  # nothing set aside without a model
    assert _view_ids(api, views[AMBIGUOUS_VIEW]) == []

    for task, (_, label) in list(zip(ids, rows, strict=True))[:10]:  # one round: RETRAIN_EVERY=10
        api.annotate(task, label)
    version = wait_for(lambda: live_version(api, pid, other_than=cold), 300, what="a trained version")
    scores = _scores(api, pid, version)
    queued = {t for t, s in scores.items() if s <= QUEUE_TOP}
    aside = sorted((s, t) for t, s in scores.items() if s >= AMBIGUOUS_SCORE)
    assert len(queued) + len(aside) == len(scores)  # nothing between the two ranges
    # each group is capped at top_k; one published short of it is whole, so the other holds the rest of the 30
    assert len(queued) <= TOP_K and len(aside) <= TOP_K
    assert len(queued) == TOP_K or len(aside) == min(TOP_K, 30 - len(queued))
    assert len(aside) == TOP_K or len(queued) == min(TOP_K, 30 - len(aside))
    assert aside, "the tiny random model is unsure of everything: routing sets tasks aside"
    assert _view_ids(api, views[AMBIGUOUS_VIEW]) == [t for _, t in aside]
    assert api.next_task(pid)["id"] in queued  # set-aside tasks are served only after the queued ones
