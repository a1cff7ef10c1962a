"""Scoring jobs: rank a project's unlabelled pool with a model version and publish it to LS.

``rescore`` orders the whole pool and publishes it; ``score_new_tasks`` places just-created tasks
in the live order. ``publish`` is the one write path, predictions first and then the
``model_version`` switch, ordered so that a failure at any point leaves LS sampling by the
previous version. ``predictions_to_publish`` and ``percentile_scores`` are pure.
"""

from __future__ import annotations

import bisect
import logging
from typing import Callable

from redis import Redis

from backend import audits, jobqueue, metrics, projects
from backend.al.stopping import stability, stop_set
from backend.jobqueue import JobPolicy, enqueue_cleanup
from backend.labeling import TaskSpec, labels_from_probs, predictions
from workers.context import WorkerContext, current_job, report_progress, takes_context

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


@takes_context
def rescore(context: WorkerContext, project_id: int, version: str | None) -> dict:
    """Score the unlabelled pool with `version` (None: cold start) and publish the priorities."""
    r, store = current_job().connection, context.store
    current = store.current(project_id)
    if version != current:
        log.info("project %s: skip rescore of %s, newest is %s", project_id, version, current)
        return {"skipped": True, "version": version, "current": current}
    name = version or projects.cold_start_version(project_id)
    with metrics.timed(r, "al_rescore_seconds"):
        project = context.sync_project(r, project_id)
        ids, texts = project.index.unlabelled()
        if not ids:  # LS would refuse to switch to a version without predictions; nothing to order
            log.info("project %s: empty pool, nothing to publish for %s", project_id, name)
            return {"skipped": True, "reason": "empty pool", "version": version}
        model = context.usable_model(project_id, version, project.spec) if version else None
        if version and model is None:
            return _retrain_instead(context, r, project_id, version)
        ranking = context.learner.rank(model, texts, ids=ids, progress=report_progress("scoring"))
        batch = predictions_to_publish(ids, ranking, project.spec, name, context.settings.publish_top_k)
        if not publish(r, project.client, project_id, name, batch, context.policy,
                       ls_version=project.info.get("model_version"), progress=report_progress("publishing"),
                       still_current=lambda: store.current(project_id) == version):
            log.info("project %s: %s was superseded while it was imported; not switched", project_id, name)
            return {"skipped": True, "reason": "superseded while publishing", "version": version}
        project.index.set_values(dict(zip(ids, ranking.values.tolist(), strict=True)), replace_all=True)
        if version:
            record_audit(r, project_id, version, ids, ranking, project.spec, context.settings.publish_top_k)
    metrics.inc(r, "al_tasks_scored_total", amount=len(batch))
    return {"skipped": False, "version": version, "published": len(batch), "pool": len(ids)}


def record_audit(r: Redis, project_id: int, version: str, ids: list[int], ranking, spec: TaskSpec,
                 top_k: int) -> None:
    """Keep what a published version predicted on its explored tasks and its stop set, and its
    stability (kappa) against the version live before it (:mod:`backend.audits`)."""
    record = version_record(version, ids, ranking, spec, top_k)
    audits.record_version(r, project_id, record)
    previous = next((v for v in reversed(audits.recorded_versions(r, project_id)) if v != version), None)
    before = audits.stop_predictions(r, project_id, previous)
    common = record.stop.keys() & before.keys()
    if common:
        kappa = stability(before, record.stop)
        audits.record_kappa(r, project_id, version, previous, kappa, len(common))


def version_record(version: str, ids: list[int], ranking, spec: TaskSpec, top_k: int) -> audits.VersionRecord:
    """Predicted labels of a ranking's published explored tasks and of its stop set (pure)."""
    order = ranking.order.tolist()
    published = order[:top_k] if top_k > 0 else order
    explored, probs = ranking.explored.tolist(), ranking.probs.tolist()
    position = {task: i for i, task in enumerate(ids)}
    stop_ids = stop_set(ids, audits.STOP_SET_SIZE)

    def label(i: int) -> str:
        chosen = labels_from_probs(probs[i], spec)
        return audits.canonical(chosen if spec.multilabel else chosen[0])

    return audits.VersionRecord(version, {ids[i]: label(i) for i in published if explored[i]},
                                {task: label(position[task]) for task in stop_ids})


