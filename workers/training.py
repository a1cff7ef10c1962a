"""Training jobs: a project's annotations -> a new model version in the store -> its re-score, and
(``PROPAGATION=auto``, checked ``deferred``) the propagation check the next retrain reads.

A retrain reads the truth from Label Studio; the check reads the labels its retrain was handed
and the task index that retrain synced. Both are idempotent and raise on failure so RQ records
them (and retries them with backoff). Enqueued by dotted name from :mod:`backend.jobqueue`.
"""

from __future__ import annotations

import logging

from redis import Redis

from backend import audits, jobqueue, metrics, projects
from backend.labeling import TaskDataError, TaskSpec, annotation_target, task_text
from workers.context import WorkerContext, current_job, report_progress, takes_context
from workers.task_index import TaskIndex

log = logging.getLogger(__name__)


@takes_context
def retrain(context: WorkerContext, project_id: int) -> str | None:
    """Train on the project's annotations, save a new version, enqueue its re-score."""
    job, policy = current_job(), context.policy
    r = job.connection
    jobqueue.retrain_started(r, project_id, job.id, policy)
    try:
        with metrics.timed(r, "al_retrain_seconds"):
            version, synced = _train(context, r, project_id)
        if version is not None:
            # Before the retrain counts as ended, so a reconcile never sees the new version with
            # neither a retrain nor a rescore of it under way (and enqueues a second rescore).
            # The re-score's first attempt reuses this retrain's read of LS, moments old.
            jobqueue.enqueue_rescore(r, project_id, version, policy, synced=synced)
    finally:
        jobqueue.retrain_ended(r, project_id, job.id, policy)
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


def unlabelled_texts(context: WorkerContext, index, spec, n_labels: int, check=None) -> list[str]:
    """Unlabelled task texts for the learner's pseudo-labels: the sample of at most ``PROPAGATION_POOL``
    that the learner would draw from the whole pool (``propagation.sample_by_digest``: the smallest
    digests), so a large project reads only those texts. None when propagation is off, the config is
    multi-label, or (``auto``) the labels are too few a class for its check, or (``auto``, checked
    ``deferred``) when the recorded ``check`` turned the pseudo-labels away (without one the fit
    checks its own labels, and reads the pool for that)."""
    engine = context.settings.engine
    from backend.al import propagation

    if propagation.pool_unread(engine.propagation, engine.propagation_check, n_labels, len(spec.classes),
                               spec.multilabel, check) is not None:
        return []
    return index.sample_unlabelled(engine.propagation_pool)


def recorded_check(r: Redis, project_id: int, spec: TaskSpec):
    """The propagation check recorded for the project's current label set, as a
    :class:`backend.al.propagation.Check`, or None."""
    record = projects.propagation_check(r, project_id)
    if record is None or record["classes"] != list(spec.classes):
        return None
    from backend.al.propagation import Check

    return Check(*record["check"])


@takes_context
def check_propagation(context: WorkerContext, project_id: int, version: str, task_ids: list[int],
                      labels: list, classes: list[str]) -> list[int] | None:
    """``PROPAGATION=auto``'s k-fold check on the labels ``version`` was trained on (texts and pool from
    the task index the retrain synced), recorded for the next retrain, so that no retrain waits for
    one (``PROPAGATION_CHECK=deferred``). Skipped when a later version exists (its retrain queued its
    own check) or the index no longer holds a labelled task. Returns the check's counts, or None."""
    r = current_job().connection
    current = context.store.current(project_id)
    if current is not None and projects.version_number(current) > projects.version_number(version):
        log.info("project %s: check of %s skipped, %s is newer", project_id, version, current)
        return None
    index = TaskIndex(context.settings.model_dir, project_id)
    try:
        texts = index.texts(task_ids)
    except KeyError as exc:
        log.info("project %s: check of %s skipped: %s", project_id, version, exc)
        return None
    check = context.learner.check_propagation(texts, labels, classes, pool=index.sample_unlabelled(
        context.settings.engine.propagation_pool), progress=report_progress("checking propagation"))
    if check is None:
        return None
    projects.record_propagation_check(r, project_id, version, check.as_list(), classes)
    log.info("project %s: propagation check on %s's %d labels: %s", project_id, version, len(task_ids),
             "helps" if check.helps else "does not help")
    return check.as_list()


@takes_context
def prepare_propagation(context: WorkerContext, project_id: int) -> bool:
    """The k-NN lists of the project's graph as a retrain draws it (its labelled texts and the unlabelled
    sample, ``PROPAGATION_POOL``, from the task index the first publish synced), built after the
    project's first publish (the cold start, or a first model where LS held labels at first contact) so
    the first retrain that checks propagation reads them (:meth:`backend.al.learner.ActiveLearner.
    prepare_propagation`; queued only where it :meth:`~backend.al.learner.ActiveLearner.may_propagate`)."""
    index = TaskIndex(context.settings.model_dir, project_id)
    texts = index.sample_unlabelled(context.settings.engine.propagation_pool)
    return context.learner.prepare_propagation(texts, report_progress("k-NN lists"), index.labelled_texts())


def _train(context: WorkerContext, r: Redis, project_id: int) -> tuple[str | None, dict]:
    """(the new version or None, LS's project record as this retrain read it)."""
    project = context.sync_project(r, project_id)
    # Count first (the project record, read first, carries it): an annotation made while we train
    # leaves the count stale, so reconcile retrains.
    count = project.info.get("total_annotations_number")
    if count is None:
        count = project.client.count_annotations(project_id)
    report_progress("reading annotations")(0, 1)
    ids, texts, labels = training_set(project.client.annotated_tasks(project_id), project.spec)
    project.index.mark_labelled(ids)
    audits.pair_labels(r, project_id, projects.published_version(r, project_id),
                       {i: audits.canonical(label) for i, label in zip(ids, labels, strict=True)})
    if not texts:
        projects.set_trained_count(r, project_id, count)
        log.info("project %s: no usable annotations yet, nothing to train", project_id)
        return None, project.info
    from backend.al.learner import NotEnoughLabels, check_made

    store, spec = context.store, project.spec
    current = store.current(project_id) if context.settings.engine.warm_start else None
    previous = context.usable_model(project_id, current, spec) if current else None
    check = recorded_check(r, project_id, spec)
    try:
        model = context.learner.fit(texts, labels, spec.classes, multilabel=spec.multilabel,
                                    previous=previous, progress=report_progress("training"),
                                    pool=unlabelled_texts(context, project.index, spec, len(texts), check),
                                    check=check)
    except NotEnoughLabels as exc:  # not a failure: wait for more annotations (retrying won't help)
        projects.set_trained_count(r, project_id, count)
        log.info("project %s: %s", project_id, exc)
        return None, project.info
    version = store.save(project_id, model)
    audits.set_version_labels(r, project_id, version, len(texts))
    projects.set_trained_count(r, project_id, count)
    if context.learner.defers_check(model):  # the check on these labels, for the next retrain
        made = check_made(model)  # the fit's own (none was recorded), else a job after this version's re-score
        if made is not None:
            projects.record_propagation_check(r, project_id, version, made.as_list(), spec.classes)
        else:
            jobqueue.enqueue_check(r, project_id, version, ids, labels, spec.classes, context.policy)
    log.info("project %s: trained %s on %d annotations", project_id, version, len(texts))
    return version, project.info
