"""An annotation change counts once, however often its webhook is delivered (issue 13).

Changes are named by annotation id and update time (backend.events, pure) and counted with
SET NX in Redis (backend.projects); a payload without an annotation id counts at every delivery.
"""

from __future__ import annotations

import dataclasses

import pytest
from rq import Queue

from backend import events, projects
from backend.app import create_app
from tests.concurrency import at_once

CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text"><Choice value="pos"/><Choice value="neg"/></Choices></View>"""
STAMP = "2026-11-22T10:00:00.123456Z"


def _created(annotation_id: int = 41, updated_at: str = STAMP, project: int = 5) -> dict:
    """An ANNOTATION_CREATED payload shaped like LS 1.23's."""
    return {"action": "ANNOTATION_CREATED", "project": {"id": project},
            "task": {"id": 7, "project": project, "data": {"text": "good film"}},
            "annotation": {"id": annotation_id, "task": 7, "project": project, "updated_at": updated_at,
                           "created_at": STAMP, "result": [{"value": {"choices": ["pos"]}}]}}


# events: pure

def test_change_keys_name_annotation_and_update_time():
    created = events.decide(_created())
    assert (created.action, created.changes, created.change_keys) == (events.COUNT, 1, (f"41@{STAMP}",))
    updated = events.decide(dict(_created(updated_at="2026-11-22T10:05:00Z"), action="ANNOTATION_UPDATED"))
    assert updated.change_keys == ("41@2026-11-22T10:05:00Z",)  # an edit is a new change


def test_bulk_events_name_each_annotation():
    bulk = events.decide({"action": "ANNOTATIONS_CREATED", "project": {"id": 5},
                          "annotation": [{"id": 1, "updated_at": STAMP}, {"id": 2, "updated_at": STAMP}, {"x": 1}]})
    assert bulk.changes == 3 and bulk.change_keys == (f"1@{STAMP}", f"2@{STAMP}")
    deleted = events.decide({"action": "ANNOTATIONS_DELETED", "project": {"id": 5},
                             "annotations": [{"id": 1}, {"id": 2}]})
    assert deleted.changes == 2 and deleted.change_keys == ("1:deleted", "2:deleted")


@pytest.mark.parametrize("annotation, event, key", [
    ({"id": 3}, "ANNOTATION_CREATED", "3:created"),  # a creation happens once: its id names it
    ({"id": 3}, "ANNOTATION_UPDATED", None),  # an update without a time cannot be told from the next
    ({"id": 3, "updated_at": "x" * 65}, "ANNOTATION_UPDATED", None),
    ({"id": "3", "updated_at": STAMP}, "ANNOTATION_CREATED", None),
    ({"id": True, "updated_at": STAMP}, "ANNOTATION_CREATED", None),
    ({"id": 0, "updated_at": STAMP}, "ANNOTATION_CREATED", None),
    ({"id": 2**70, "updated_at": STAMP}, "ANNOTATION_CREATED", None),
    ({"updated_at": STAMP}, "ANNOTATION_CREATED", None),
    ("junk", "ANNOTATION_CREATED", None),
])
def test_change_key_edge_cases(annotation, event, key):
    assert events.change_key(event, annotation) == key


def test_a_payload_without_an_annotation_id_has_no_key():
    d = events.decide({"action": "ANNOTATION_CREATED", "project": {"id": 5}, "task": {"id": 7}})
    assert (d.changes, d.change_keys) == (1, ())


# projects: Redis

def test_count_changes_counts_each_key_once(r):
    first = projects.count_changes(r, 5, 2, every=10, keys=("1@a", "2@a"))
    assert (first.counted, first.duplicates, first.retrain) == (2, 0, False)
    again = projects.count_changes(r, 5, 3, every=10, keys=("1@a", "2@a"))  # plus one without a key
    assert (again.counted, again.duplicates) == (1, 2)
    assert int(r.get(projects.key(5, "changes"))) == 3
    assert 0 < r.ttl(projects.key(5, "seen:1@a")) <= projects.SEEN_TTL
    other = projects.count_changes(r, 6, 1, every=10, keys=("1@a",))  # another project's annotation 1
    assert other.counted == 1


# the app

@pytest.fixture
def app(settings, r):
    app = create_app(dataclasses.replace(settings, retrain_every=2))
    response = app.test_client().post("/setup", json={"project": "5.1", "schema": CONFIG})
    assert response.status_code == 200
    return app


def _retrains(r) -> int:
    return len([j for j in Queue("train", connection=r).jobs if j.func_name.endswith(".retrain")])


@pytest.mark.faults
def test_five_deliveries_of_one_annotation_count_once(app, r):
    client = app.test_client()
    for _ in range(5):
        response = client.post("/webhook", json=_created())
        assert response.status_code == 200 and response.get_json()["action"] == "count"
    assert int(r.get(projects.key(5, "changes"))) == 1
    assert _retrains(r) == 0  # RETRAIN_EVERY=2: one change is not enough
    assert "al_duplicate_changes_total 4" in client.get("/metrics").get_data(as_text=True)
    client.post("/webhook", json=_created(annotation_id=42))
    assert _retrains(r) == 1


@pytest.mark.faults
def test_concurrent_deliveries_of_one_annotation_count_once(app, r):
    clients = iter([app.test_client() for _ in range(5)])  # one client per thread
    answers = at_once(lambda: next(clients).post("/webhook", json=_created()).status_code, 5)
    assert answers == [200] * 5
    assert int(r.get(projects.key(5, "changes"))) == 1
    assert _retrains(r) == 0


def test_an_edit_of_the_same_annotation_is_a_new_change(app, r):
    client = app.test_client()
    client.post("/webhook", json=_created())
    edited = dict(_created(updated_at="2026-11-22T10:07:00.000000Z"), action="ANNOTATION_UPDATED")
    client.post("/webhook", json=edited)
    client.post("/webhook", json=edited)
    assert _retrains(r) == 1


def test_bulk_deliveries_count_each_annotation_once(app, r):
    client = app.test_client()
    bulk = {"action": "ANNOTATIONS_CREATED", "project": {"id": 5},
            "annotation": [{"id": i, "updated_at": STAMP} for i in (1, 2, 3)]}
    client.post("/webhook", json=bulk)
    client.post("/webhook", json=bulk)
    assert _retrains(r) == 1  # 3 changes reached RETRAIN_EVERY=2 once; the counter restarted
    assert int(r.get(projects.key(5, "changes"))) == 0
    deleted = {"action": "ANNOTATIONS_DELETED", "project": {"id": 5}, "annotations": [{"id": 1}]}
    client.post("/webhook", json=deleted)
    client.post("/webhook", json=deleted)
    assert int(r.get(projects.key(5, "changes"))) == 1  # the deletion, counted once


def test_payloads_without_an_annotation_id_count_at_every_delivery(app, r):
    client = app.test_client()
    payload = {"action": "ANNOTATION_CREATED", "project": {"id": 5}, "task": {"id": 7, "project": 5}}
    client.post("/webhook", json=payload)
    client.post("/webhook", json=payload)
    assert _retrains(r) == 1
