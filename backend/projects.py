"""Per-project state shared through Redis by the web process and the workers.

Keys (prefix ``al:``):
  al:projects               set of project ids set up through /setup (only /setup adds to it)
  al:p:<id>:conn            hash: hostname and access_token LS sent at /setup
  al:p:<id>:config          fingerprint of the label config last seen
  al:p:<id>:changes         annotation changes since the last retrain trigger
  al:p:<id>:seen:<change>   an annotation change already counted (expires after SEEN_TTL)
  al:p:<id>:trained_count   LS annotation count the current model was trained on
  al:p:<id>:published       model version whose predictions are live in LS
  al:p:<id>:importing       version a publish is writing (cleared after the switch)
  al:p:<id>:jobs            ids of the project's latest jobs, newest first (capped, expires)
  al:p:<id>:ambiguous_view  id of the "Ambiguous" Data Manager view once made (ambiguity routing)
  al:p:<id>:propagation-check  JSON: the newest PROPAGATION=auto check (the version whose labels
                            it checked, its counts, the label set), which the next retrain reads
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Sequence

from redis import Redis

PREFIX = "al:"
PROJECTS = PREFIX + "projects"
COLD_SUFFIX = "-cold"
JOBS_KEPT = 20  # job ids remembered per project (GET /jobs?project=<id>)
JOBS_TTL = 7 * 24 * 3600  # the list expires a week after the last enqueue (like failed jobs)
SEEN_TTL = 24 * 3600  # a counted change is remembered a day; repeated deliveries come within minutes

# Atomic "add changes, fire every N": returns 1 (and resets) when the counter reaches N.
_ADD_CHANGES = """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], 0)
  return 1
end
return 0
"""
_DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def key(project_id: int, name: str) -> str:
    """The Redis key of one fact about a project."""
    return f"{PREFIX}p:{int(project_id)}:{name}"


def cold_start_version(project_id: int) -> str:
    """The version name of priorities published before any model exists."""
    return f"p{int(project_id)}-v0000{COLD_SUFFIX}"


def is_cold_start(version: str | None) -> bool:
    """Whether a published version is the model-less cold-start order."""
    return bool(version) and version.endswith(COLD_SUFFIX)


def owns_version(project_id: int, version: str) -> bool:
    """Whether a model version name is one this backend gives the project's predictions
    (``p<id>-v<NNNN>-<6 hex>`` or the cold start): only those may ever be deleted from LS."""
    return re.fullmatch(rf"p{int(project_id)}-v\d{{4,}}-(?:[0-9a-f]{{6}}|cold)", version or "") is not None


def register(r: Redis, project_id: int) -> bool:
    """Record a project as known (only /setup does); True on first contact."""
    return bool(r.sadd(PROJECTS, int(project_id)))


def is_known(r: Redis, project_id: int) -> bool:
    """Whether the project was set up through /setup: webhooks for any other are refused."""
    return bool(r.sismember(PROJECTS, int(project_id)))


def known_projects(r: Redis) -> list[int]:
    """Every project id the backend has seen, ascending."""
    return sorted(int(x) for x in r.smembers(PROJECTS))


def save_connection(r: Redis, project_id: int, hostname: str, access_token: str) -> None:
    """Remember where LS is and the token it gave us (used when LABEL_STUDIO_API_KEY is unset)."""
    values = {k: v for k, v in (("hostname", hostname), ("access_token", access_token)) if v}
    if values:
        r.hset(key(project_id, "conn"), mapping=values)


def ls_endpoint(r: Redis, project_id: int, url: str, api_key: str) -> tuple[str, str]:
    """Where to reach LS for a project and with which token: the configured URL and
    LABEL_STUDIO_API_KEY when a key is set, else the hostname and token LS sent at /setup."""
    if api_key:
        return url, api_key
    conn = connection(r, project_id)
    return conn.get("hostname") or url, conn.get("access_token", "")


def connection(r: Redis, project_id: int) -> dict[str, str]:
    """The hostname/access_token LS sent at /setup ({} if none)."""
    raw = r.hgetall(key(project_id, "conn"))
    return {as_text(k): as_text(v) for k, v in raw.items()}


def config_fingerprint(r: Redis, project_id: int) -> str | None:
    """Fingerprint of the label config last seen for the project."""
    return _get(r, key(project_id, "config"))


def set_config_fingerprint(r: Redis, project_id: int, fingerprint: str) -> str | None:
    """Store a new fingerprint; return the previous one."""
    return as_text(r.set(key(project_id, "config"), fingerprint, get=True))


def add_changes(r: Redis, project_id: int, changes: int, every: int) -> bool:
    """Count annotation changes; True when they reach ``every`` (the counter restarts)."""
    return bool(r.eval(_ADD_CHANGES, 1, key(project_id, "changes"), int(changes), int(every)))


@dataclass(frozen=True)
class ChangeCount:
    """What counting one webhook's annotation changes did."""

    counted: int  # changes counted by this delivery
    duplicates: int  # changes an earlier delivery already counted
    retrain: bool  # the counter reached ``every`` (and restarted)


def count_changes(r: Redis, project_id: int, changes: int, every: int, keys: Sequence[str] = ()) -> ChangeCount:
    """Count a webhook's annotation changes once each, however often it is delivered.

    ``keys`` name the changes that can be recognised (:func:`backend.events.change_key`): each
    counts only if no delivery in the last SEEN_TTL seconds counted it (SET NX: of concurrent
    deliveries exactly one wins). The other ``changes - len(keys)`` count at every delivery.
    """
    new = _first_seen(r, project_id, keys)
    counted = changes - len(keys) + new
    retrain = counted > 0 and add_changes(r, project_id, counted, every)
    return ChangeCount(counted=counted, duplicates=len(keys) - new, retrain=retrain)


