"""The web process: Label Studio's ML backend protocol plus /jobs and /metrics.

Every view validates, enqueues and answers. Nothing heavy runs in a request except /predict,
which loads the engine lazily on its first call. Errors are one-line JSON, never a traceback.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re

import redis
from flask import Flask, Response, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from backend import events, jobqueue, metrics, projects, status
from backend.labeling import LabelConfigError, TaskDataError, parse_label_config
from backend.secret_path import VIA_SECRET, SecretPathPrefix
from backend.serving import Predictor
from backend.settings import Settings, SettingsError

MODEL_CLASS = "ActiveLearner"
AUTH_EXEMPT = ("/health", "/webhook")
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # RQ's job id alphabet; RQ raises on any other
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
    # Werkzeug refuses a longer Content-Length unread and stops reading a chunked body one byte
    # past the limit, so that _json_body can tell a body over the limit from one at it.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1
    app.extensions["al_redis"] = redis.Redis.from_url(settings.redis_url)
    app.extensions["al_predictor"] = Predictor(settings)
    app.extensions["al_policy"] = jobqueue.JobPolicy.from_settings(settings)
    app.before_request(_check_body_size)
    app.before_request(_check_webhook_secret)
    app.before_request(_check_basic_auth)
    _register_errors(app)
    _register_routes(app)
    if settings.webhook_secret:
        app.wsgi_app = SecretPathPrefix(app.wsgi_app, settings.webhook_secret)
    return app


def _settings() -> Settings:
    return current_app.config["AL_SETTINGS"]


def _redis() -> redis.Redis:
    return current_app.extensions["al_redis"]


def _policy() -> jobqueue.JobPolicy:
    return current_app.extensions["al_policy"]


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"status": "ERROR", "error": message}), status


def _check_body_size():
    """Refuse a body whose Content-Length is over MAX_BODY_BYTES before anything reads it."""
    if request.content_length is not None and request.content_length > _settings().max_body_bytes:
        raise RequestEntityTooLarge()
    return None


SECRET_ROUTES = ("/webhook", "/setup", "/predict")  # what LS calls, all under the URL it was given


def _check_webhook_secret():
    """With WEBHOOK_SECRET set, LS's routes are served only under the secret path prefix.

    /setup is included: it is what makes a project known, so an open /setup would let
    anyone connect a project and then drive it with webhooks. Every call LS makes carries
    the prefix, so this costs LS nothing. 404 (not 401): without the prefix the route does
    not exist for the caller, and there is no authentication scheme to offer. The reason
    names the setting, never its value.
    """
    if _settings().webhook_secret and request.path in SECRET_ROUTES and not request.environ.get(VIA_SECRET):
        return _error(404, f"{request.path} is served only under the secret path prefix: "
                           "connect Label Studio to http://<host>:<port>/<WEBHOOK_SECRET>")
    return None


def _check_basic_auth():
    """LS sends basic auth to ML backends when configured; /health and /webhook are exempt.

    /webhook is exempt because LS sends webhooks without credentials: a webhook is only a
    trigger for a project set up through /setup (jobs read the truth from the LS API), and
    WEBHOOK_SECRET (a secret path prefix, :mod:`backend.secret_path`) is the credential it can carry.
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

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc):
        return _error(413, f"request body over the {_settings().max_body_bytes}-byte limit (MAX_BODY_BYTES)")

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return _error(exc.code or 500, exc.description.split("\n")[0] if exc.description else exc.name)

    @app.errorhandler(Exception)
    def internal(exc):
        log.exception("unhandled error")
        return _error(500, f"internal error: {type(exc).__name__}")


def _json_body() -> object:
    """The body parsed as JSON (None if it is not JSON); 413 over MAX_BODY_BYTES, chunked or not."""
    data = request.get_data(cache=True)  # at most MAX_BODY_BYTES + 1 bytes (MAX_CONTENT_LENGTH)
    if len(data) > _settings().max_body_bytes:
        raise RequestEntityTooLarge()
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past Python's limit
        return None


def _json_object() -> dict:
    payload = _json_body()
    if not isinstance(payload, dict):
        raise BadRequest("body must be a JSON object")
    return payload


def _project_id(value: object) -> int:
    try:
        return events.parse_project_id(value)
    except events.EventError as exc:
        raise BadRequest(str(exc)) from None


def _register_routes(app: Flask) -> None:
    app.add_url_rule("/", "index", index, methods=["GET"])
    app.add_url_rule("/health", "health", health, methods=["GET"])
    app.add_url_rule("/setup", "setup", setup, methods=["POST"])
    app.add_url_rule("/predict", "predict", predict, methods=["POST"])
    app.add_url_rule("/webhook", "webhook", webhook, methods=["POST"])
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
    app.add_url_rule("/jobs", "jobs", jobs_view, methods=["GET"])
    app.add_url_rule("/jobs/<job_id>", "job", job_view, methods=["GET"])
    app.add_url_rule("/projects/<project_id>/status", "project_status", project_status_view, methods=["GET"])


