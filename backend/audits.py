"""Audit records in Redis: what the live model predicted on the tasks it ranked at random.

The exploration share of a ranking (``Ranking.explored``) is a uniformly random sample of the
pool, so a label given to one of those tasks, compared with the prediction of the version that
was live (published) when the task was labelled, is a fair test of that version
(:mod:`backend.al.audit`). A rescore records, per version, the predicted label of every
published explored task and of a fixed stop set (for the stability of predictions between
versions, :mod:`backend.al.stopping`); a retrain pairs each newly labelled task that the live
version explored with its recorded prediction, once.

Keys (prefix ``al:p:<id>:``):
  audit:pred:<version>   hash: task id -> label the version predicted (explored tasks it published)
  audit:stop:<version>   hash: task id -> label the version predicted (its stop-set tasks)
  audit:versions         list of versions that have those hashes, oldest first (the last KEPT)
  audit:items            list of JSON audit items {task, version, predicted, label}, oldest first
  audit:paired           set of task ids already paired (a task is audited once: its first label)
  audit:kappas           hash: version -> JSON {previous, kappa, tasks}: stability against the
                         version live before it
  audit:labels           hash: version -> number of labels it was trained on

A task labelled before a new version went live but read by the retrain after it (an annotation
made while a retrain ran) finds no prediction of the new version unless that version explored it
too: it is dropped, never paired with a version that chose it on purpose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Sequence

from redis import Redis

from backend.al.audit import AuditItem
from backend.projects import key

KEPT = 3  # versions whose prediction hashes are kept: the live one and the two before it
STOP_SET_SIZE = 1000  # tasks whose predictions two versions compare (kappa); 500 was too noisy (BENCHMARKS.md §4)


def canonical(label: str | Sequence[str]) -> str:
    """One string per label: a class name, or for multiple choice the sorted classes as JSON."""
    if isinstance(label, str):
        return label
    return json.dumps(sorted(label))


@dataclass(frozen=True)
class VersionRecord:
    """What one version predicted: on the explored tasks it published, and on the stop set."""

    version: str
    explored: Mapping[int, str]
    stop: Mapping[int, str]


def record_version(r: Redis, project_id: int, record: VersionRecord) -> None:
    """Remember a published version's predictions (idempotent) and forget versions before the last KEPT."""
    versions = key(project_id, "audit:versions")
    with r.pipeline() as pipe:
        for name, values in (("pred", record.explored), ("stop", record.stop)):
            pipe.delete(_hash(project_id, name, record.version))
            if values:
                pipe.hset(_hash(project_id, name, record.version), mapping={int(t): v for t, v in values.items()})
        pipe.lrem(versions, 0, record.version)
        pipe.rpush(versions, record.version)
        pipe.execute()
    old = [_text(v) for v in r.lrange(versions, 0, -KEPT - 1)]
    if old:
        with r.pipeline() as pipe:
            for version in old:
                pipe.delete(_hash(project_id, "pred", version), _hash(project_id, "stop", version))
            pipe.ltrim(versions, -KEPT, -1)
            pipe.execute()


def recorded_versions(r: Redis, project_id: int) -> list[str]:
    """Versions whose predictions are recorded, oldest first (at most KEPT)."""
    return [_text(v) for v in r.lrange(key(project_id, "audit:versions"), 0, -1)]


def stop_predictions(r: Redis, project_id: int, version: str | None) -> dict[int, str]:
    """A version's recorded predictions on its stop set ({} when none were recorded)."""
    if not version:
        return {}
    return {int(t): _text(v) for t, v in r.hgetall(_hash(project_id, "stop", version)).items()}


def record_kappa(r: Redis, project_id: int, version: str, previous: str, kappa: float, tasks: int) -> None:
    """Store the stability of ``version`` against ``previous`` (on ``tasks`` common stop-set tasks)."""
    value = json.dumps({"previous": previous, "kappa": float(kappa), "tasks": int(tasks)})
    r.hset(key(project_id, "audit:kappas"), version, value)


def kappas(r: Redis, project_id: int) -> list[dict]:
    """[{version, previous, kappa, tasks}] oldest version first (names sort by their number)."""
    raw = r.hgetall(key(project_id, "audit:kappas"))
    rows = [{"version": _text(v), **json.loads(x)} for v, x in raw.items()]
    return sorted(rows, key=lambda row: row["version"])


def set_version_labels(r: Redis, project_id: int, version: str, labels: int) -> None:
    """Record how many labels a version was trained on (the x axis of the learning curve)."""
    r.hset(key(project_id, "audit:labels"), version, int(labels))


def version_labels(r: Redis, project_id: int) -> dict[str, int]:
    """{version: labels it was trained on}."""
    return {_text(v): int(n) for v, n in r.hgetall(key(project_id, "audit:labels")).items()}


def pair_labels(r: Redis, project_id: int, live_version: str | None, labels: Mapping[int, str]) -> int:
    """Pair newly labelled tasks that ``live_version`` explored with its predictions; returns how many.

    ``labels``: {task id: canonical label} of every annotated task. A task is paired once.
    """
    if not live_version or not labels:
        return 0
    predicted = {int(t): _text(v) for t, v in r.hgetall(_hash(project_id, "pred", live_version)).items()}
    candidates = sorted(t for t in labels if t in predicted)
    if not candidates:
        return 0
    paired = key(project_id, "audit:paired")
    with r.pipeline() as pipe:
        for task in candidates:
            pipe.sadd(paired, task)
        fresh = [task for task, added in zip(candidates, pipe.execute(), strict=True) if added]
    if fresh:
        r.rpush(key(project_id, "audit:items"), *[json.dumps(
            {"task": t, "version": live_version, "predicted": predicted[t], "label": labels[t]}) for t in fresh])
    return len(fresh)


def audit_items(r: Redis, project_id: int) -> list[AuditItem]:
    """The project's audit items in the order they were labelled (paired), oldest first."""
    rows = [json.loads(x) for x in r.lrange(key(project_id, "audit:items"), 0, -1)]
    return [AuditItem(int(x["task"]), x["version"], x["predicted"], x["label"]) for x in rows]


def forget(r: Redis, project_id: int) -> None:
    """Drop every audit record of a project (its label config changed: old labels mean other things)."""
    versions = [_text(v) for v in r.lrange(key(project_id, "audit:versions"), 0, -1)]
    names = [_hash(project_id, kind, v) for v in versions for kind in ("pred", "stop")]
    names += [key(project_id, f"audit:{name}") for name in ("versions", "items", "paired", "kappas", "labels")]
    r.delete(*names)


def _hash(project_id: int, kind: str, version: str) -> str:
    return key(project_id, f"audit:{kind}:{version}")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
