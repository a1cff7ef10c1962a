"""Who may drive the backend through /webhook (issue 13): only projects set up through /setup,
only bodies up to MAX_BODY_BYTES, only under the secret path prefix when WEBHOOK_SECRET is set.

Flask's test client on a real Redis, no worker: enqueued jobs stay in their queues.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging

import pytest
from rq import Queue

from backend import jobqueue, projects
from backend.app import create_app
from backend.secret_path import MASK, VIA_SECRET, SecretPathPrefix
from backend.settings import Settings, SettingsError

CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text"><Choice value="pos"/><Choice value="neg"/></Choices></View>"""
SECRET = "s3cr3t-Path_Prefix-0123456789abcdef"
UNKNOWN = 987654


@pytest.fixture
def client(settings):
    return create_app(dataclasses.replace(settings, retrain_every=1)).test_client()


def _queued(r) -> dict[str, list[str]]:
    return {name: [job.func_name.rsplit(".", 1)[-1] for job in Queue(name, connection=r).jobs]
            for name in jobqueue.QUEUES}


def _set_up(client, project_id: int, prefix: str = "", **kwargs) -> None:
    response = client.post(f"{prefix}/setup", json={"project": f"{project_id}.1", "schema": CONFIG}, **kwargs)
    assert response.status_code == 200, response.get_json()


def _one_line_error(response) -> str:
    error = response.get_json()["error"]
    assert error and "\n" not in error and "Traceback" not in error
    return error


# 1. Only /setup makes a project one the backend acts on.

@pytest.mark.faults
@pytest.mark.parametrize("payload", [
    {"action": "START_TRAINING", "project": {"id": UNKNOWN}},
    {"action": "ANNOTATION_CREATED", "project": {"id": UNKNOWN}, "annotation": {"id": 1, "project": UNKNOWN}},
    {"action": "TASKS_CREATED", "project": {"id": UNKNOWN}, "tasks": [{"id": 3}]},
    {"action": "PROJECT_UPDATED", "project": {"id": UNKNOWN, "label_config": CONFIG}},
    {"action": "TASKS_DELETED", "project": {"id": UNKNOWN}},
])
def test_webhook_for_a_project_never_set_up_is_refused_and_changes_nothing(client, r, payload):
    response = client.post("/webhook", json=payload)
    assert response.status_code == 403
    error = _one_line_error(response)
    assert f"project {UNKNOWN} is not set up" in error and "/setup" in error
    assert projects.known_projects(r) == []  # so no reconcile ever tries to reach it
    assert r.keys("al:p:*") == []
    assert _queued(r) == {"train": [], "score": [], "shard": [], "cleanup": []}
    assert "al_webhooks_total{" not in client.get("/metrics").get_data(as_text=True)


def test_only_setup_makes_a_project_known(client, r):
    start = {"action": "START_TRAINING", "project": {"id": UNKNOWN}}
    assert client.post("/webhook", json=start).status_code == 403
    _set_up(client, UNKNOWN)
    assert projects.known_projects(r) == [UNKNOWN]
    response = client.post("/webhook", json=start)
    assert response.status_code == 200 and response.get_json()["action"] == "retrain"
    assert _queued(r) == {"train": ["retrain"], "score": ["prepare_project"], "shard": [], "cleanup": []}


# 2. Bodies over MAX_BODY_BYTES: 413, unread.

class _Body(io.RawIOBase):
    """A 40 MB request body that counts the bytes the app reads from it."""

    def __init__(self, size: int = 40_000_000):
        self.prefix = b'{"action": "ANNOTATION_CREATED", "project": {"id": 5}, "pad": "'
        self.left, self.read_bytes = size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:  # the test client asks for the position; the app never seeks
        return True

    def tell(self) -> int:
        return 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def readinto(self, buffer) -> int:
        chunk = (self.prefix + b"x" * len(buffer))[:min(len(buffer), self.left)]
        self.left -= len(chunk)
        self.prefix = self.prefix[len(chunk):]
        buffer[:len(chunk)] = chunk
        self.read_bytes += len(chunk)
        return len(chunk)


def _nothing_happened(client, r, queued_before) -> None:
    assert _queued(r) == queued_before
    assert r.get(projects.key(5, "changes")) is None
    assert "al_webhooks_total{" not in client.get("/metrics").get_data(as_text=True)


@pytest.mark.faults
def test_a_20_mb_webhook_is_413_and_counts_nothing(client, r):
    _set_up(client, 5)
    before = _queued(r)
    body = b'{"action": "ANNOTATION_CREATED", "project": {"id": 5}, "pad": "' + b"x" * 20_000_000 + b'"}'
    response = client.post("/webhook", data=body, content_type="application/json")
    assert response.status_code == 413
    assert "MAX_BODY_BYTES" in _one_line_error(response)
    _nothing_happened(client, r, before)


