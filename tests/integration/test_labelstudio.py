"""LabelStudioClient against a real Label Studio 1.23 server (see tests/e2e/lsserver.py)."""

from __future__ import annotations

import random

import httpx
import pytest
from label_studio_sdk import LabelStudio

import backend.labelstudio as labelstudio
from backend.labelstudio import LabelStudioClient, LabelStudioError
from tests.e2e.lsserver import agnews, free_port, ls_server  # noqa: F401  (session fixture)

pytestmark = pytest.mark.e2e


@pytest.fixture
def ls(ls_server, request):  # noqa: F811
    """The shared server; prints its log tail when the test fails."""
    failed = request.session.testsfailed
    yield ls_server
    if request.session.testsfailed > failed:
        print(ls_server.log_tail())


@pytest.fixture
def client(ls):
    return LabelStudioClient(ls.url, ls.token)


@pytest.fixture
def project(ls, request):
    """A fresh Text+Choices project holding 40 AG News tasks: (project id, task ids)."""
    api = ls.api()
    pid = api.create_project(f"client {request.node.name}"[:50])
    ids = api.import_tasks(pid, [text for text, _ in agnews(40)])
    return pid, ids


def choice(label: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def predictions(task_ids, scores, version):
    return [{"task": t, "result": choice("World"), "score": s, "model_version": version}
            for t, s in zip(task_ids, scores, strict=True)]


def test_get_project_reports_config_sampling_and_model_version(ls, client, project):
    pid, ids = project
    got = client.get_project(pid)
    assert got["id"] == pid and got["title"].startswith("client ")
    assert '<Choices name="label"' in got["label_config"]
    assert got["model_version"] == "" and got["sampling"] == "Sequential sampling"

    client.set_sampling(pid, "Uncertainty sampling")
    with pytest.raises(LabelStudioError, match=r"HTTP 400: .*Model version doesn't exist"):
        client.set_model_version(pid, "p1-v0001-abcdef")  # LS wants its predictions in first
    client.import_predictions(pid, predictions(ids[:1], [0.5], "p1-v0001-abcdef"))
    client.set_model_version(pid, "p1-v0001-abcdef")
    got = client.get_project(pid)
    assert got["sampling"] == "Uncertainty sampling"
    assert got["model_version"] == "p1-v0001-abcdef"
    assert ls.api().project(pid)["sampling"] == "Uncertainty sampling"


def test_list_tasks_filters_by_id_on_the_server_and_keeps_order(ls, client, project):
    pid, ids = project
    texts = [text for text, _ in agnews(40)]
    listed = client.list_tasks(pid)
    assert [t["id"] for t in listed] == ids
    assert [t["data"]["text"] for t in listed] == texts
    assert set(listed[0]) == {"id", "data"}

    newer = client.list_tasks(pid, after_id=ids[24])
    assert [t["id"] for t in newer] == ids[25:]
    assert client.list_tasks(pid, after_id=ids[-1]) == []


def test_listing_follows_pages_when_the_server_caps_page_size(ls, client, project, monkeypatch):
    pid, ids = project
    monkeypatch.setattr(labelstudio, "LIST_PAGE", 7)  # pages of 7, as if LS capped them there too
    assert [t["id"] for t in client.list_tasks(pid)] == ids
    assert [t["id"] for t in client.list_tasks(pid, after_id=ids[9])] == ids[10:]
    assert client.task_ids(pid) == set(ids)


def test_task_ids_and_count_notice_deleted_tasks(ls, client, project):
    pid, ids = project
    assert client.task_ids(pid) == set(ids)
    assert client.count_tasks(pid) == len(ids)
    ls.api().call("DELETE", f"/api/tasks/{ids[3]}/")
    assert client.task_ids(pid) == set(ids) - {ids[3]}
    assert client.count_tasks(pid) == len(ids) - 1
    assert client.get_project(pid)["task_number"] == len(ids) - 1  # the same count, in the project record


def test_annotated_tasks_keeps_the_latest_non_cancelled_annotation(ls, client, project):
    pid, ids = project
    api = ls.api()
    api.annotate(ids[0], "Sports")
    api.annotate(ids[0], "Business")          # the newer annotation wins
    api.annotate(ids[1], "World", cancelled=True)  # skipped: not a label
    api.annotate(ids[2], "Sci/Tech")
    api.annotate(ids[2], "World", cancelled=True)

    annotated = client.annotated_tasks(pid)
    assert [t["id"] for t in annotated] == [ids[0], ids[2]]
    assert annotated[0]["result"][0]["value"]["choices"] == ["Business"]
    assert annotated[1]["result"][0]["value"]["choices"] == ["Sci/Tech"]
    assert annotated[0]["data"]["text"] == agnews(1)[0][0]
    assert client.count_annotations(pid) == 3
    assert client.get_project(pid)["total_annotations_number"] == 3  # the same count, in the project record


def test_uncertainty_sampling_serves_the_lowest_score_of_the_current_version(ls, client, monkeypatch):
    """Priorities work end to end: import, switch version, LS's next task is the lowest score."""
    api = ls.api()
    pid = api.create_project("client priorities")
    ids = api.import_tasks(pid, [text for text, _ in agnews(300, offset=100)])
    rng = random.Random(7)
    old_scores = [rng.random() for _ in ids]
    new_scores = [rng.random() for _ in ids]
    assert min(range(300), key=old_scores.__getitem__) != min(range(300), key=new_scores.__getitem__)

    monkeypatch.setattr(labelstudio, "IMPORT_CHUNK", 128)  # 3 requests
    assert client.import_predictions(pid, predictions(ids, old_scores, "v-old")) == 300
    assert client.import_predictions(pid, predictions(ids, new_scores, "v-new")) == 300
    client.set_sampling(pid)
    client.set_model_version(pid, "v-new")

    ranked = [t for _, t in sorted(zip(new_scores, ids, strict=True))]
    first = api.next_task(pid)
    assert first["id"] == ranked[0]

    # annotating the top task makes the runner-up the next task
    api.annotate(ranked[0], "World")
    assert api.next_task(pid)["id"] == ranked[1]

    # the old version goes away, the current one stays in force
    assert client.delete_predictions(pid, "v-old") == 300
    versions = api.call("GET", f"/api/projects/{pid}/model-versions/")
    assert versions == {"v-new": 300}
    assert client.get_project(pid)["model_version"] == "v-new"
    assert api.next_task(pid)["id"] == ranked[1]
    assert client.delete_predictions(pid, "v-old") == 0


def test_chunked_deletion_stops_between_chunks_and_spares_other_versions(ls, client, project):
    """A version deleted one prediction per request: it stops only at a chunk boundary when asked,
    resumes where it stopped, never touches the live version and leaves LS sampling by it."""
    pid, ids = project
    client.import_predictions(pid, predictions(ids, [0.3] * len(ids), "v-old"))
    client.import_predictions(pid, predictions(ids[:10], [0.1] * 10, "v-live"))
    client.set_model_version(pid, "v-live")
    assert len(client.prediction_ids(pid, "v-old")) == 40

    checks = []

    def stop_at_second_check():
        checks.append(len(client.prediction_ids(pid, "v-old")))
        return len(checks) == 2

    assert client.delete_predictions_in_chunks(pid, "v-old", chunk=15, should_stop=stop_at_second_check) == (30, False)
    assert checks == [25, 10]  # asked after each full chunk, never mid-chunk
    assert client.model_versions(pid) == {"v-old": 10, "v-live": 10}
    assert client.delete_predictions_in_chunks(pid, "v-old", chunk=15) == (10, True)
    assert client.model_versions(pid) == {"v-live": 10}
    assert client.get_project(pid)["model_version"] == "v-live"
    assert client.delete_predictions_in_chunks(pid, "v-old") == (0, True)
    with pytest.raises(LabelStudioError, match="empty model_version"):
        client.delete_predictions_in_chunks(pid, "")
    with pytest.raises(LabelStudioError, match="chunk=0 must be >= 1"):
        client.delete_predictions_in_chunks(pid, "v-live", chunk=0)
    assert client.model_versions(pid) == {"v-live": 10}


def test_model_versions_counts_each_versions_predictions(client, project):
    pid, ids = project
    assert client.model_versions(pid) == {}
    client.import_predictions(pid, predictions(ids[:5], [0.1] * 5, "p1-v0001-abcdef"))
    client.import_predictions(pid, predictions(ids[:2], [0.2] * 2, "p1-v0002-abcdef"))
    assert client.model_versions(pid) == {"p1-v0001-abcdef": 5, "p1-v0002-abcdef": 2}


def test_ensure_view_is_idempotent_and_orders_by_priority(ls, client, project):
    pid, ids = project
    rng = random.Random(3)
    scores = [rng.random() for _ in ids]
    client.import_predictions(pid, predictions(ids, scores, "v1"))
    client.set_model_version(pid, "v1")

    view_id = client.ensure_view(pid)
    assert client.ensure_view(pid) == view_id
    views = ls.api().call("GET", "/api/dm/views/", params={"project": pid})
    assert [v["data"]["title"] for v in views].count("Active learning queue") == 1
    hidden = next(v for v in views if v["id"] == view_id)["data"]["hiddenColumns"]["explore"]
    assert "tasks:inner_id" in hidden
    assert not {"tasks:id", "tasks:predictions_score", "tasks:predictions_model_versions"} & set(hidden)

    listed = ls.api().call("GET", "/api/tasks", params={"view": view_id, "page_size": 100, "include": "id"})
    assert [t["id"] for t in listed["tasks"]] == [t for _, t in sorted(zip(scores, ids, strict=True))]


def test_import_predictions_for_a_missing_task_fails_with_a_reason(client, project):
    pid, ids = project
    with pytest.raises(LabelStudioError) as err:
        client.import_predictions(pid, predictions([max(ids) + 10_000], [0.5], "v1"))
    assert "import predictions" in str(err.value) and "HTTP 4" in str(err.value)
    assert "\n" not in str(err.value)


def test_errors_are_one_line(ls, client):
    with pytest.raises(LabelStudioError, match=r"get project 987654: HTTP 404"):
        client.get_project(987654)
    with pytest.raises(LabelStudioError, match=r"HTTP 401"):
        LabelStudioClient(ls.url, "not-a-token").count_annotations(1)
    with pytest.raises(LabelStudioError, match=r"cannot reach Label Studio"):
        LabelStudioClient(f"http://127.0.0.1:{free_port()}", ls.token, timeout=2).get_project(1)
    with pytest.raises(LabelStudioError, match=r"not one of"):
        client.set_sampling(1, "Random")
    with pytest.raises(LabelStudioError, match=r"empty model_version"):
        client.delete_predictions(1, "")
    with pytest.raises(LabelStudioError, match=r"no Label Studio API key"):
        LabelStudioClient(ls.url, "")


def test_personal_access_token_works_where_legacy_tokens_are_off(ls, project):
    pid, _ = project
    pat = ls.personal_access_token()
    assert pat.count(".") == 2  # a JWT refresh token
    assert LabelStudioClient(ls.url, pat).get_project(pid)["id"] == pid

    admin = LabelStudio(base_url=ls.url, api_key=pat)
    ttl = admin.jwt_settings.get().api_token_ttl_days
    admin.jwt_settings.update(api_token_ttl_days=ttl, api_tokens_enabled=True, legacy_api_tokens_enabled=False)
    try:
        with pytest.raises(LabelStudioError, match=r"HTTP 401"):
            LabelStudioClient(ls.url, ls.token).get_project(pid)
        assert LabelStudioClient(ls.url, pat).count_annotations(pid) == 0
    finally:
        admin.jwt_settings.update(api_token_ttl_days=ttl, api_tokens_enabled=True, legacy_api_tokens_enabled=True)
    assert httpx.get(f"{ls.url}/api/projects/{pid}/", headers={"Authorization": f"Token {ls.token}"}).is_success
