"""The job functions RQ runs, enqueued by dotted name from ``backend.queue``.

Each job reads the truth from Label Studio, is idempotent, and raises on failure so RQ
records it (and retries it with backoff). The engine is created inside the job, i.e. in
the work-horse after RQ's fork, so CUDA is never initialised in a parent process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from redis import Redis
from rq import get_current_job

from backend import metrics, projects
from backend import queue as jobs_queue
from backend.labeling import (
    TaskDataError,
    TaskSpec,
    annotation_target,
    labels_from_probs,
    parse_label_config,
    prediction_for,
    task_text,
)
from backend.settings import Settings
from workers.publishing import build_predictions, percentile_scores, publish
from workers.task_index import TaskIndex

log = logging.getLogger(__name__)
_PROGRESS_EVERY = 0.5  # seconds between progress writes to Redis


@dataclass
class _Context:
    settings: Settings | None = None
    client_factory: Callable[[str, str], object] | None = None
    learner: object | None = None


_context = _Context()


def configure(settings: Settings, client_factory: Callable[[str, str], object] | None = None) -> None:
    """Set the settings (and, for tests, how LS clients are made) used by jobs in this process."""
    _context.settings = settings
    _context.client_factory = client_factory
    _context.learner = None


def _settings() -> Settings:
    if _context.settings is None:
        _context.settings = Settings.from_env()
    return _context.settings


def _policy() -> jobs_queue.JobPolicy:
    return jobs_queue.JobPolicy.from_settings(_settings())


def _redis() -> Redis:
    job = get_current_job()
    if job is None:
        raise RuntimeError("job functions run inside an RQ worker")
    return job.connection


def client_for(r: Redis, project_id: int):
    """An LS client: LABEL_STUDIO_API_KEY first, else the URL and token LS sent at /setup."""
    settings = _settings()
    url, api_key = settings.label_studio_url, settings.label_studio_api_key
    if not api_key:
        conn = projects.connection(r, project_id)
        url = conn.get("hostname") or url
        api_key = conn.get("access_token", "")
    if _context.client_factory is not None:
        return _context.client_factory(url, api_key)
    from backend.labelstudio import LabelStudioClient

    return LabelStudioClient(url, api_key)


def _learner():
    """The engine for this process; the device is picked on first use, inside the job."""
    if _context.learner is None:
        from backend.al.learner import ActiveLearner

        settings = _settings()
        _context.learner = ActiveLearner(settings.engine_config(),
                                         cache_dir=Path(settings.model_dir) / "embeddings")
    return _context.learner


def _store():
    from backend.al.store import ModelStore

    settings = _settings()
    return ModelStore(Path(settings.model_dir) / "models", keep=settings.keep_versions)


def _progress(stage: str) -> Callable[[int, int], None]:
    """A progress callback writing {"stage", "done", "total"} to the current job's meta."""
    job, last = get_current_job(), [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if job is None or (now - last[0] < _PROGRESS_EVERY and done < total):
            return
        last[0] = now
        job.meta["progress"] = {"stage": stage, "done": int(done), "total": int(total)}
        job.save_meta()

    return report


def _spec(client, project_id: int) -> TaskSpec:
    return parse_label_config(client.get_project(project_id)["label_config"])


# ---------------------------------------------------------------- retrain


def retrain(project_id: int) -> str | None:
    """Train on the project's annotations, save a new version, enqueue its re-score."""
    r, job, policy = _redis(), get_current_job(), _policy()
    jobs_queue.retrain_started(r, project_id, job.id, policy)
    try:
        with metrics.timed(r, "al_retrain_seconds"):
            version = _train(r, project_id)
    finally:
        jobs_queue.retrain_ended(r, project_id, job.id, policy)
    if version is not None:
        jobs_queue.enqueue_rescore(r, project_id, version, policy)
    return version


def training_set(annotated: list[dict], spec: TaskSpec) -> tuple[list[int], list[str], list]:
    """(task ids, texts, labels) of annotated tasks whose annotation gives the control a label."""
    ids, texts, labels = [], [], []
    for task in annotated:
        target = annotation_target(task.get("result") or [], spec)
        if target is None:
            continue
        try:
            text = task_text(task, spec)
        except TaskDataError:
            continue
        ids.append(int(task["id"]))
        texts.append(text)
        labels.append(target)
    return ids, texts, labels


def _train(r: Redis, project_id: int) -> str | None:
    client, settings = client_for(r, project_id), _settings()
    spec = _spec(client, project_id)
    # Count first: an annotation made while we train leaves the count stale, so reconcile retrains.
    count = client.count_annotations(project_id)
    _progress("reading annotations")(0, 1)
    ids, texts, labels = training_set(client.annotated_tasks(project_id), spec)
    index = TaskIndex(settings.model_dir, project_id)
    index.sync(client, spec)
    index.mark_labelled(ids)
    if not texts:
        projects.set_trained_count(r, project_id, count)
        log.info("project %s: no usable annotations yet, nothing to train", project_id)
        return None
    from backend.al.learner import NotEnoughLabels

    store = _store()
    previous = store.load(project_id) if settings.warm_start else None
    try:
        model = _learner().fit(texts, labels, spec.classes, multilabel=spec.multilabel,
                               previous=previous, progress=_progress("training"))
    except NotEnoughLabels as exc:  # not a failure: wait for more annotations (retrying won't help)
        projects.set_trained_count(r, project_id, count)
        log.info("project %s: %s", project_id, exc)
        return None
    version = store.save(project_id, model)
    projects.set_trained_count(r, project_id, count)
    log.info("project %s: trained %s on %d annotations", project_id, version, len(texts))
    return version


# ---------------------------------------------------------------- rescore and publish


def rescore(project_id: int, version: str | None) -> dict:
    """Score the unlabelled pool with `version` (None: cold start) and publish the priorities."""
    r, settings = _redis(), _settings()
    current = _store().current(project_id)
    if version != current:
        log.info("project %s: skip rescore of %s, newest is %s", project_id, version, current)
        return {"skipped": True, "version": version, "current": current}
    name = version or projects.cold_start_version(project_id)
    with metrics.timed(r, "al_rescore_seconds"):
        client = client_for(r, project_id)
        project = client.get_project(project_id)
        spec = parse_label_config(project["label_config"])
        index = TaskIndex(settings.model_dir, project_id)
        index.sync(client, spec)
        ids, texts = index.unlabelled()
        model = _store().load(project_id, version) if version else None
        ranking = _learner().rank(model, texts, seed=settings.seed, progress=_progress("scoring"))
        predictions = build_predictions(ids, ranking, spec, name, settings.publish_top_k)
        publish(r, client, project_id, name, predictions, _policy(),
                ls_version=project.get("model_version"), progress=_progress("publishing"))
        values = ranking.values.tolist()
        index.set_values({i: float(v) for i, v in zip(ids, values, strict=True)}, replace_all=True)
    metrics.inc(r, "al_tasks_scored_total", amount=len(predictions))
    return {"skipped": False, "version": version, "published": len(predictions), "pool": len(ids)}


def delete_version(project_id: int, version: str) -> int:
    """Delete a superseded version's predictions from LS (never the live one)."""
    r = _redis()
    if version == projects.published_version(r, project_id):
        return 0
    return client_for(r, project_id).delete_predictions(project_id, version)


# ---------------------------------------------------------------- new tasks


def score_new_tasks(project_id: int, task_ids: list[int]) -> dict:
    """Give just-created tasks a priority under the live model (skipped before any model)."""
    r, settings = _redis(), _settings()
    version = projects.published_version(r, project_id)
    live = version and not projects.is_cold_start(version)
    model = _store().load(project_id, version) if live else None
    if model is None:
        return {"skipped": True, "reason": "no live model yet"}
    client = client_for(r, project_id)
    spec = _spec(client, project_id)
    index = TaskIndex(settings.model_dir, project_id)
    index.sync(client, spec)
    found = index.texts_of(task_ids)
    if not found:
        return {"skipped": True, "reason": "tasks not found or already labelled"}
    ids, texts = list(found), list(found.values())
    ranking = _learner().rank(model, texts, seed=settings.seed)
    values = ranking.values.tolist()
    scores = percentile_scores(index.values(), values)
    probs = ranking.probs.tolist()
    predictions = [prediction_for(i, labels_from_probs(p, spec), spec, s, version)
                   for i, p, s in zip(ids, probs, scores, strict=True)]
    client.import_predictions(project_id, predictions)
    index.set_values(dict(zip(ids, values, strict=True)), replace_all=False)
    metrics.inc(r, "al_tasks_scored_total", amount=len(predictions))
    return {"skipped": False, "scored": len(predictions), "version": version}


# ---------------------------------------------------------------- project lifecycle


def reset_project(project_id: int) -> str:
    """The label config changed: forget the model and counts, then retrain from scratch."""
    r = _redis()
    _store().reset(project_id)
    projects.set_trained_count(r, project_id, None)
    projects.clear_changes(r, project_id)
    job_id, _ = jobs_queue.enqueue_retrain(r, project_id, _policy(), "label config changed")
    return job_id


def prepare_project(project_id: int) -> dict:
    """First contact: uncertainty sampling, the queue view, then a first ranking or model."""
    r, settings = _redis(), _settings()
    client = client_for(r, project_id)
    done = {}
    if settings.setup_sampling:
        client.set_sampling(project_id, "Uncertainty sampling")
        done["sampling"] = "Uncertainty sampling"
    if settings.setup_view:
        done["view"] = client.ensure_view(project_id, "Active learning queue")
    if _store().current(project_id) is None:
        if client.count_annotations(project_id) > 0:
            done["retrain"] = jobs_queue.enqueue_retrain(r, project_id, _policy(), "first contact")[0]
        else:
            done["rescore"] = jobs_queue.enqueue_rescore(r, project_id, None, _policy()).id
    return done


def reconcile() -> dict:
    """Retrain every known project whose LS annotation count differs from its model's."""
    r = _redis()
    enqueued, errors = {}, {}
    for project_id in projects.known_projects(r):
        try:
            count = client_for(r, project_id).count_annotations(project_id)
        except Exception as exc:  # one unreachable project must not stop the others
            errors[project_id] = f"{type(exc).__name__}: {exc}"
            continue
        trained = projects.trained_count(r, project_id) or 0
        if count != trained:
            reason = f"reconcile: LS has {count} annotations, model trained on {trained}"
            enqueued[project_id] = jobs_queue.enqueue_retrain(r, project_id, _policy(), reason)[0]
    if errors:
        raise RuntimeError(f"reconcile could not reach projects {sorted(errors)}: {errors}")
    return {"enqueued": enqueued}
