"""The status page and JSON (backend/status.py) and the audit records they read (backend/audits.py)."""

import base64
import dataclasses
import re

import pytest

from backend import audits, jobqueue, projects, status
from backend.app import create_app

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
V1, V2 = "p3-v0001-aaaaaa", "p3-v0002-bbbbbb"


@pytest.fixture
def client(settings):
    return create_app(settings).test_client()


@pytest.fixture
def audited(r):
    """Project 3 with a live V2 and three audit items of V1 (2 correct) and two of V2 (1 correct)."""
    projects.register(r, 3)
    projects.set_published_version(r, 3, V2)
    projects.set_trained_count(r, 3, 40)
    audits.set_version_labels(r, 3, V1, 20)
    audits.set_version_labels(r, 3, V2, 40)
    audits.record_version(r, 3, audits.VersionRecord(V1, {1: "pos", 2: "neg", 3: "pos"}, {}))
    audits.pair_labels(r, 3, V1, {1: "pos", 2: "pos", 3: "pos", 9: "neg"})
    audits.record_version(r, 3, audits.VersionRecord(V2, {4: "neg", 5: "neg"}, {}))
    audits.pair_labels(r, 3, V2, {1: "pos", 4: "neg", 5: "pos"})
    return r


@pytest.mark.parametrize("headers", [{}, {"Accept": "*/*"}, {"Accept": "application/json"},
                                     {"Accept": "application/json, text/html;q=0.5"}])
def test_root_answers_json_to_everything_but_a_browser(client, headers):
    response = client.get("/", headers=headers)
    assert response.status_code == 200
    assert response.get_json() == {"status": "UP", "model_class": "ActiveLearner"}


def test_root_shows_the_status_page_to_a_browser(client, audited):
    response = client.get("/", headers=BROWSER)
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert 'data-project="3"' in page and "<svg" in page and "<script" not in page
    assert 'name="viewport"' in page  # readable on a phone
    assert _field(page, "model_version") == V2
    assert _field(page, "labels") == "40"
    assert _field(page, "accuracy") == "60.0%"  # 3 of 5 audit items
    assert _field(page, "audit_items") == "5"
    assert _field(page, "stopping") == "keep labelling"
    assert "http://127.0.0.1:9/projects/3/data" in page


def test_page_without_projects(client):
    page = client.get("/", headers=BROWSER).get_data(as_text=True)
    assert "No project is connected yet" in page


def test_page_escapes_what_it_shows(client, r):
    projects.register(r, 5)
    projects.set_published_version(r, 5, "<b>x</b>")
    page = client.get("/", headers=BROWSER).get_data(as_text=True)
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page


def test_status_json(client, audited):
    job_id, _ = jobqueue.enqueue_retrain(audited, 3, jobqueue.JobPolicy(), "test")
    body = client.get("/projects/3/status").get_json()
    assert body["model_version"] == V2 and body["labels"] == 40 and not body["cold_start"]
    assert [j["id"] for j in body["queue"]["pending"]] == [job_id] and body["queue"]["running"] == []
    assert body["errors"] == []
    overall = body["audit"]["overall"]
    assert (overall["items"], overall["correct"], overall["accuracy"]) == (5, 3, 0.6)
    assert 0 < overall["low"] < 0.6 < overall["high"] < 1
    per_version = {v["version"]: (v["labels"], v["items"], v["correct"]) for v in body["audit"]["versions"]}
    assert per_version == {V1: (20, 3, 2), V2: (40, 2, 1)}
    assert [p["labels"] for p in body["learning_curve"]] == [20, 40]
    assert body["stopping"]["state"] == "keep labelling" and body["stopping"]["rule"]["rounds"] == 3
    assert body["links"]["project"] == "http://127.0.0.1:9/projects/3/data"


def test_status_json_refuses_unknown_and_bad_projects(client):
    assert client.get("/projects/7/status").status_code == 404
    response = client.get("/projects/abc/status")
    assert response.status_code == 400 and "error" in response.get_json()


