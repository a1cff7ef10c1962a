"""Jobs whose process dies (issue 13, defect 5): visible in /metrics, retried or failed, never lost.

A real forking worker (`python -m workers`) runs a job that sleeps; the test SIGKILLs its
work-horse (as the OOM killer would), or the worker and its work-horse together (as a lost
machine would), and reads /metrics from the real web app.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry

from backend import jobqueue
from backend.app import create_app
from tests.e2e.service import metric, parse_metrics

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
SLEEPER = "tests.integration.job_fixtures.sleep_on_first_attempt"
JOB = "sleep_on_first_attempt"


def _start_worker(redis_url: str, tmp_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "LABEL_STUDIO_"))}
    env.update(REDIS_URL=redis_url, MODEL_DIR=str(tmp_path / "models"), LABEL_STUDIO_URL="http://127.0.0.1:1",
               LABEL_STUDIO_API_KEY="x", RECONCILE_INTERVAL="0", LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "workers", "--burst"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _horse_pid(r, name: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while (pid := r.get(f"test:pid:{name}")) is None:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    return int(pid)


def _enqueue(r, retries: int) -> Job:
    policy = jobqueue.JobPolicy(retries=retries, backoff=(0,))
    return jobqueue.enqueue(r, jobqueue.TRAIN, SLEEPER, "a", 120, policy=policy, description="sleeper")


def _counters(settings) -> dict[str, float]:
    samples = parse_metrics(create_app(settings).test_client().get("/metrics").get_data(as_text=True))
    return {name: metric(samples, name, job=JOB) for name in (
        "al_jobs_failed_total", "al_job_retries_total", "al_jobs_abandoned_total", "al_jobs_finished_total")}


@pytest.mark.parametrize("retries", [1, 0], ids=["retried", "failed"])
def test_a_sigkilled_work_horse_is_counted_and_its_job_retried_or_failed(r, redis_url, settings, tmp_path,
                                                                         retries):
    job = _enqueue(r, retries)
    worker = _start_worker(redis_url, tmp_path)
    try:
        os.kill(_horse_pid(r, "a"), signal.SIGKILL)
        output, _ = worker.communicate(timeout=120)
    finally:
        worker.kill()
    assert worker.returncode == 0, output[-3000:]
    counters = _counters(settings)
    assert counters["al_jobs_failed_total"] == 1 and counters["al_job_retries_total"] == retries
    samples = parse_metrics(create_app(settings).test_client().get("/metrics").get_data(as_text=True))
    assert metric(samples, "al_jobs_abandoned_total", job=JOB, reason="horse_killed") == 1
    job.refresh()
    if retries:  # the retry ran to the end: nothing lost
        assert job.get_status() == "finished" and job.return_value() == 2
        assert counters["al_jobs_finished_total"] == 1
    else:  # failed where /jobs and RQ's failed registry show it, with the reason
        assert job.get_status() == "failed"
        assert FailedJobRegistry(jobqueue.TRAIN, connection=r).get_job_ids() == [job.id]
        assert "Work-horse terminated unexpectedly" in job.latest_result().exc_string
        assert int(r.get("test:attempts:a")) == 1


def test_a_job_of_a_dead_worker_is_found_by_another_worker_and_retried(r, redis_url, settings, tmp_path):
    job = _enqueue(r, retries=1)
    first = _start_worker(redis_url, tmp_path)
    try:
        horse = _horse_pid(r, "a")
        os.kill(first.pid, signal.SIGKILL)  # the worker first, so it cannot handle its horse's death
        first.wait(30)
        os.kill(horse, signal.SIGKILL)  # the horse runs in its own process group: it dies on its own
    finally:
        first.kill()
    assert job.get_status() == "started"  # what the dead worker left behind
    # Nobody renews its heartbeat now; RQ calls the job abandoned once it expires (the job
    # monitoring interval + 60 s). Let that minute pass at once.
    registry = StartedJobRegistry(jobqueue.TRAIN, connection=r)
    for entry in r.zrange(registry.key, 0, -1):
        r.zadd(registry.key, {entry: time.time() - 1})

    second = _start_worker(redis_url, tmp_path)  # its start-up maintenance finds the abandoned job
    output, _ = second.communicate(timeout=120)
    assert second.returncode == 0, output[-3000:]
    job.refresh()
    assert job.get_status() == "finished" and job.return_value() == 2  # retried to the end: nothing lost
    counters = _counters(settings)
    assert counters["al_jobs_failed_total"] == 1 and counters["al_job_retries_total"] == 1
    samples = parse_metrics(create_app(settings).test_client().get("/metrics").get_data(as_text=True))
    assert metric(samples, "al_jobs_abandoned_total", job=JOB, reason="worker_lost") == 1
