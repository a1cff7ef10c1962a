"""Fuzz the HTTP routes: arbitrary JSON and bytes never give a 5xx or a traceback (issue 13).

Every answer is JSON; every refusal is a 4xx with a one-line ``error``. Projects 1-3 are set
up first so that payloads naming them get past the known-project check into the deeper code.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from backend.app import create_app
from backend.events import COUNTED

CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text"><Choice value="pos"/><Choice value="neg"/></Choices></View>"""
KEYS = ["action", "project", "task", "tasks", "annotation", "annotations", "id", "updated_at", "data",
        "text", "label_config", "schema", "hostname", "access_token", "model_version", "result"]
ACTIONS = [*COUNTED, "START_TRAINING", "TASKS_CREATED", "PROJECT_UPDATED", "TASKS_DELETED", ""]

scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats()
           | st.text(max_size=20) | st.sampled_from([1, 2, 3, "2", "3.17", CONFIG, "<View/>", *ACTIONS]))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=6), max_leaves=25)
bodies = (json_values.map(lambda value: json.dumps(value).encode())
          | st.binary(max_size=300)
          | json_values.map(lambda value: json.dumps(value).encode()[:-1]))  # cut short
FUZZ = hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def client(settings):
    client = create_app(settings).test_client()
    for project in (1, 2, 3):
        assert client.post("/setup", json={"project": f"{project}.1", "schema": CONFIG}).status_code == 200
    return client


def _assert_clean(response) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)
    text = response.get_data(as_text=True)
    assert "Traceback" not in text
    body = json.loads(text) if response.mimetype == "application/json" else None
    assert body is not None, (response.status_code, response.mimetype, text[:200])
    if response.status_code >= 400:
        assert isinstance(body["error"], str) and body["error"] and "\n" not in body["error"]


@pytest.mark.faults
@pytest.mark.parametrize("path", ["/webhook", "/setup", "/predict"])
@FUZZ
@given(body=bodies, content_type=st.sampled_from(["application/json", "text/plain", None]))
def test_posted_bodies_never_5xx(client, path, body, content_type):
    _assert_clean(client.post(path, data=body, content_type=content_type))


@pytest.mark.faults
@pytest.mark.parametrize("path", ["/webhook", "/setup", "/predict"])
@FUZZ
@given(payload=json_values)
def test_posted_json_never_5xx(client, path, payload):
    _assert_clean(client.post(path, json=payload))


@pytest.mark.faults
@FUZZ
@given(payload=st.fixed_dictionaries(
    {"action": st.sampled_from(ACTIONS), "project": st.sampled_from([1, 2, {"id": 3}, "3.1"]) | json_values},
    optional={key: json_values for key in ("task", "tasks", "annotation", "annotations")}))
def test_webhooks_shaped_like_ls_events_never_5xx(client, payload):
    _assert_clean(client.post("/webhook", json=payload))


@pytest.mark.faults
@FUZZ
@given(tasks=st.lists(st.fixed_dictionaries({"id": json_values}, optional={"data": json_values}), max_size=4)
       | json_values, project=st.sampled_from(["1.1", 2, None]) | json_values,
       config=st.sampled_from([CONFIG, "", "<View>", None]) | json_values)
def test_predict_shaped_like_ls_calls_never_5xx(client, tasks, project, config):
    _assert_clean(client.post("/predict", json={"tasks": tasks, "project": project, "label_config": config}))


@pytest.mark.faults
@FUZZ
@given(value=st.text(max_size=40))
def test_jobs_queries_never_5xx(client, value):
    _assert_clean(client.get("/jobs", query_string={"project": value}))
    job_id = "".join("_" if c in "/?#" else c for c in value) or "x"
    _assert_clean(client.get("/jobs/" + job_id))