def test_links_use_the_setup_hostname_without_an_api_key(settings, r):
    projects.save_connection(r, 3, "http://ls.example:8080/", "tok")
    links = status.project_links(r, dataclasses.replace(settings, label_studio_api_key=""), 3)
    assert links["project"] == "http://ls.example:8080/projects/3/data"


def test_the_page_and_status_are_behind_basic_auth(settings, r):
    client = create_app(dataclasses.replace(settings, basic_auth_user="u", basic_auth_pass="p")).test_client()
    projects.register(r, 3)
    good = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    assert client.get("/health").status_code == 200
    assert client.get("/", headers=BROWSER).status_code == 401
    assert client.get("/projects/3/status").status_code == 401
    assert client.get("/", headers={**BROWSER, **good}).status_code == 200
    assert client.get("/projects/3/status", headers=good).status_code == 200


def test_running_job_progress_becomes_a_percentage():
    job = {"status": "started", "progress": {"stage": "scoring", "done": 3, "total": 4}}
    assert status._with_percent(job)["percent"] == 75
    assert status._with_percent({"status": "queued", "progress": None})["percent"] is None


def test_curve_plot_places_points_inside_the_frame():
    plot = status.curve_plot([{"labels": 20, "accuracy": 0.5, "low": 0.3, "high": 0.7},
                              {"labels": 40, "accuracy": 1.0, "low": 0.8, "high": 1.0},
                              {"labels": 60, "accuracy": None, "low": 0.0, "high": 1.0}],
                             width=200, height=100, pad=10)
    assert plot["x_max"] == 40 and len(plot["points"]) == 2
    first, second = plot["points"]
    assert (first["x"], first["y"]) == (100.0, 50.0) and (second["x"], second["y"]) == (190.0, 10.0)
    assert first["y_high"] < first["y"] < first["y_low"]
    assert plot["path"] == "M100.0,50.0 L190.0,10.0"
    assert status.curve_plot([])["points"] == []


def test_a_task_is_audited_once_with_the_live_version(r):
    audits.record_version(r, 1, audits.VersionRecord(V1, {1: "pos", 2: "neg"}, {}))
    assert audits.pair_labels(r, 1, V1, {1: "neg", 7: "pos"}) == 1
    assert audits.pair_labels(r, 1, V1, {1: "pos", 2: "neg"}) == 1  # task 1 again: not counted twice
    assert audits.pair_labels(r, 1, None, {2: "neg"}) == 0
    items = audits.audit_items(r, 1)
    assert [(i.task_id, i.version, i.predicted, i.label, i.correct) for i in items] == [
        (1, V1, "pos", "neg", False), (2, V1, "neg", "neg", True)]


def test_only_the_last_versions_keep_their_predictions(r):
    for n in range(1, 6):
        audits.record_version(r, 1, audits.VersionRecord(f"p1-v000{n}-aaaaaa", {n: "pos"}, {n: "pos"}))
    audits.record_version(r, 1, audits.VersionRecord("p1-v0005-aaaaaa", {5: "neg"}, {5: "neg"}))  # a retry
    assert audits.recorded_versions(r, 1) == ["p1-v0003-aaaaaa", "p1-v0004-aaaaaa", "p1-v0005-aaaaaa"]
    assert audits.stop_predictions(r, 1, "p1-v0001-aaaaaa") == {}
    assert audits.stop_predictions(r, 1, "p1-v0005-aaaaaa") == {5: "neg"}
    audits.record_kappa(r, 1, "p1-v0005-aaaaaa", "p1-v0004-aaaaaa", 0.5, 1)
    audits.forget(r, 1)
    assert audits.recorded_versions(r, 1) == [] and audits.kappas(r, 1) == []


def test_multiple_choice_labels_have_one_canonical_form():
    assert audits.canonical(["b", "a"]) == audits.canonical(("a", "b")) == '["a", "b"]'
    assert audits.canonical("pos") == "pos"


def _field(page: str, name: str) -> str:
    match = re.search(rf'data-field="{name}">([^<]*)<', page)
    assert match, name
    return match.group(1).strip()
