"""Per-project status for the status page (``GET /``) and ``GET /projects/<id>/status``.

Read from Redis only (no LS call, no model): the live model version, the labels it was trained
on, the project's queued, running and failed jobs, the audit accuracy per version and overall
with its learning curve (:mod:`backend.audits`, :mod:`backend.al.audit`), and the stopping
signal (:mod:`backend.al.stopping`). ``curve_plot`` turns the curve into SVG coordinates for
the page (pure).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Sequence

from redis import Redis

from backend import audits, jobqueue, projects
from backend.al.audit import AuditEstimate, audit_report
from backend.al.stopping import stopping_signal
from backend.settings import Settings

WAITING = ("queued", "scheduled", "deferred")
ERRORS_SHOWN = 5
ITEMS_SHOWN = 50  # the latest audit items listed in the JSON, for checking their labels


def overview(r: Redis, settings: Settings) -> dict:
    """The status of every project set up through /setup, ascending by id."""
    return {"projects": [project_status(r, settings, pid) for pid in projects.known_projects(r)]}


def page(r: Redis, settings: Settings) -> dict:
    """What the status page renders: :func:`overview` plus each project's curve plot."""
    statuses = overview(r, settings)["projects"]
    return {"projects": statuses, "plots": {p["project"]: curve_plot(p["learning_curve"]) for p in statuses}}


def project_status(r: Redis, settings: Settings, project_id: int) -> dict:
    """One project's status, as ``GET /projects/<id>/status`` answers it."""
    version = projects.published_version(r, project_id)
    jobs = [_with_percent(job) for job in jobqueue.project_jobs(r, project_id)]
    return {
        "project": int(project_id),
        "known": projects.is_known(r, project_id),
        "model_version": version,
        "cold_start": projects.is_cold_start(version),
        "labels": projects.trained_count(r, project_id),
        "queue": {"pending": [j for j in jobs if j["status"] in WAITING],
                  "running": [j for j in jobs if j["status"] == "started"]},
        "errors": [_error(j) for j in jobs if j["status"] == "failed"][:ERRORS_SHOWN],
        "links": project_links(r, settings, project_id),
        **audit_status(r, project_id),
    }


def audit_status(r: Redis, project_id: int) -> dict:
    """``audit`` (overall and per version), ``learning_curve`` and ``stopping`` of a project."""
    items = audits.audit_items(r, project_id)
    report = audit_report(items)
    labels = audits.version_labels(r, project_id)
    versions = [{"version": v, "labels": labels.get(v), **_estimate(e)} for v, e in report.versions.items()]
    stability = audits.kappas(r, project_id)
    signal = stopping_signal([k["kappa"] for k in stability], items)
    return {
        "audit": {"overall": _estimate(report.overall), "versions": versions,
                  "latest": [{"task": i.task_id, "version": i.version, "predicted": i.predicted, "label": i.label,
                              "correct": i.correct} for i in items[-ITEMS_SHOWN:]]},
        "learning_curve": sorted((v for v in versions if v["labels"] is not None), key=lambda v: v["labels"]),
        "stopping": {
            "state": signal.state, "reason": signal.reason, "kappas": list(signal.kappas),
            "stability": stability, "recent": _estimate(signal.recent),
            "gain": None if signal.gain is None else dict(zip(("gain", "low", "high"), signal.gain, strict=True)),
            "rule": asdict(signal.rule),
        },
    }


def project_links(r: Redis, settings: Settings, project_id: int) -> dict:
    """Links into Label Studio: the project's Data Manager and its model settings."""
    base, _ = projects.ls_endpoint(r, project_id, settings.label_studio_url, settings.label_studio_api_key)
    base = base.rstrip("/")
    return {"project": f"{base}/projects/{int(project_id)}/data",
            "settings": f"{base}/projects/{int(project_id)}/settings/ml"}


def curve_plot(points: Sequence[dict], width: int = 320, height: int = 160, pad: int = 28) -> dict:
    """SVG coordinates of a learning curve: accuracy (0..1, y) against labels (x), with 95% bars.

    points: [{"labels", "accuracy", "low", "high"}] by labels -> {"width", "height", "pad",
    "points": [{"x", "y", "y_low", "y_high", ...the point}], "path", "x_max"}. Pure.
    """
    shown = [p for p in points if p.get("accuracy") is not None and p.get("labels") is not None]
    x_max = max((p["labels"] for p in shown), default=0) or 1
    inner_w, inner_h = width - 2 * pad, height - 2 * pad

    def x(labels: float) -> float:
        return round(pad + inner_w * labels / x_max, 1)

    def y(value: float) -> float:
        return round(pad + inner_h * (1 - value), 1)

    placed = [{**p, "x": x(p["labels"]), "y": y(p["accuracy"]), "y_low": y(p["low"]), "y_high": y(p["high"])}
              for p in shown]
    path = " ".join(f"{'M' if i == 0 else 'L'}{p['x']},{p['y']}" for i, p in enumerate(placed))
    return {"width": width, "height": height, "pad": pad, "points": placed, "path": path, "x_max": x_max}


def _estimate(estimate: AuditEstimate) -> dict:
    return asdict(estimate)


def _with_percent(job: dict) -> dict:
    progress = job.get("progress") or {}
    total = progress.get("total") or 0
    percent = round(100 * min(progress.get("done", 0), total) / total) if total else None
    return {**job, "percent": percent}


def _error(job: dict) -> dict:
    return {key: job.get(key) for key in ("id", "name", "error", "ended_at")}