def health():
    """Liveness: instant, touches neither Redis nor the model."""
    return jsonify({"status": "UP", "model_class": MODEL_CLASS})


def index():
    """A browser (preferring text/html) gets the status page; anything else the health JSON."""
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) != "text/html":
        return health()
    return render_template("status.html", **status.page(_redis(), _settings()))


def project_status_view(project_id: str):
    """One project's status as JSON: ``GET /projects/<id>/status``; 404 for a project never set up."""
    pid = _project_id(project_id)
    if not projects.is_known(_redis(), pid):
        return _error(404, f"project {pid} is not set up with this backend")
    return jsonify(status.project_status(_redis(), _settings(), pid))


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
        jobqueue.enqueue_prepare(r, project_id, _policy())
    return jsonify({"model_version": projects.published_version(r, project_id) or ""})


def _remember_config(r: redis.Redis, project_id: int, label_config: str) -> None:
    """Record the config; a changed one (seen at /setup) resets the project's model."""
    previous = projects.set_config_fingerprint(r, project_id, events.config_fingerprint(label_config))
    if previous is not None and previous != events.config_fingerprint(label_config):
        jobqueue.enqueue_reset(r, project_id, _policy())


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
    payload = _json_body()
    r = _redis()
    try:
        project_hint = events.project_id_of(payload) if isinstance(payload, dict) else None
        known = projects.config_fingerprint(r, project_hint) if project_hint else None
        decision = events.decide(payload, known_config=known)
    except events.EventError as exc:
        raise BadRequest(str(exc)) from None
    if not projects.is_known(r, decision.project_id):
        # 403: the payload is well-formed (not 400), but only /setup makes a project one this
        # backend may act on; the same answer whether or not LS has such a project.
        return _error(403, f"project {decision.project_id} is not set up with this backend: connect it in "
                           "Label Studio (Settings > Model), which calls /setup")
    metrics.inc(r, "al_webhooks_total", {"event": decision.event})
    job_id = _act(r, decision)
    # "job" is the key LS's Start Training looks for (it records the job); "job_id" is ours.
    return jsonify({"status": "ok", "action": decision.action, "job_id": job_id, "job": job_id})


def _act(r: redis.Redis, decision: events.Decision) -> str | None:
    """Carry out a webhook decision; returns the id of the job it enqueued or joined."""
    settings, policy, pid = _settings(), _policy(), decision.project_id
    if decision.action == events.COUNT:
        count = projects.count_changes(r, pid, decision.changes, settings.retrain_every, decision.change_keys)
        if count.duplicates:
            metrics.inc(r, "al_duplicate_changes_total", amount=count.duplicates)
        if count.retrain:
            return jobqueue.enqueue_retrain(r, pid, policy, decision.event)[0]
    elif decision.action == events.RETRAIN:
        projects.clear_changes(r, pid)
        return jobqueue.enqueue_retrain(r, pid, policy, decision.event)[0]
    elif decision.action == events.SCORE_NEW:
        return jobqueue.enqueue_score_new(r, pid, list(decision.task_ids), policy).id
    elif decision.action == events.RESET:
        projects.set_config_fingerprint(r, pid, events.config_fingerprint(decision.label_config))
        return jobqueue.enqueue_reset(r, pid, policy).id
    elif decision.action == events.REMEMBER_CONFIG:
        projects.set_config_fingerprint(r, pid, events.config_fingerprint(decision.label_config))
    return None


def metrics_view():
    """Prometheus text exposition of the shared counters and the queue gauges."""
    r = _redis()
    body = metrics.render(r, jobqueue.queue_gauges(r))
    return Response(body, mimetype="text/plain; version=0.0.4; charset=utf-8")


def job_view(job_id: str):
    """Status, progress and error of one job; 404 if RQ does not know it."""
    status = jobqueue.job_status(_redis(), job_id) if JOB_ID.fullmatch(job_id) else None
    if status is None:
        return _error(404, f"no job {job_id[:64]!r}")
    return jsonify(status)



def jobs_view():
    """A project's latest jobs, newest first: ``GET /jobs?project=<id>``."""
    value = request.args.get("project")
    if value is None:
        raise BadRequest("missing query parameter: /jobs?project=<id>")
    project_id = _project_id(value)
    return jsonify({"project": project_id, "jobs": jobqueue.project_jobs(_redis(), project_id)})