def _retrain_instead(context: WorkerContext, r: Redis, project_id: int, version: str) -> dict:
    """A version whose checkpoint cannot score the project (logged by ``usable_model``) is never
    published; a retrain on the project's current labels replaces it."""
    job_id, _ = jobqueue.enqueue_retrain(r, project_id, context.policy, f"checkpoint {version} unusable")
    return {"skipped": True, "reason": "checkpoint unusable", "version": version, "retrain": job_id}


@takes_context
def score_new_tasks(context: WorkerContext, project_id: int, task_ids: list[int]) -> dict:
    """Give just-created tasks a priority under the live model (skipped before any model)."""
    r = current_job().connection
    version = projects.published_version(r, project_id)
    if not version or projects.is_cold_start(version):
        return {"skipped": True, "reason": "no live model yet"}
    project = context.sync_project(r, project_id)
    model = context.usable_model(project_id, version, project.spec)
    if model is None:  # unreadable, or the label set changed: new tasks wait for the next rescore
        return {"skipped": True, "reason": f"live model {version} unusable"}
    found = project.index.texts_of(task_ids)
    if not found:
        return {"skipped": True, "reason": "tasks not found or already labelled"}
    ids, texts = list(found), list(found.values())
    scored = context.learner.score(model, texts, ids=ids)  # the per-task step: no pool-wide order needed
    values = scored.values.tolist()
    scores = percentile_scores(project.index.values(), values)
    batch = predictions(project.spec, version, scores, scored.probs.tolist(), task_ids=ids)
    project.client.import_predictions(project_id, batch)
    project.index.set_values(dict(zip(ids, values, strict=True)), replace_all=False)
    metrics.inc(r, "al_tasks_scored_total", amount=len(batch))
    return {"skipped": False, "scored": len(batch), "version": version}


def predictions_to_publish(ids: list[int], ranking, spec: TaskSpec, version: str, top_k: int) -> list[dict]:
    """LS predictions for the top_k tasks of a ranking (0 = all), in its order: score = priority."""
    order = ranking.order.tolist()
    if top_k > 0:
        order = order[:top_k]
    scores = ranking.scores.tolist()
    probs = ranking.probs.tolist() if ranking.probs is not None else None
    return predictions(spec, version, [scores[i] for i in order],
                       None if probs is None else [probs[i] for i in order],
                       task_ids=[ids[i] for i in order])


def publish(r: Redis, client, project_id: int, version: str, batch: list[dict],
            policy: JobPolicy, ls_version: str | None = None, progress: Progress | None = None,
            still_current: Callable[[], bool] = lambda: True) -> bool:
    """Import a version's predictions, then switch LS to it, then clean the old one up.

    A failure before the switch leaves the previous priorities live. A retry first deletes
    whatever a failed attempt imported for this version, so it never duplicates; if the
    failed attempt got as far as the switch (``ls_version``: LS's model_version), it only
    records it. When ``still_current()`` turns false during the import (a newer version was
    trained meanwhile), LS is not switched and False is returned: the import is left to the
    cleanup (the newer publish's, or the reconcile's).
    """
    progress = progress or (lambda done, total: None)
    if projects.published_version(r, project_id) == version:
        return True  # an earlier attempt switched already
    unfinished = projects.importing_version(r, project_id)
    if not (unfinished == version and ls_version == version):
        if unfinished == version:
            client.delete_predictions(project_id, version)
        elif unfinished is not None:
            enqueue_cleanup(r, project_id, unfinished, policy)
        projects.set_importing_version(r, project_id, version)
        progress(0, len(batch))
        client.import_predictions(project_id, batch)
        if not still_current():
            return False
        client.set_model_version(project_id, version)
    previous = projects.published_version(r, project_id)
    projects.set_published_version(r, project_id, version)
    projects.set_importing_version(r, project_id, None)
    progress(len(batch), len(batch))
    if previous and previous != version:
        enqueue_cleanup(r, project_id, previous, policy)
    return True


def percentile_scores(pool_values: list[float], new_values: list[float]) -> list[float]:
    """Place new tasks in the live order: score = share of the pool more informative than them.

    Lower score = label sooner, as in a full ranking. With an empty pool every score is 0.
    """
    ranked = sorted(pool_values)
    n = len(ranked)
    if n == 0:
        return [0.0 for _ in new_values]
    return [(n - bisect.bisect_right(ranked, v)) / n for v in new_values]
