"""Counters and timings kept in Redis, rendered in the Prometheus text format.

Every gunicorn worker and every RQ work-horse writes to the same Redis hashes, so one
scrape of ``/metrics`` on any web worker sees the whole service.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

from redis import Redis
from rq.exceptions import AbandonedJobError

COUNTERS = "al:metrics:counters"  # field "<name>|<label>=<value>,..." -> int
SUMMARIES = "al:metrics:summaries"  # field "<name>|<labels>|sum" / "|count" -> float

HELP = {
    "al_webhooks_total": ("counter", "Webhooks received, by LS event."),
    "al_duplicate_changes_total": ("counter", "Annotation changes delivered again and not counted again."),
    "al_jobs_enqueued_total": ("counter", "Jobs enqueued, by job function."),
    "al_jobs_finished_total": ("counter", "Jobs finished successfully, by job function."),
    "al_jobs_failed_total": ("counter", "Job attempts that failed (raised, timed out, or their process died), "
                                        "by job function."),
    "al_job_retries_total": ("counter", "Failed job attempts that RQ retries, by job function."),
    "al_jobs_abandoned_total": ("counter", "Job attempts whose process died, by job function and reason: "
                                           "horse_killed (SIGKILL, OOM killer) or worker_lost (the whole "
                                           "worker died; found by another worker's registry maintenance)."),
    "al_tasks_scored_total": ("counter", "Tasks given a priority score."),
    "al_predictions_total": ("counter", "Tasks answered by /predict."),
    "al_retrain_seconds": ("summary", "Duration of retrain jobs."),
    "al_rescore_seconds": ("summary", "Duration of re-score jobs."),
    "al_queue_depth": ("gauge", "Jobs waiting in each RQ queue."),
    "al_jobs_in_registry": ("gauge", "Jobs in each RQ registry (started, failed, scheduled)."),
}
log = logging.getLogger(__name__)


def _field(name: str, labels: dict[str, str] | None) -> str:
    rendered = ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))
    return f"{name}|{rendered}"


def inc(r: Redis, name: str, labels: dict[str, str] | None = None, amount: int = 1) -> None:
    """Add to a counter."""
    r.hincrby(COUNTERS, _field(name, labels), int(amount))


def observe(r: Redis, name: str, seconds: float, labels: dict[str, str] | None = None) -> None:
    """Record one duration in a summary (sum and count)."""
    base = _field(name, labels)
    pipe = r.pipeline()
    pipe.hincrbyfloat(SUMMARIES, base + "|sum", float(seconds))
    pipe.hincrby(SUMMARIES, base + "|count", 1)
    pipe.execute()


@contextmanager
def timed(r: Redis, name: str) -> Iterator[None]:
    """Observe the duration of a block (also when it raises)."""
    start = time.monotonic()
    try:
        yield
    finally:
        observe(r, name, time.monotonic() - start)


def _labels_text(rendered: str, extra: dict[str, str] | None = None) -> str:
    pairs = [p.split("=", 1) for p in rendered.split(",") if p]
    pairs += sorted((extra or {}).items())
    if not pairs:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + body + "}"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(r: Redis, gauges: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> str:
    """Prometheus exposition of the Redis counters and summaries plus the given gauges."""
    samples: dict[str, list[str]] = {}
    for raw_field, value in r.hgetall(COUNTERS).items():
        name, rendered = _decode(raw_field).split("|", 1)
        samples.setdefault(name, []).append(f"{name}{_labels_text(rendered)} {int(value)}")
    for raw_field, value in r.hgetall(SUMMARIES).items():
        name, rendered, part = _decode(raw_field).split("|", 2)
        samples.setdefault(name, []).append(
            f"{name}_{part}{_labels_text(rendered)} {float(_decode(value)):g}")
    for name, series in gauges.items():
        for labels, value in series.items():
            samples.setdefault(name, []).append(f"{name}{_labels_text('', dict(labels))} {value:g}")
    lines = []
    for name in sorted(set(HELP) | set(samples)):
        kind, text = HELP.get(name, ("untyped", name))
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines += sorted(samples.get(name, []))
    return "\n".join(lines) + "\n"


def _decode(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _job_name(job) -> str:
    return str(job.func_name).rsplit(".", 1)[-1]


def on_job_success(job, connection, result, *args, **kwargs) -> None:
    """RQ success callback: count a finished job."""
    inc(connection, "al_jobs_finished_total", {"job": _job_name(job)})


def on_job_failure(job, connection, exc_type, exc_value, tb, *args, **kwargs) -> None:
    """RQ failure callback: count a failed attempt. RQ also calls it, with AbandonedJobError, for
    a started job whose worker died, when another worker's maintenance finds it."""
    lost = isinstance(exc_type, type) and issubclass(exc_type, AbandonedJobError)
    count_failure(connection, job, abandoned="worker_lost" if lost else None)


def count_failure(r: Redis, job, abandoned: str | None = None) -> None:
    """Count a failed attempt of ``job``, whether RQ will retry it (it has retries left), and why
    its process died when it did (``abandoned``). Never raises: a metrics hiccup must not mask
    the job's own failure."""
    labels = {"job": _job_name(job)}
    try:
        inc(r, "al_jobs_failed_total", labels)
        if job.retries_left:
            inc(r, "al_job_retries_total", labels)
        if abandoned:
            inc(r, "al_jobs_abandoned_total", {**labels, "reason": abandoned})
    except Exception:
        log.exception("could not count a failed job")
