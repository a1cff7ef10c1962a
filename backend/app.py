"""The web process: Label Studio's ML backend protocol plus /jobs and /metrics.

Every view validates, enqueues and answers. Nothing heavy runs in a request except /predict,
which loads the engine lazily on its first call. Errors are one-line JSON, never a traceback.
"""

from __future__ import annotations

import base64
import hmac
import logging

import redis
from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from backend import events, metrics, projects
from backend import queue as jobs_queue
from backend.labeling import LabelConfigError, TaskDataError, parse_label_config
from backend.serving import Predictor
from backend.settings import Settings, SettingsError

MODEL_CLASS = "ActiveLearner"
AUTH_EXEMPT = ("/health", "/webhook")
log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """A request we refuse with 400 and a one-line reason."""


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app; ``settings`` defaults to :meth:`Settings.from_env`."""
    settings = settings or Settings.from_env()
    if not settings.redis_url:
        raise SettingsError("REDIS_URL is required by the web process (`python -m backend` embeds one)")
    app = Flask(__name__)
    app.config["AL_SETTINGS"] = settings
    app.extensions["al_redis"] = redis.Redis.from_url(settings.redis_url)
    app.extensions["al_predictor"] = Predictor(settings)
    app.extensions["al_policy"] = jobs_queue.JobPolicy.from_settings(settings)
    app.before_request(_check_basic_auth)
    _register_errors(app)
    _register_routes(app)
    return app


def _settings() -> Settings:
    return current_app.config["AL_SETTINGS"]


def _redis() -> redis.Redis:
    return current_app.extensions["al_redis"]


def _policy() -> jobs_queue.JobPolicy:
    return current_app.extensions["al_policy"]


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"status": "ERROR", "error": message}), status


def _check_basic_auth():
    """LS sends basic auth to ML backends when configured; /health and /webhook are exempt.

    /webhook is exempt because LS sends webhooks without credentials; it is safe to leave
    open because a webhook is only a trigger: jobs read the truth from the LS API.
    """
    settings = _settings()
    if not settings.basic_auth_user or request.path in AUTH_EXEMPT:
        return None
    header = request.headers.get("Authorization", "")
    if header.startswith("Basic "):
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            user, password = "", ""
        if hmac.compare_digest(user, settings.basic_auth_user) and hmac.compare_digest(
                password, settings.basic_auth_pass):
            return None
    response, status = _error(401, "authentication required")
    response.headers["WWW-Authenticate"] = 'Basic realm="ml-backend"'
    return response, status


def _register_errors(app: Flask) -> None:
    @app.errorhandler(BadRequest)
    def bad_request(exc):
        return _error(400, str(exc))

    @app.errorhandler(redis.RedisError)
    def redis_down(exc):
        log.error("redis unavailable: %s", exc)
        return _error(503, "queue unavailable (Redis): try again shortly")

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return _error(exc.code or 500, exc.description.split("\n")[0] if exc.description else exc.name)

    @app.errorhandler(Exception)
    def internal(exc):
        log.exception("unhandled error")
        return _error(500, f"internal error: {type(exc).__name__}")


def _json_object() -> dict:
    payload = request.get_json(silent=True, force=True)
    if not isinstance(payload, dict):
        raise BadRequest("body must be a JSON object")
    return payload


def _project_id(value: object) -> int:
    try:
        return events.parse_project_id(value)
    except events.EventError as exc:
        raise BadRequest(str(exc)) from None


def _register_routes(app: Flask) -> None:
    app.add_url_rule("/", "index", health, methods=["GET"])
    app.add_url_rule("/health", "health", health, methods=["GET"])
    app.add_url_rule("/setup", "setup", setup, methods=["POST"])
    app.add_url_rule("/predict", "predict", predict, methods=["POST"])
    app.add_url_rule("/webhook", "webhook", webhook, methods=["POST"])
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
    app.add_url_rule("/jobs", "jobs", jobs_view, methods=["GET"])
    app.add_url_rule("/jobs/<job_id>", "job", job_view, methods=["GET"])


def health():
    """Liveness: instant, touches neither Redis nor the model."""
    return jsonify({"status": "UP", "model_class": MODEL_CLASS})


def setup():
    """LS connects a project: validate its label config, remember it, prepare it on first contact."""
    payload = _json_object()
    project_id = _project_id(payload.get("project"))
    try:
        parse_label_config(payload.get("schema") or payload.get("label_config") or "")
    except LabelConfigError as exc:
        raise BadRequest(f"unsupported label config: {exc}") from None
    r = _redis()
    first_contact = projects.register(r, project_id)
    projects.save_connection(r, project_id, str(payload.get("hostname") or ""),
                             str(payload.get("access_token") or ""))
    _remember_config(r, project_id, payload.get("schema") or payload.get("label_config"))
    if first_contact:
        jobs_queue.enqueue_prepare(r, project_id, _policy())
    return jsonify({"model_version": projects.published_version(r, project_id) or ""})


def _remember_config(r: redis.Redis, project_id: int, label_config: str) -> None:
    """Record the config; a changed one (seen at /setup) resets the project's model."""
    previous = projects.set_config_fingerprint(r, project_id, events.config_fingerprint(label_config))
    if previous is not None and previous != events.config_fingerprint(label_config):
        jobs_queue.enqueue_reset(r, project_id, _policy())


