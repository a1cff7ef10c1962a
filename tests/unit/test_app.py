"""The web app through Flask's test client, on a real Redis (no worker: jobs stay queued)."""

import base64
import dataclasses
import time

import pytest
from rq import Queue

from backend import projects
from backend.al.learner import ActiveLearner
from backend.al.store import ModelStore
from backend.app import create_app
from backend.settings import SettingsError

CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text"><Choice value="pos"/><Choice value="neg"/></Choices></View>"""


@pytest.fixture
def client(settings):
    return create_app(settings).test_client()


def _queued(r, name):
    return [job.func_name for job in Queue(name, connection=r).jobs]


def test_health_is_instant_and_touches_nothing(client):
    for path in ("/health", "/"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.get_json() == {"status": "UP", "model_class": "ActiveLearner"}


def test_web_process_needs_redis(settings):
    with pytest.raises(SettingsError, match="REDIS_URL"):
        create_app(dataclasses.replace(settings, redis_url=""))


def test_setup_validates_and_prepares_once(client, r):
    payload = {"project": "3.1712345678", "schema": CONFIG, "hostname": "http://127.0.0.1:8080",
               "access_token": "tok", "model_version": ""}
    start = time.monotonic()
    response = client.post("/setup", json=payload)
    assert time.monotonic() - start < 1.0
    assert response.status_code == 200
    assert response.get_json() == {"model_version": ""}
    assert projects.known_projects(r) == [3]
    assert projects.connection(r, 3) == {"hostname": "http://127.0.0.1:8080", "access_token": "tok"}
    assert _queued(r, "score") == ["workers.lifecycle.prepare_project"]
    client.post("/setup", json=payload)
    assert _queued(r, "score") == ["workers.lifecycle.prepare_project"]  # first contact only


def test_setup_returns_published_version(client, r):
    projects.set_published_version(r, 3, "p3-v0002-abcdef")
    response = client.post("/setup", json={"project": "3.1", "schema": CONFIG})
    assert response.get_json() == {"model_version": "p3-v0002-abcdef"}


def test_setup_with_changed_config_resets(client, r):
    client.post("/setup", json={"project": "3.1", "schema": CONFIG})
    client.post("/setup", json={"project": "3.1", "schema": CONFIG.replace("neg", "negative")})
    assert _queued(r, "train") == ["workers.lifecycle.reset_project"]


@pytest.mark.parametrize("payload, reason", [
    ({"project": "3.1", "schema": "<View><Image name='i' value='$i'/></View>"}, "unsupported label config"),
    ({"project": "3.1", "schema": CONFIG.replace("Choices", "Labels").replace("Choice ", "Label ")},
     "unsupported control <Labels>"),
    ({"schema": CONFIG}, "no project id"),
])
def test_setup_refuses_with_one_line_reason(client, r, payload, reason):
    response = client.post("/setup", json=payload)
    assert response.status_code == 400
    body = response.get_json()
    assert reason in body["error"] and "\n" not in body["error"] and "Traceback" not in body["error"]
    assert projects.known_projects(r) == []


def _webhook(client, payload):
    return client.post("/webhook", json=payload)


def _set_up(client, project_id):
    """Connect a project as LS does: only /setup makes a project one webhooks may drive."""
    assert client.post("/setup", json={"project": f"{project_id}.1", "schema": CONFIG}).status_code == 200


def test_webhook_counts_to_retrain_every(client, r, settings):
    _set_up(client, 5)
    for i in range(settings.retrain_every - 1):
        response = _webhook(client, {"action": "ANNOTATION_CREATED", "project": {"id": 5},
                                     "task": {"id": i + 1, "project": 5}})
        assert response.status_code == 200
    assert _queued(r, "train") == []
    response = _webhook(client, {"action": "ANNOTATION_UPDATED", "annotation": {"project": 5}})
    assert response.get_json()["action"] == "count"
    assert _queued(r, "train") == ["workers.training.retrain"]
    assert projects.known_projects(r) == [5]
    assert _queued(r, "score") == ["workers.lifecycle.prepare_project"]  # first contact via /setup only


def test_webhook_retrains_coalesce(client, r):
    _set_up(client, 5)
    first = _webhook(client, {"action": "START_TRAINING", "project": 5}).get_json()
    second = _webhook(client, {"action": "START_TRAINING", "project": 5}).get_json()
    assert first["job_id"] == second["job_id"]
    # LS's "Start Training" records the retrain from the answer's "job" key.
    assert first["job"] == first["job_id"] and first["job"]
    assert _queued(r, "train") == ["workers.training.retrain"]


def test_webhook_tasks_created_and_reset(client, r):
    _set_up(client, 5)  # records the label config
    _webhook(client, {"action": "TASKS_CREATED", "project": {"id": 5}, "tasks": [{"id": 9}, {"id": 8}]})
    jobs = Queue("score", connection=r).jobs
    assert [j.args for j in jobs if j.func_name.endswith("score_new_tasks")] == [(5, [8, 9])]
    updated = {"action": "PROJECT_UPDATED", "project": {"id": 5, "label_config": CONFIG}}
    assert _webhook(client, updated).get_json()["action"] == "ignore"  # the config /setup recorded
    changed = {"action": "PROJECT_UPDATED", "project": {"id": 5, "label_config": CONFIG + " "}}
    assert _webhook(client, changed).get_json()["action"] == "ignore"  # whitespace only
    changed["project"]["label_config"] = CONFIG.replace("pos", "positive")
    assert _webhook(client, changed).get_json()["action"] == "reset"
    assert _queued(r, "train") == ["workers.lifecycle.reset_project"]


def test_webhook_remembers_a_config_it_never_saw(client, r):
    projects.register(r, 5)  # known from before /setup recorded label configs
    updated = {"action": "PROJECT_UPDATED", "project": {"id": 5, "label_config": CONFIG}}
    assert _webhook(client, updated).get_json()["action"] == "remember_config"
    assert _webhook(client, updated).get_json()["action"] == "ignore"
    assert _queued(r, "train") == []


def test_webhook_ignores_other_events(client, r):
    _set_up(client, 5)
    response = _webhook(client, {"action": "TASKS_DELETED", "project": {"id": 5}})
    assert response.status_code == 200 and response.get_json()["action"] == "ignore"
    assert _queued(r, "train") == []


@pytest.mark.parametrize("body, reason", [
    (b"{not json", "JSON object"),
    (b"[1, 2]", "JSON object"),
    (b'{"action": "ANNOTATION_CREATED"}', "no project id"),
    (b'{"project": {"id": 1}}', "no action"),
])
def test_webhook_malformed_is_400_and_changes_nothing(client, r, body, reason):
    response = client.post("/webhook", data=body, content_type="application/json")
    assert response.status_code == 400
    assert reason in response.get_json()["error"]
    assert r.keys("al:p:*") == [] and projects.known_projects(r) == []
    assert _queued(r, "train") == [] and _queued(r, "score") == []


def test_webhook_is_fast(client):
    _set_up(client, 5)
    start = time.monotonic()
    for _ in range(50):
        _webhook(client, {"action": "ANNOTATION_CREATED", "project": {"id": 5}})
    assert (time.monotonic() - start) / 50 < 0.05


def test_metrics_exposition(client, r):
    _set_up(client, 5)
    _webhook(client, {"action": "ANNOTATION_CREATED", "project": {"id": 5}})
    _webhook(client, {"action": "START_TRAINING", "project": {"id": 5}})
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert 'al_webhooks_total{event="ANNOTATION_CREATED"} 1' in text
    assert 'al_webhooks_total{event="START_TRAINING"} 1' in text
    assert 'al_jobs_enqueued_total{job="retrain"} 1' in text
    assert 'al_queue_depth{queue="train"} 1' in text
    assert 'al_queue_depth{queue="score"} 1' in text  # prepare_project
    assert "# TYPE al_retrain_seconds summary" in text


def test_jobs_endpoint(client, r):
    _set_up(client, 5)
    job_id = _webhook(client, {"action": "START_TRAINING", "project": 5}).get_json()["job_id"]
    body = client.get(f"/jobs/{job_id}").get_json()
    assert body["status"] == "queued" and body["function"] == "workers.training.retrain"
    assert body["error"] is None and body["progress"] is None
    missing = client.get("/jobs/does-not-exist")
    assert missing.status_code == 404 and "no job" in missing.get_json()["error"]


def test_jobs_of_a_project_newest_first(client, r):
    _set_up(client, 5)
    _set_up(client, 6)
    retrain = _webhook(client, {"action": "START_TRAINING", "project": {"id": 5}}).get_json()["job"]
    score = _webhook(client, {"action": "TASKS_CREATED", "project": {"id": 5},
                              "tasks": [{"id": 1}]}).get_json()["job"]
    ignored = _webhook(client, {"action": "TASKS_DELETED", "project": {"id": 5}}).get_json()
    assert ignored["job"] is None and ignored["action"] == "ignore"
    _webhook(client, {"action": "START_TRAINING", "project": {"id": 6}})  # another project's
    body = client.get("/jobs?project=5").get_json()
    assert body["project"] == 5
    names = [(j["id"], j["name"]) for j in body["jobs"]]
    prepare = names[-1][0]
    assert names == [(score, "score_new_tasks"), (retrain, "retrain"), (prepare, "prepare_project")]
    first = body["jobs"][1]
    assert first["status"] == "queued" and first["function"] == "workers.training.retrain"
    assert first["enqueued_at"] and first["ended_at"] is None and first["progress"] is None
    assert [j["name"] for j in client.get("/jobs?project=6").get_json()["jobs"]] == [
        "retrain", "prepare_project"]
    assert client.get("/jobs?project=7").get_json() == {"project": 7, "jobs": []}


def test_jobs_of_a_project_are_capped_and_expire(client, r):
    _set_up(client, 5)
    for _ in range(projects.JOBS_KEPT + 5):
        Queue("train", connection=r).empty()  # the next START_TRAINING is a new job, not coalesced
        _webhook(client, {"action": "START_TRAINING", "project": 5})
    listed = r.lrange("al:p:5:jobs", 0, -1)
    assert len(listed) == projects.JOBS_KEPT
    assert 0 < r.ttl("al:p:5:jobs") <= projects.JOBS_TTL
    # Jobs RQ no longer has (expired, emptied) are left out rather than failing the list.
    assert client.get("/jobs?project=5").get_json()["jobs"][0]["name"] == "retrain"


@pytest.mark.parametrize("query, reason", [
    ("", "missing query parameter"),
    ("?project=abc", "is not a number"),
    ("?project=0", "must be positive"),
])
def test_jobs_of_a_project_bad_id_is_400(client, query, reason):
    response = client.get("/jobs" + query)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert reason in error and "\n" not in error


def test_unknown_route_and_method_are_json(client):
    assert client.get("/nope").status_code == 404
    response = client.get("/webhook")
    assert response.status_code == 405 and "error" in response.get_json()


def test_basic_auth(settings):
    client = create_app(dataclasses.replace(settings, basic_auth_user="u", basic_auth_pass="p")).test_client()
    good = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"u:x").decode()}
    assert client.get("/health").status_code == 200
    assert client.get("/").status_code == 401
    assert client.get("/metrics", headers=bad).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Basic !!!"}).status_code == 401
    assert client.get("/metrics", headers=good).status_code == 200
    assert client.get("/jobs?project=1").status_code == 401
    assert client.get("/jobs?project=1", headers=good).status_code == 200
    assert client.post("/setup", json={"project": "1.1", "schema": CONFIG}).status_code == 401
    assert client.post("/setup", json={"project": "1.1", "schema": CONFIG}, headers=good).status_code == 200
    # LS sends webhooks without credentials; a webhook is only a trigger, so it stays open.
    assert _webhook(client, {"action": "START_TRAINING", "project": 1}).status_code == 200


