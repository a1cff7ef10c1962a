"""Project lifecycle jobs: first contact, a changed label config, lost webhooks and publishes, old versions.

Each job reads the truth from Label Studio, is idempotent, and raises on failure so RQ records
it (and retries it with backoff). Enqueued by dotted name from :mod:`backend.jobqueue`.
"""

from __future__ import annotations

from redis import Redis
from rq.job import JobStatus

from backend import audits, jobqueue, projects
from backend.labeling import AMBIGUOUS_ABOVE, AMBIGUOUS_VIEW
from workers.context import WorkerContext, current_job, takes_context


@takes_context
def prepare_project(context: WorkerContext, project_id: int) -> dict:
    """First contact: uncertainty sampling, the queue view (and the "Ambiguous" view with ambiguity
    routing on), then a first ranking or model."""
    r, settings = current_job().connection, context.settings
    client = context.client(r, project_id)
    done = {}
    if settings.setup_sampling:
        client.set_sampling(project_id, "Uncertainty sampling")
        done["sampling"] = "Uncertainty sampling"
    if settings.setup_view:
        done["view"] = client.ensure_view(project_id, "Active learning queue")
        if settings.engine.ambiguity:
            done["ambiguous_view"] = _ambiguous_view(r, client, project_id)
    if context.store.current(project_id) is None:
        if client.count_annotations(project_id) > 0:
            done["retrain"] = jobqueue.enqueue_retrain(r, project_id, context.policy, "first contact")[0]
        else:
            job = jobqueue.enqueue_rescore_once(r, project_id, None, context.policy)
            done["rescore"] = job.id if job is not None else None
    return done


@takes_context
def reset_project(context: WorkerContext, project_id: int) -> str:
    """The label config changed: forget the model and counts, then retrain from scratch."""
    r = current_job().connection
    context.store.reset(project_id)
    audits.forget(r, project_id)
    projects.set_trained_count(r, project_id, None)
    projects.forget_propagation_check(r, project_id)
    projects.forget_knn_lists(r, project_id)
    projects.clear_changes(r, project_id)
    job_id, _ = jobqueue.enqueue_retrain(r, project_id, context.policy, "label config changed")
    return job_id


@takes_context
def reconcile(context: WorkerContext) -> dict:
    """Heal every known project: retrain it when LS's annotation count differs from its model's,
    else publish its newest version if an outage kept it from going live and delete the
    predictions of versions that never went live."""
    r = current_job().connection
    enqueued, errors = {}, {}
    for project_id in projects.known_projects(r):
        try:
            done = _reconcile_project(context, r, project_id)
        except Exception as exc:  # one unreachable project must not stop the others
            errors[project_id] = f"{type(exc).__name__}: {exc}"
            continue
        if done:
            enqueued[project_id] = done
    if errors:
        raise RuntimeError(f"reconcile could not reach projects {sorted(errors)}: {errors}")
    return {"enqueued": enqueued}


def _ambiguous_view(r: Redis, client, project_id: int) -> int:
    """Make the Data Manager view "Ambiguous" (tasks scored in the set-aside range, see
    ``labeling.AMBIGUOUS_SCORE``) if missing, and remember it."""
    view_id = client.ensure_view(project_id, AMBIGUOUS_VIEW, score_above=AMBIGUOUS_ABOVE)
    projects.set_ambiguous_view(r, project_id, view_id)
    return view_id


def _reconcile_project(context: WorkerContext, r: Redis, project_id: int) -> dict:
    client = context.client(r, project_id)
    settings = context.settings
    if settings.setup_view and settings.engine.ambiguity and projects.ambiguous_view(r, project_id) is None:
        _ambiguous_view(r, client, project_id)  # routing turned on after the project's first contact
    count = client.count_annotations(project_id)
    trained = projects.trained_count(r, project_id) or 0
    if count != trained:
        reason = f"reconcile: LS has {count} annotations, model trained on {trained}"
        return {"retrain": jobqueue.enqueue_retrain(r, project_id, context.policy, reason)[0]}
    # LS first, our state after: a version LS lists was imported before we look at our state,
    # so by then its publish either still runs (we leave the project alone) or has ended.
    in_ls = client.model_versions(project_id)
    if jobqueue.rescore_under_way(r, project_id):
        return {}  # that rescore publishes, then cleans up after itself
    done: dict = {}
    current = context.store.current(project_id)
    if not jobqueue.retrain_under_way(r, project_id) and _not_live(r, project_id, current):
        job = jobqueue.enqueue_rescore_once(r, project_id, current, context.policy)
        if job is not None:
            done["publish"] = job.id
    orphans = _orphans(r, client, project_id, in_ls, current)
    for version in orphans:
        jobqueue.enqueue_cleanup(r, project_id, version, context.policy)
    if orphans:
        done["cleanup"] = orphans
    return done


def _not_live(r: Redis, project_id: int, current: str | None) -> bool:
    """Whether the newest version (the cold start before any model) is not live: its publish
    ran out of retries. A rescore of it that finished without publishing (an empty pool, an
    unusable checkpoint) is not repeated."""
    published = projects.published_version(r, project_id)
    if current is None and published is not None:
        return False  # a reset label config: the old order stays until a model of the new one
    if published == (current or projects.cold_start_version(project_id)):
        return False
    latest = jobqueue.latest_rescore(r, project_id)
    if latest is None or latest.args[1] != current or latest.get_status(refresh=False) != JobStatus.FINISHED:
        return True
    return not (latest.return_value() or {}).get("skipped")


def _orphans(r: Redis, client, project_id: int, in_ls: dict[str, int], current: str | None) -> list[str]:
    """Our versions with predictions in LS that are neither live nor current (nor what LS samples
    by): imports cut short by a failed publish whose cleanup never ran. Clears a stale
    importing mark, which only a publish of the current version still needs."""
    published = projects.published_version(r, project_id)
    importing = projects.importing_version(r, project_id)
    if importing is not None and (importing != current or importing == published):
        projects.clear_importing_version_if(r, project_id, importing)
    keep = {published, current}
    found = sorted(v for v, n in in_ls.items() if n and v not in keep and projects.owns_version(project_id, v))
    if found:  # a switch whose reply was lost is live in LS though not recorded: never delete it
        keep.add(client.get_project(project_id).get("model_version"))
    return [v for v in found if v not in keep]


@takes_context
def delete_version(context: WorkerContext, project_id: int, version: str) -> int:
    """Delete an old version's predictions from LS (never the live one, nor the current one,
    whose publish may be under way)."""
    r = current_job().connection
    if version in (projects.published_version(r, project_id), context.store.current(project_id)):
        return 0
    return context.client(r, project_id).delete_predictions(project_id, version)
