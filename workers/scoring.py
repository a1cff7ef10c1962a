"""Scoring jobs: rank a project's unlabelled pool with a model version and publish it to LS.

``rescore`` orders the whole pool and publishes it; ``score_new_tasks`` places just-created tasks
in the live order. ``publish`` is the one write path, predictions first and then the
``model_version`` switch, ordered so that a failure at any point leaves LS sampling by the
previous version. ``predictions_to_publish``, ``percentile_scores`` and ``shard_bounds`` are pure.

A pool of more than SHARD_SIZE tasks is scored in shards (README, "Scaling out"), unless it is
warm: at most SHARD_WARM_MAX tasks, at most SHARD_SIZE of them to encode (``_bounds``). ``rescore``
then writes the pool's snapshot, one input file per shard, and fans out: ``score_shard`` jobs
(shard queue), run by any worker, score their slice (the per-task step) and save its
TaskScores; ``publish_ranking``, deferred by RQ until every shard has ended, merges them, orders
the pool once and publishes exactly as ``rescore`` does, so the ranking is the single job's
given the same embeddings (cold shards encode in other batches than one job, which moves
embeddings by rounding). The run's folder, shared by every worker through MODEL_DIR, is removed
once it is published or superseded::

    <MODEL_DIR>/shards/<project>/<run = the fan-in's job id>/
        input-00000.json   {"ids": [...], "texts": [...]}: shard 0's slice of the snapshot
        scores-00000.pt    shard 0's TaskScores (ids, values, probs, ambiguous, strategy)
"""

from __future__ import annotations

import bisect
import json
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

import torch
from redis import Redis
from rq.job import JobStatus

from backend import audits, jobqueue, metrics, projects
from backend.al.embeddings import atomic_write
from backend.al.ranking import TaskScores
from backend.al.stopping import stability, stop_set
from backend.jobqueue import JobPolicy, enqueue_cleanup
from backend.labeling import TaskSpec, labels_from_probs, predictions, queued_score, set_aside_score
from workers.context import SyncedProject, WorkerContext, current_job, report_progress, takes_context

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]
SHARDS_DIR = "shards"  # under MODEL_DIR: the folders of sharded re-scores under way


class ShardsIncomplete(RuntimeError):
    """A sharded re-score's fan-in found shards without scores: it publishes nothing."""


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
        project = _project(context, r, project_id)
        ids, texts = project.index.unlabelled()
        if not ids:  # LS would refuse to switch to a version without predictions; nothing to order
            log.info("project %s: empty pool, nothing to publish for %s", project_id, name)
            return {"skipped": True, "reason": "empty pool", "version": version}
        model = context.usable_model(project_id, version, project.spec) if version else None
        if version and model is None:
            return _retrain_instead(context, r, project_id, version)
        bounds = _bounds(context, model, texts)
        label_names = project.spec.zero_shot_names()  # what a cold start scores zero-shot against
        if len(bounds) > 1:
            return _fan_out(context, r, project, project_id, version, ids, texts, bounds, label_names)
        ranking = context.learner.rank(model, texts, ids=ids, progress=report_progress("scoring"),
                                       label_names=label_names)
        return _publish_ranked(context, r, project, project_id, version, ids, ranking)


def _project(context: WorkerContext, r: Redis, project_id: int) -> SyncedProject:
    """The project for a re-score or a fan-in: as the retrain or re-score that enqueued it read LS
    moments ago (its first attempt; ``jobqueue.SYNCED`` in the job's meta), else read from LS and
    synced now (a fan-in reads the task index on the shared ``MODEL_DIR`` that the re-score synced).

    The record is dropped from the meta before it is used, so any later attempt (after a failure,
    or after the work-horse died) reads LS afresh. What reusing it may miss: tasks created in LS
    since the retrain read it (their TASKS_CREATED job places them; the next re-score ranks them),
    and tasks deleted since (an import that LS refuses for them fails this attempt; the retry syncs).
    """
    job = current_job()
    info = job.meta.pop(jobqueue.SYNCED, None)
    if info is None:
        return context.sync_project(r, project_id)
    job.save_meta()
    return context.synced_project(r, project_id, info)


