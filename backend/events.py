"""Webhook payload -> what to do. Pure: no Redis, no queue, no HTTP.

LS sends every event to ``/webhook`` without credentials, so a payload is an untrusted
*trigger*: we take from it only the project id, the event name, the ids (and update times)
of changed annotations, to count a change once however often it is delivered, and (for
TASKS_CREATED) which tasks to score; the jobs read the truth from the LS API.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

COUNTED = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED")

IGNORE = "ignore"
COUNT = "count"  # annotation changes: retrain after RETRAIN_EVERY of them
RETRAIN = "retrain"  # START_TRAINING: retrain now
SCORE_NEW = "score_new"  # TASKS_CREATED: score the new tasks with the current model
RESET = "reset"  # PROJECT_UPDATED with a changed label config
REMEMBER_CONFIG = "remember_config"  # PROJECT_UPDATED, config unknown before: just record it
_MAX_STAMP = 64  # longest updated_at taken into a change key (LS sends ISO 8601, about 32 chars)


class EventError(ValueError):
    """A payload we cannot act on (message: one line, returned with HTTP 400)."""


@dataclass(frozen=True)
class Decision:
    """What a webhook asks for.

    For COUNT, ``changes`` counts annotation changes; ``change_keys`` names those that can be
    recognised in a repeated delivery (see :func:`change_key`), so they count only once.
    """

    action: str
    event: str
    project_id: int
    changes: int = 0
    change_keys: tuple[str, ...] = ()
    task_ids: tuple[int, ...] = ()
    label_config: str | None = None


def parse_project_id(value: object) -> int:
    """A project id from an int, ``"7"``, LS's /setup form ``"7.1712345678"`` or ``{"id": 7}``."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool):
        raise EventError("project id must be a number")
    if isinstance(value, int):
        project_id = value
    elif isinstance(value, str) and value.strip():
        head = value.strip().split(".", 1)[0]
        if not (head.isascii() and head.isdigit()):
            raise EventError(f"project id {value[:40]!r} is not a number")
        project_id = int(head)
    else:
        raise EventError("payload has no project id")
    if project_id <= 0:
        raise EventError(f"project id {project_id} must be positive")
    return project_id


def project_id_of(payload: dict) -> int:
    """Find the project id wherever LS put it (project, task.project or annotation.project)."""
    candidates = [payload.get("project")]
    for key in ("task", "annotation"):
        inner = payload.get(key)
        if isinstance(inner, dict):
            candidates.append(inner.get("project"))
    for candidate in candidates:
        if candidate is None or candidate == {}:
            continue
        try:
            return parse_project_id(candidate)
        except EventError:
            continue
    raise EventError("payload has no project id (looked at project, task.project, annotation.project)")


def config_fingerprint(label_config: str) -> str:
    """A short hash of a label config, whitespace-insensitive, to detect changes."""
    canonical = " ".join(label_config.split())
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def decide(payload: object, known_config: str | None = None) -> Decision:
    """Decide what a webhook payload asks for.

    ``known_config`` is the fingerprint of the label config the backend last saw for the
    project (``None`` if never seen); it decides whether PROJECT_UPDATED resets the model.
    Raises :class:`EventError` for a payload that is not an object or has no project id.
    """
    if not isinstance(payload, dict):
        raise EventError("payload must be a JSON object")
    event = payload.get("action")
    if not isinstance(event, str) or not event:
        raise EventError("payload has no action")
    project_id = project_id_of(payload)
    if event in COUNTED:
        changes, keys = _count_changes(event, payload)
        return Decision(COUNT, event, project_id, changes=changes, change_keys=keys)
    if event == "START_TRAINING":
        return Decision(RETRAIN, event, project_id)
    if event == "TASKS_CREATED":
        return _tasks_created(payload, project_id)
    if event == "PROJECT_UPDATED":
        return _project_updated(payload, project_id, known_config)
    return Decision(IGNORE, event, project_id)


def change_key(event: str, annotation: object) -> str | None:
    """A name for one annotation change, the same in every delivery of it; None if it has no id.

    A created or updated annotation is named by its id and ``updated_at`` (an edit is a new
    change); a deletion by its id. An update without ``updated_at`` cannot be told from the
    next update of the same annotation, so it gets no name and counts at every delivery.
    """
    annotation_id = annotation.get("id") if isinstance(annotation, dict) else None
    if not _is_id(annotation_id):
        return None
    if event == "ANNOTATIONS_DELETED":
        return f"{annotation_id}:deleted"
    updated = annotation.get("updated_at")
    if isinstance(updated, str) and 0 < len(updated) <= _MAX_STAMP:
        return f"{annotation_id}@{updated}"
    return None if event == "ANNOTATION_UPDATED" else f"{annotation_id}:created"


def _count_changes(event: str, payload: dict) -> tuple[int, tuple[str, ...]]:
    """How many annotations an event touches (list lengths for bulk events, else one), and
    the keys of those that have one."""
    for name in ("annotations", "annotation"):
        value = payload.get(name)
        if isinstance(value, list):
            keys = (change_key(event, item) for item in value)
            return max(1, len(value)), tuple(k for k in keys if k is not None)
    key = change_key(event, payload.get("annotation"))
    return 1, () if key is None else (key,)


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63


def _tasks_created(payload: dict, project_id: int) -> Decision:
    tasks = payload.get("tasks")
    ids = []
    for task in tasks if isinstance(tasks, list) else []:
        task_id = task.get("id") if isinstance(task, dict) else task
        if isinstance(task_id, int) and not isinstance(task_id, bool) and task_id > 0:
            ids.append(task_id)
    if not ids:
        return Decision(IGNORE, "TASKS_CREATED", project_id)
    return Decision(SCORE_NEW, "TASKS_CREATED", project_id, task_ids=tuple(sorted(set(ids))))


def _project_updated(payload: dict, project_id: int, known_config: str | None) -> Decision:
    project = payload.get("project")
    config = project.get("label_config") if isinstance(project, dict) else None
    if not isinstance(config, str) or not config.strip():
        return Decision(IGNORE, "PROJECT_UPDATED", project_id)
    if known_config is None:
        return Decision(REMEMBER_CONFIG, "PROJECT_UPDATED", project_id, label_config=config)
    if config_fingerprint(config) == known_config:
        return Decision(IGNORE, "PROJECT_UPDATED", project_id)
    return Decision(RESET, "PROJECT_UPDATED", project_id, label_config=config)