def test_predict_cold_start_before_any_model(client):
    tasks = [{"id": 1, "data": {"text": "a"}}, {"id": 2, "data": {"text": "b"}}]
    response = client.post("/predict", json={"tasks": tasks, "project": "4.1", "label_config": CONFIG})
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == 2
    assert all(x["result"] == [] and x["model_version"] == projects.cold_start_version(4) for x in results)


def test_predict_with_a_trained_model(client, settings, r):
    learner = ActiveLearner(settings.engine, cache_dir=settings.model_dir / "embeddings")
    texts = ["good great fine", "bad awful poor", "great good", "poor bad"] * 3
    labels = ["pos", "neg", "pos", "neg"] * 3
    model = learner.fit(texts, labels, ["pos", "neg"])
    version = ModelStore(settings.model_dir / "models").save(4, model)
    tasks = [{"id": i, "data": {"text": t}} for i, t in enumerate(["good great", "awful bad", "x"])]
    response = client.post("/predict", json={"tasks": tasks, "project": "4.1", "label_config": CONFIG})
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == 3
    for item in results:
        assert item["model_version"] == version
        (region,) = item["result"]
        assert region["from_name"] == "label" and region["to_name"] == "text"
        assert region["type"] == "choices" and region["value"]["choices"][0] in ("pos", "neg")
        assert 0.5 <= item["score"] <= 1.0
    assert 'al_predictions_total 3' in client.get("/metrics").get_data(as_text=True)


@pytest.mark.parametrize("payload, reason", [
    ({"tasks": "x", "project": "4.1", "label_config": CONFIG}, "tasks must be a list"),
    ({"tasks": [{"id": 1, "data": {"other": "a"}}], "project": "4.1", "label_config": CONFIG},
     "no data field 'text'"),
    ({"tasks": [{"id": 1, "data": {"text": "a"}}], "project": "4.1"}, "label config is empty"),
    ({"tasks": [{"id": 1, "data": {"text": "a"}}], "label_config": CONFIG}, "no project id"),
])
def test_predict_bad_requests(client, payload, reason):
    response = client.post("/predict", json=payload)
    assert response.status_code == 400
    assert reason in response.get_json()["error"]


def test_redis_down_is_503(settings):
    client = create_app(dataclasses.replace(settings, redis_url="redis://127.0.0.1:1/0")).test_client()
    response = client.post("/webhook", json={"action": "START_TRAINING", "project": 1})
    assert response.status_code == 503
    assert "Redis" in response.get_json()["error"]
    assert client.get("/health").status_code == 200