def _publish_ranked(context: WorkerContext, r: Redis, project: SyncedProject, project_id: int,
                    version: str | None, ids: list[int], ranking) -> dict:
    """Publish a pool's ranking as ``version`` (None: cold start), then keep its values and audit."""
    store, top_k = context.store, context.settings.publish_top_k
    name = version or projects.cold_start_version(project_id)
    batch = predictions_to_publish(ids, ranking, project.spec, name, top_k)
    if not publish(r, project.client, project_id, name, batch, context.policy,
                   ls_version=project.info.get("model_version"), progress=report_progress("publishing"),
                   still_current=lambda: store.current(project_id) == version, retry=_retrying(context)):
        log.info("project %s: %s was superseded while it was imported; not switched", project_id, name)
        return {"skipped": True, "reason": "superseded while publishing", "version": version}
    project.index.set_values(dict(zip(ids, ranking.values.tolist(), strict=True)), replace_all=True)
    if version:
        record_audit(r, project_id, version, ids, ranking, project.spec, top_k)
    # The pool's k-NN lists, once, after the project's first publish (the cold start, or the first
    # model's where LS held labels at first contact; again after a reset), so no retrain waits for them.
    if (context.learner.may_propagate() and not project.spec.multilabel
            and projects.claim_knn_lists(r, project_id)):
        jobqueue.enqueue_prepare_propagation(r, project_id, context.policy)
    metrics.inc(r, "al_tasks_scored_total", amount=len(batch))
    return {"skipped": False, "version": version, "published": len(batch), "pool": len(ids)}


def _retrying(context: WorkerContext) -> bool:
    """Whether this job runs again after a failed attempt (RQ counts its retries down)."""
    left = current_job().retries_left
    return left is not None and left < context.policy.retries


def _bounds(context: WorkerContext, model, texts: list[str]) -> list[tuple[int, int]]:
    """The pool's shards: SHARD_SIZE slices, or the whole pool when it is at most SHARD_WARM_MAX
    tasks of which at most SHARD_SIZE need the encoder. Sharding spreads encoder work (a cold pool,
    full-mode MC); scoring a warm pool with a head or linear model is cheaper than the hand-overs."""
    settings = context.settings
    bounds = shard_bounds(len(texts), settings.shard_size)
    if (len(bounds) > 1 and len(texts) <= settings.shard_warm_max
            and context.learner.encoder_work(model, texts) <= settings.shard_size):
        log.info("%d tasks to score, at most %d of them through the encoder: one job", len(texts), settings.shard_size)
        return [(0, len(texts))]
    return bounds