def _first_seen(r: Redis, project_id: int, keys: Sequence[str]) -> int:
    """Mark change keys as seen; how many were not seen before."""
    if not keys:
        return 0
    with r.pipeline(transaction=False) as pipe:
        for change in keys:
            pipe.set(key(project_id, f"seen:{change}"), 1, nx=True, ex=SEEN_TTL)
        return sum(1 for was_set in pipe.execute() if was_set)


def clear_changes(r: Redis, project_id: int) -> None:
    """Forget counted changes (a retrain is about to read all annotations anyway)."""
    r.delete(key(project_id, "changes"))


def trained_count(r: Redis, project_id: int) -> int | None:
    """Annotation count the current model was trained on, None if never trained."""
    value = _get(r, key(project_id, "trained_count"))
    return None if value is None else int(value)


def set_trained_count(r: Redis, project_id: int, count: int | None) -> None:
    """Record the annotation count a model was trained on (None forgets it)."""
    if count is None:
        r.delete(key(project_id, "trained_count"))
    else:
        r.set(key(project_id, "trained_count"), int(count))


def published_version(r: Redis, project_id: int) -> str | None:
    """The model version whose predictions LS currently samples by."""
    return _get(r, key(project_id, "published"))


def set_published_version(r: Redis, project_id: int, version: str | None) -> None:
    """Record the live version (None forgets it)."""
    if version is None:
        r.delete(key(project_id, "published"))
    else:
        r.set(key(project_id, "published"), version)


def importing_version(r: Redis, project_id: int) -> str | None:
    """A version whose import started but whose switch has not happened."""
    return _get(r, key(project_id, "importing"))


def set_importing_version(r: Redis, project_id: int, version: str | None) -> None:
    """Mark (or clear, with None) a version being imported."""
    if version is None:
        r.delete(key(project_id, "importing"))
    else:
        r.set(key(project_id, "importing"), version)


def clear_importing_version_if(r: Redis, project_id: int, version: str) -> bool:
    """Clear the importing mark only if it still names ``version`` (a new publish may have set
    its own); True when cleared."""
    return bool(r.eval(_DELETE_IF_EQUAL, 1, key(project_id, "importing"), version))


def ambiguous_view(r: Redis, project_id: int) -> int | None:
    """The id of the project's "Ambiguous" Data Manager view, None until it is made."""
    value = _get(r, key(project_id, "ambiguous_view"))
    return None if value is None else int(value)


def set_ambiguous_view(r: Redis, project_id: int, view_id: int) -> None:
    """Record that the project's "Ambiguous" view exists (so it is made once)."""
    r.set(key(project_id, "ambiguous_view"), int(view_id))


def record_job(r: Redis, project_id: int, job_id: str) -> None:
    """Remember a job enqueued for the project: newest first, the last JOBS_KEPT, expiring."""
    name = key(project_id, "jobs")
    with r.pipeline() as pipe:
        pipe.lpush(name, job_id)
        pipe.ltrim(name, 0, JOBS_KEPT - 1)
        pipe.expire(name, JOBS_TTL)
        pipe.execute()


def propagation_check(r: Redis, project_id: int) -> dict | None:
    """The newest propagation check recorded for the project (:func:`record_propagation_check`):
    {"version": the model version whose labels it checked, "check": [spread_correct, plain_correct,
    held_out], "classes": the label set}, or None."""
    raw = _get(r, key(project_id, "propagation-check"))
    return json.loads(raw) if raw else None


def record_propagation_check(r: Redis, project_id: int, version: str, check: Sequence[int],
                             classes: Sequence[str]) -> bool:
    """Record a check made on ``version``'s labels, unless one of a later version is recorded
    (checks may end out of order on several workers); True when recorded."""
    with r.lock(key(project_id, "propagation-check:lock"), timeout=10, blocking_timeout=10):
        held = propagation_check(r, project_id)
        if held is not None and version_number(held["version"]) > version_number(version):
            return False
        r.set(key(project_id, "propagation-check"),
              json.dumps({"version": version, "check": [int(v) for v in check], "classes": list(classes)}))
        return True


def forget_propagation_check(r: Redis, project_id: int) -> None:
    """Drop the recorded check (the project's models were reset and their numbers start again)."""
    r.delete(key(project_id, "propagation-check"))


def claim_knn_lists(r: Redis, project_id: int) -> bool:
    """True once per project (until :func:`forget_knn_lists`): whether the caller queues the job that
    builds the pool's k-NN lists after the project's first publish."""
    return bool(r.set(key(project_id, "knn-lists-queued"), 1, nx=True))


def forget_knn_lists(r: Redis, project_id: int) -> None:
    """Let the next publish queue the k-NN lists' job again (a reset: the texts may be read from another field)."""
    r.delete(key(project_id, "knn-lists-queued"))


def version_number(version: str) -> int:
    """N of a version name ``p<id>-v<N>-...`` (the model store counts a project's versions up)."""
    found = re.match(r"p\d+-v(\d+)-", version or "")
    if found is None:
        raise ValueError(f"not a model version name: {version!r}")
    return int(found.group(1))


def recent_jobs(r: Redis, project_id: int) -> list[str]:
    """Ids of the project's latest jobs, newest first (some may have expired from RQ)."""
    return [as_text(x) for x in r.lrange(key(project_id, "jobs"), 0, JOBS_KEPT - 1)]


def _get(r: Redis, name: str) -> str | None:
    return as_text(r.get(name))


def as_text(value: object) -> str | None:
    """A Redis reply as text (bytes decoded), None for None."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