@pytest.mark.faults
def test_an_oversized_content_length_is_refused_before_reading(client, r):
    _set_up(client, 5)
    before = _queued(r)
    body = _Body()
    response = client.post("/webhook", input_stream=body, content_type="application/json",
                           environ_overrides={"CONTENT_LENGTH": str(20_000_000)})
    assert response.status_code == 413
    assert body.read_bytes == 0
    _nothing_happened(client, r, before)


@pytest.mark.faults
def test_a_chunked_body_is_read_only_to_the_limit(client, r, settings):
    """A chunked body has no Content-Length: the app reads one byte past the limit, then refuses."""
    _set_up(client, 5)
    before = _queued(r)
    body = _Body()
    response = client.post("/webhook", input_stream=body, content_type="application/json",
                           headers={"Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True})  # as gunicorn sets it
    assert response.status_code == 413
    assert settings.max_body_bytes < body.read_bytes <= settings.max_body_bytes + 64 * 1024
    _nothing_happened(client, r, before)


def test_a_chunked_body_within_the_limit_is_served(client, r):
    _set_up(client, 5)
    response = client.post("/webhook", input_stream=io.BytesIO(b'{"action": "START_TRAINING", "project": 5}'),
                           content_type="application/json", headers={"Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 200 and response.get_json()["action"] == "retrain"


def test_the_default_limit_takes_a_full_ls_batch_of_new_tasks(client, r):
    """LS sends TASKS_CREATED in batches of up to 5,000 tasks (its WEBHOOK_BATCH_SIZE), each
    serialised with all its fields; with 1,000-character texts that is about 7 MB."""
    _set_up(client, 5)
    task = {"data": {"text": "t" * 1000}, "meta": {}, "created_at": "2026-11-22T10:00:00.000000Z",
            "updated_at": "2026-11-22T10:00:00.000000Z", "is_labeled": False, "overlap": 1,
            "total_annotations": 0, "cancelled_annotations": 0, "total_predictions": 0, "comment_count": 0,
            "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": 5,
            "updated_by": None, "file_upload": 12, "comment_authors": [], "inner_id": 1}
    tasks = [dict(task, id=i) for i in range(1, 5001)]
    response = client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 5}, "tasks": tasks})
    assert Settings().max_body_bytes < 20_000_000
    assert response.status_code == 200 and response.get_json()["action"] == "score_new"


def test_json_nested_past_the_recursion_limit_is_400(client, r):
    _set_up(client, 5)
    for path in ("/webhook", "/setup", "/predict"):
        response = client.post(path, data=b"[" * 100_000, content_type="application/json")
        assert response.status_code == 400, path
        assert "JSON object" in _one_line_error(response)


def test_max_body_bytes_is_a_setting():
    assert Settings.from_env({"MAX_BODY_BYTES": "2048"}).max_body_bytes == 2048
    with pytest.raises(SettingsError, match="MAX_BODY_BYTES"):
        Settings.from_env({"MAX_BODY_BYTES": "10"})


# 4. WEBHOOK_SECRET: a secret path prefix, the one credential LS's webhooks can carry.

@pytest.fixture
def secret_settings(settings):
    return dataclasses.replace(settings, retrain_every=1, webhook_secret=SECRET)


@pytest.fixture
def secret_client(secret_settings):
    return create_app(secret_settings).test_client()


def test_ls_routes_are_served_under_the_secret_prefix(secret_client, r):
    for path in (f"/{SECRET}", f"/{SECRET}/", f"/{SECRET}/health", "/health"):
        assert secret_client.get(path).get_json() == {"status": "UP", "model_class": "ActiveLearner"}, path
    _set_up(secret_client, 5, prefix=f"/{SECRET}")
    response = secret_client.post(f"/{SECRET}/webhook", json={"action": "START_TRAINING", "project": 5})
    assert response.status_code == 200 and response.get_json()["job"]
    tasks = [{"id": 1, "data": {"text": "good"}}]
    response = secret_client.post(f"/{SECRET}/predict", json={"tasks": tasks, "project": "5.1", "label_config": CONFIG})
    assert response.status_code == 200 and len(response.get_json()["results"]) == 1


@pytest.mark.faults
@pytest.mark.parametrize("path", [
    "/webhook", f"/{SECRET[:-1]}/webhook", f"/{SECRET}x/webhook", f"/{SECRET.upper()}/webhook",
    f"/x/{SECRET}/webhook", f"/{SECRET}/{SECRET}/webhook",
])
def test_webhooks_without_the_secret_are_refused(secret_client, r, path):
    _set_up(secret_client, 5, prefix=f"/{SECRET}")
    before = _queued(r)
    response = secret_client.post(path, json={"action": "START_TRAINING", "project": 5})
    assert response.status_code == 404
    error = _one_line_error(response)
    assert SECRET not in response.get_data(as_text=True)
    if path == "/webhook":
        assert "secret path prefix" in error and "WEBHOOK_SECRET" in error
    assert _queued(r) == before
    assert "al_webhooks_total{" not in secret_client.get("/metrics").get_data(as_text=True)


@pytest.mark.faults
def test_setup_and_predict_without_the_secret_are_refused(secret_client, r):
    """/setup makes a project known: without the secret nobody may connect one."""
    response = secret_client.post("/setup", json={"project": "9.1", "schema": CONFIG})
    assert response.status_code == 404 and "/setup is served only under the secret path prefix" in \
        _one_line_error(response)
    assert not projects.is_known(r, 9) and not any(_queued(r).values())
    tasks = [{"id": 1, "data": {"text": "good"}}]
    response = secret_client.post("/predict", json={"tasks": tasks, "project": "9.1", "label_config": CONFIG})
    assert response.status_code == 404 and SECRET not in response.get_data(as_text=True)


def test_basic_auth_still_guards_the_other_routes_under_the_prefix(secret_settings, r):
    app = create_app(dataclasses.replace(secret_settings, basic_auth_user="u", basic_auth_pass="p"))
    client = app.test_client()
    good = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    setup = {"project": "5.1", "schema": CONFIG}
    assert client.post(f"/{SECRET}/setup", json=setup).status_code == 401
    assert client.get(f"/{SECRET}/").status_code == 401
    assert client.post(f"/{SECRET}/setup", json=setup, headers=good).status_code == 200
    assert client.get(f"/{SECRET}/health").status_code == 200  # LS's health check: open, like /health
    # LS cannot send credentials with a webhook: the secret prefix is its credential.
    assert client.post(f"/{SECRET}/webhook", json={"action": "START_TRAINING", "project": 5}).status_code == 200
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": 5}, headers=good).status_code == 404


def test_without_a_secret_nothing_is_served_under_a_prefix(client, r):
    _set_up(client, 5)
    assert client.post(f"/{SECRET}/webhook", json={"action": "START_TRAINING", "project": 5}).status_code == 404
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": 5}).status_code == 200


def test_the_secret_never_reaches_logs_or_answers(secret_client, r, caplog):
    caplog.set_level(logging.DEBUG)
    answers = [
        secret_client.post(f"/{SECRET}/setup", json={"project": "5.1", "schema": CONFIG}),
        secret_client.post(f"/{SECRET}/webhook", json={"action": "START_TRAINING", "project": 5}),
        secret_client.post(f"/{SECRET}/webhook", data=b"{junk", content_type="application/json"),
        secret_client.post(f"/{SECRET}/webhook", json={"action": "START_TRAINING", "project": UNKNOWN}),
        secret_client.post("/webhook", json={"action": "START_TRAINING", "project": 5}),
        secret_client.get(f"/{SECRET}/nope"),
        secret_client.get(f"/{SECRET}/webhook"),  # 405
        secret_client.get("/jobs?project=5"),
        secret_client.get("/metrics"),
    ]
    for answer in answers:
        assert SECRET not in answer.get_data(as_text=True)
        assert all(SECRET not in value for value in answer.headers.values())
    assert SECRET not in caplog.text


def test_the_access_log_shows_the_prefix_masked():
    """gunicorn's access log prints RAW_URI from the same environ the app gets."""
    seen = {}

    def app(environ, start_response):
        seen.update(path=environ["PATH_INFO"], via=environ.get(VIA_SECRET))
        start_response("200 OK", [])
        return [b""]

    middleware = SecretPathPrefix(app, SECRET)
    environ = {"PATH_INFO": f"/{SECRET}/webhook", "QUERY_STRING": "x=1",
               "RAW_URI": f"/%{ord(SECRET[0]):X}{SECRET[1:]}/webhook?x=1", "REQUEST_URI": f"/{SECRET}/webhook?x=1"}
    middleware(environ, lambda *a: None)
    assert seen == {"path": "/webhook", "via": True}
    assert environ["RAW_URI"] == environ["REQUEST_URI"] == f"/{MASK}/webhook?x=1"
    assert SECRET not in repr(middleware)
    plain = {"PATH_INFO": "/webhook", "RAW_URI": "/webhook"}
    middleware(plain, lambda *a: None)
    assert seen == {"path": "/webhook", "via": None} and plain["RAW_URI"] == "/webhook"


@pytest.mark.parametrize("value", ["short", "has a space in it ok", "slash/inside/0123456789", "é" * 20])
def test_a_weak_or_unusable_secret_is_refused_without_echoing_it(value):
    with pytest.raises(SettingsError, match="WEBHOOK_SECRET") as info:
        Settings.from_env({"WEBHOOK_SECRET": value})
    assert value not in str(info.value)


def test_a_url_safe_secret_is_accepted():
    assert Settings.from_env({"WEBHOOK_SECRET": SECRET}).webhook_secret == SECRET