def shard_bounds(n: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, end) slices cutting a pool of n tasks into ceil(n / shard_size) shards whose sizes
    differ by at most one; a single slice when shard_size is 0 or the pool fits (pure)."""
    if n < 0 or shard_size < 0:
        raise ValueError(f"need n >= 0 and shard_size >= 0, got n={n}, shard_size={shard_size}")
    count = 1 if shard_size == 0 or n <= shard_size else -(-n // shard_size)
    base, extra = divmod(n, count)
    ends = [(i + 1) * base + min(i + 1, extra) for i in range(count)]
    return list(zip([0, *ends[:-1]], ends, strict=True))


def run_dir(model_dir: Path | str, project_id: int, run: str) -> Path:
    """The folder of one sharded re-score (``run``: its fan-in's job id) under MODEL_DIR."""
    return Path(model_dir) / SHARDS_DIR / str(int(project_id)) / run


def _input_path(folder: Path, shard: int) -> Path:
    return folder / f"input-{shard:05d}.json"


def scores_path(folder: Path, shard: int) -> Path:
    return folder / f"scores-{shard:05d}.pt"


def save_scores(path: Path, scored: TaskScores) -> None:
    """Write a shard's TaskScores atomically (a reader never sees half a file)."""
    atomic_write(path, {"ids": scored.ids, "values": scored.values, "probs": scored.probs,
                        "strategy": scored.strategy, "ambiguous": scored.ambiguous, "routed": scored.routed})


def load_scores(path: Path) -> TaskScores:
    """A shard's TaskScores as :func:`save_scores` wrote them (tensors only: no pickled code)."""
    saved = torch.load(path, weights_only=True)
    return TaskScores(saved["ids"], saved["values"], saved["probs"], saved["strategy"], saved["ambiguous"],
                      saved.get("routed"))


def _write_json(path: Path, obj: object) -> None:
    atomic_write(path, obj, save=lambda o, f: f.write(json.dumps(o).encode("utf-8")))


def write_inputs(folder: Path, ids: list[int], texts: list[str], bounds: list[tuple[int, int]],
                 label_names: list[str] | None = None) -> None:
    """Write a pool snapshot into a new run folder: one input file per shard, each atomically,
    with the label names a cold start scores zero-shot against (None: none)."""
    folder.mkdir(parents=True)
    for shard, (start, end) in enumerate(bounds):
        _write_json(_input_path(folder, shard), {"ids": ids[start:end], "texts": texts[start:end],
                                                 "label_names": label_names})


def _read_input(folder: Path, shard: int) -> dict:
    path = _input_path(folder, shard)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: every worker must see the same MODEL_DIR (README, Scaling out)")
    return json.loads(path.read_text(encoding="utf-8"))


def _fan_out(context: WorkerContext, r: Redis, project: SyncedProject, project_id: int, version: str | None,
             ids: list[int], texts: list[str], bounds: list[tuple[int, int]], label_names: list[str] | None) -> dict:
    """Write the pool's snapshot, one input file per shard, then enqueue the shards and their fan-in
    (which publishes with this re-score's read of LS, ``project``, on its first attempt)."""
    run = uuid.uuid4().hex  # the fan-in's job id: a retried rescore starts a run of its own
    write_inputs(run_dir(context.settings.model_dir, project_id, run), ids, texts, bounds, label_names)
    jobqueue.enqueue_shards(r, project_id, version, run, len(bounds), context.policy, current_job().id,
                            synced=project.info)
    log.info("project %s: %d tasks to score in %d shards (run %s)", project_id, len(ids), len(bounds), run)
    return {"skipped": False, "version": version, "pool": len(ids), "shards": len(bounds), "fan_in": run}


@takes_context
def score_shard(context: WorkerContext, project_id: int, version: str | None, shard: int, run: str) -> dict:
    """Score one shard of a sharded re-score and save its TaskScores (no LS call).

    Skipped when ``version`` is no longer the project's newest; a shard whose scores exist
    already (a retry, a second delivery) is not scored again.
    """
    r, store = current_job().connection, context.store
    current = store.current(project_id)
    if version != current:
        log.info("project %s: skip shard %d of %s, newest is %s", project_id, shard, version, current)
        return {"skipped": True, "version": version, "current": current, "shard": shard}
    folder = run_dir(context.settings.model_dir, project_id, run)
    target = scores_path(folder, shard)
    if target.exists():
        return {"skipped": False, "shard": shard, "scored": 0, "already": True}
    if not folder.exists() and _fan_in_ended(r, run):  # a late second delivery: the run is over
        return {"skipped": True, "reason": "run ended", "shard": shard}
    data = _read_input(folder, shard)
    model = None
    if version:
        model = store.try_load(project_id, version)
        if model is None:
            raise RuntimeError(f"checkpoint {version} of project {project_id} is missing or unreadable here: "
                               "every worker must see the same MODEL_DIR (README, Scaling out)")
    scored = context.learner.score(model, data["texts"], ids=data["ids"], progress=report_progress("scoring shard"),
                                   label_names=data.get("label_names"))
    save_scores(target, scored)
    _report_shards_done(r, folder, run)
    return {"skipped": False, "shard": shard, "scored": len(scored)}


def _fan_in_ended(r: Redis, run: str) -> bool:
    return jobqueue.rq_status(r, run) in (JobStatus.FINISHED, JobStatus.FAILED)


def _report_shards_done(r: Redis, folder: Path, run: str) -> None:
    """Show the shards scored so far as the fan-in's progress (it waits, deferred, meanwhile)."""
    fan_in = jobqueue.fetch_job(r, run)
    if fan_in is None:  # not enqueued yet: the fan-out is still enqueueing shards
        return
    done, total = len(list(folder.glob("scores-*.pt"))), len(list(folder.glob("input-*.json")))
    fan_in.meta["progress"] = {"stage": "scoring shards", "done": done, "total": total}
    fan_in.save_meta()


@takes_context
def publish_ranking(context: WorkerContext, project_id: int, version: str | None, run: str, shards: int) -> dict:
    """The fan-in of a sharded re-score: merge the shards' scores, order the pool once, publish.

    Runs once every shard has ended. If a shard failed for good, nothing is published
    (:class:`ShardsIncomplete`): the previous priorities stay live and reconcile re-scores.
    """
    r = current_job().connection
    # rq 3.0 may run a fan-in twice (two shards ending at once each move it to ready): executions
    # of one run take turns, and one that finds the run ended repeats its recorded outcome.
    outcome = projects.key(project_id, f"fan-in:{run}:outcome")
    timeout = context.policy.timeout
    with r.lock(projects.key(project_id, f"fan-in:{run}:lock"), timeout=timeout, blocking_timeout=timeout):
        ended = projects.as_text(r.get(outcome))
        if ended is not None and not run_dir(context.settings.model_dir, project_id, run).exists():
            if ended != _PUBLISHED:
                raise ShardsIncomplete(ended)
            log.info("project %s: run %s was published by another execution of its fan-in", project_id, run)
            return {"skipped": True, "reason": "published by another execution", "version": version}
        return _fan_in(context, r, project_id, version, run, shards, outcome)


_PUBLISHED = "published"


def _fan_in(context: WorkerContext, r: Redis, project_id: int, version: str | None, run: str, shards: int,
            outcome: str) -> dict:
    store, ttl = context.store, context.policy.failure_ttl
    folder = run_dir(context.settings.model_dir, project_id, run)
    current = store.current(project_id)
    if version != current:
        log.info("project %s: skip publishing shards of %s, newest is %s", project_id, version, current)
        _remove_run(folder)
        return {"skipped": True, "version": version, "current": current}
    missing = [shard for shard in range(shards) if not scores_path(folder, shard).exists()]
    if missing:  # their jobs failed for good: nothing fills them any more
        message = (f"project {project_id}: shards {missing} of {shards} of {version or 'cold start'} "
                   "have no scores (their jobs failed); nothing published")
        if not current_job().retries_left:  # this fan-in's last attempt: nothing reads them either
            r.set(outcome, message, ex=ttl)
            _remove_run(folder)
        raise ShardsIncomplete(message)
    with metrics.timed(r, "al_rescore_seconds"):
        scored = TaskScores.concat([load_scores(scores_path(folder, shard)) for shard in range(shards)])
        embeddings = None
        if context.learner.needs_embeddings(scored):
            texts = [text for shard in range(shards) for text in _read_input(folder, shard)["texts"]]
            embeddings = context.learner.embed(texts, report_progress("reading embeddings"))
        ranking = context.learner.order(scored, embeddings)
        project = _project(context, r, project_id)  # the fan-out's read of LS, on the first attempt
        result = _publish_ranked(context, r, project, project_id, version, scored.ids.tolist(), ranking)
    r.set(outcome, _PUBLISHED, ex=ttl)
    _remove_run(folder)
    _remove_stale_runs(r, context.settings.model_dir, project_id, context.policy.timeout)
    return {**result, "shards": shards}


def _remove_run(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _remove_stale_runs(r: Redis, model_dir: Path | str, project_id: int, timeout: int) -> None:
    """Remove the project's run folders that nothing will read: their fan-in has ended, or RQ
    has no fan-in for them and they are older than a job may run (a fan-out that died before
    enqueueing it; a younger one may be a fan-out writing its inputs now)."""
    base = Path(model_dir) / SHARDS_DIR / str(int(project_id))
    alive = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.STARTED}
    for folder in list(base.iterdir()) if base.exists() else []:
        status = jobqueue.rq_status(r, folder.name)
        stale = status not in alive if status is not None else time.time() - folder.stat().st_mtime > timeout
        if stale:
            _remove_run(folder)


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
    published, _ = published_order(ranking, top_k)  # explored tasks are never set aside
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
    scores = new_task_scores(project.index.values(), scored)
    batch = predictions(project.spec, version, scores, scored.probs.tolist(), task_ids=ids)
    project.client.import_predictions(project_id, batch)
    project.index.set_values(dict(zip(ids, values, strict=True)), replace_all=False)
    metrics.inc(r, "al_tasks_scored_total", amount=len(batch))
    return {"skipped": False, "scored": len(batch), "version": version}


def published_order(ranking, top_k: int) -> tuple[list[int], list[int]]:
    """The items a ranking publishes, each group in its order: (queued, set aside) (pure).

    Queued: the top_k (0 = all) of the order, less the set-aside ones. Set aside: with ambiguity
    routing, the tasks marked ambiguous that no exploration slot holds (an explored task keeps its
    slot, so the audit sample stays uniform), the first top_k of them too: so every set-aside task
    of a big pool can be found in the "Ambiguous" view, and a publish is at most twice top_k.
    """
    order = ranking.order.tolist()
    aside = (ranking.ambiguous & ~ranking.explored).tolist()
    queued = [i for i in order if not aside[i]]
    kept = [i for i in order if aside[i]]
    return (queued[:top_k], kept[:top_k]) if top_k > 0 else (queued, kept)


def predictions_to_publish(ids: list[int], ranking, spec: TaskSpec, version: str, top_k: int) -> list[dict]:
    """LS predictions for the published tasks of a ranking (:func:`published_order`), in its order.

    Score = priority in [0, 1]; with ambiguity routing (``ranking.routed``) queued tasks' priorities
    are scaled into [0, QUEUE_TOP] and set-aside tasks get [AMBIGUOUS_SCORE, 1] by their place
    among themselves (``backend.labeling``), for LS's uncertainty sampling and the "Ambiguous" view.
    """
    queued, aside = published_order(ranking, top_k)
    order, priority = queued + aside, ranking.scores.tolist()
    if ranking.routed:
        scores = [queued_score(priority[i]) for i in queued]
        scores += [set_aside_score(j / max(len(aside) - 1, 1)) for j in range(len(aside))]
    else:  # nothing is set aside
        scores = [priority[i] for i in order]
    probs = ranking.probs.tolist() if ranking.probs is not None else None
    return predictions(spec, version, scores, None if probs is None else [probs[i] for i in order],
                       task_ids=[ids[i] for i in order])


def publish(r: Redis, client, project_id: int, version: str, batch: list[dict],
            policy: JobPolicy, ls_version: str | None = None, progress: Progress | None = None,
            still_current: Callable[[], bool] = lambda: True, retry: bool = False) -> bool:
    """Import a version's predictions, then switch LS to it, then clean the old one up.

    A failure before the switch leaves the previous priorities live. A retry first deletes
    whatever a failed attempt imported for this version, so it never duplicates: the importing
    mark in Redis names it, and on a ``retry`` LS's own list of versions does too (Redis may have
    lost the mark: with ``appendfsync everysec`` a crash loses up to a second of writes). If the
    failed attempt got as far as the switch (``ls_version``: LS's model_version; LS is switched only
    after a complete import), it only records it. When ``still_current()`` turns false during the
    import (a newer version was trained meanwhile), LS is not switched and False is returned: the
    import is left to the cleanup (the newer publish's, or the reconcile's).
    """
    progress = progress or (lambda done, total: None)
    if projects.published_version(r, project_id) == version:
        return True  # an earlier attempt switched already
    unfinished = projects.importing_version(r, project_id)
    if unfinished is not None and unfinished != version:
        enqueue_cleanup(r, project_id, unfinished, policy)
    if ls_version != version:
        if unfinished == version or (retry and client.model_versions(project_id).get(version)):
            client.delete_predictions(project_id, version)
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


def new_task_scores(pool_values: list[float], scored: TaskScores) -> list[float]:
    """Prediction scores of just-created tasks in the live order (pure): their percentile among the
    pool's values; with ambiguity routing (``scored.routed``) scaled into the queued range, or into
    the set-aside range for tasks marked ambiguous, as :func:`predictions_to_publish` does."""
    scores = percentile_scores(pool_values, scored.values.tolist())
    if not scored.routed:
        return scores
    return [set_aside_score(s) if aside else queued_score(s)
            for s, aside in zip(scores, scored.ambiguous.tolist(), strict=True)]


def percentile_scores(pool_values: list[float], new_values: list[float]) -> list[float]:
    """Place new tasks in the live order: score = share of the pool more informative than them.

    Lower score = label sooner, as in a full ranking. With an empty pool every score is 0.
    """
    ranked = sorted(pool_values)
    n = len(ranked)
    if n == 0:
        return [0.0 for _ in new_values]
    return [(n - bisect.bisect_right(ranked, v)) / n for v in new_values]