def predict():
    """Pre-annotations for LS's tasks, one result per task, in order."""
    payload = _json_object()
    tasks = payload.get("tasks")
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise BadRequest("tasks must be a list of task objects")
    project = payload.get("project")
    if project is None and tasks:
        project = tasks[0].get("project")
    project_id = _project_id(project)
    try:
        spec = parse_label_config(payload.get("label_config") or payload.get("schema") or "")
        results = current_app.extensions["al_predictor"].predict(_redis(), project_id, tasks, spec)
    except (LabelConfigError, TaskDataError) as exc:
        raise BadRequest(str(exc)) from None
    metrics.inc(_redis(), "al_predictions_total", amount=len(results))
    return jsonify({"results": results, "model_version": results[0]["model_version"] if results else ""})


def webhook():
    """Turn an LS event into at most one enqueue and answer in milliseconds."""
    payload = request.get_json(silent=True, force=True)
    r = _redis()
    try:
        project_hint = events.project_id_of(payload) if isinstance(payload, dict) else None
        known = projects.config_fingerprint(r, project_hint) if project_hint else None
        decision = events.decide(payload, known_config=known)
    except events.EventError as exc:
        raise BadRequest(str(exc)) from None
    metrics.inc(r, "al_webhooks_total", {"event": decision.event})
    job_id = _act(r, decision)
    # "job" is the key LS's Start Training looks for (it records the job); "job_id" is ours.
    return jsonify({"status": "ok", "action": decision.action, "job_id": job_id, "job": job_id})


def _act(r: redis.Redis, decision: events.Decision) -> str | None:
    """Carry out a webhook decision; returns the id of the job it enqueued or joined."""
    settings, policy, pid = _settings(), _policy(), decision.project_id
    if projects.register(r, pid):
        jobs_queue.enqueue_prepare(r, pid, policy)
    if decision.action == events.COUNT:
        if projects.add_changes(r, pid, decision.changes, settings.retrain_every):
            return jobs_queue.enqueue_retrain(r, pid, policy, decision.event)[0]
    elif decision.action == events.RETRAIN:
        projects.clear_changes(r, pid)
        return jobs_queue.enqueue_retrain(r, pid, policy, decision.event)[0]
    elif decision.action == events.SCORE_NEW:
        return jobs_queue.enqueue_score_new(r, pid, list(decision.task_ids), policy).id
    elif decision.action == events.RESET:
        projects.set_config_fingerprint(r, pid, events.config_fingerprint(decision.label_config))
        return jobs_queue.enqueue_reset(r, pid, policy).id
    elif decision.action == events.REMEMBER_CONFIG:
        projects.set_config_fingerprint(r, pid, events.config_fingerprint(decision.label_config))
    return None


def metrics_view():
    """Prometheus text exposition of the shared counters and the queue gauges."""
    r = _redis()
    body = metrics.render(r, jobs_queue.queue_gauges(r))
    return Response(body, mimetype="text/plain; version=0.0.4; charset=utf-8")


def job_view(job_id: str):
    """Status, progress and error of one job; 404 if RQ does not know it."""
    status = jobs_queue.job_status(_redis(), job_id)
    if status is None:
        return _error(404, f"no job {job_id[:64]!r}")
    return jsonify(status)



def jobs_view():
    """A project's latest jobs, newest first: ``GET /jobs?project=<id>``."""
    value = request.args.get("project")
    if value is None:
        raise BadRequest("missing query parameter: /jobs?project=<id>")
    project_id = _project_id(value)
    return jsonify({"project": project_id, "jobs": jobs_queue.project_jobs(_redis(), project_id)})
