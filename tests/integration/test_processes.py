"""Real processes: `python -m workers` (forking RQ worker) and the embedded stack `python -m backend`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from backend import jobqueue

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "LABEL_STUDIO_"))}
    env.update({k: str(v) for k, v in extra.items()})
    env["PYTHONPATH"] = str(ROOT)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_worker(redis_url: str, tmp_path: Path, tiny_encoder: str,
                command: tuple[str, ...] = (sys.executable, "-m", "workers", "--burst")):
    env = _env(REDIS_URL=redis_url, MODEL_DIR=tmp_path / "models", ENCODER=tiny_encoder,
               LABEL_STUDIO_URL="http://127.0.0.1:1", LABEL_STUDIO_API_KEY="x", JOB_RETRIES=0,
               RECONCILE_INTERVAL=0, LOG_LEVEL="WARNING")
    return subprocess.run(list(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flags", [(), ("--in-process",)], ids=["work-horses", "in-process"])
def test_worker_process_fails_a_job_and_runs_the_next(redis_url, r, tmp_path, tiny_encoder, flags):
    command = (sys.executable, "-m", "workers", "--burst", *flags)
    policy = jobqueue.JobPolicy(retries=0)
    first, outcome = jobqueue.enqueue_retrain(r, 1, policy, "test")
    assert outcome == "enqueued"
    stale = jobqueue.enqueue_rescore(r, 1, "p1-v0009-abcdef", policy)
    result = _run_worker(redis_url, tmp_path, tiny_encoder, command)
    assert result.returncode == 0, result.stderr[-2000:]
    # LS is unreachable: the retrain raised in the work-horse and RQ kept it as failed.
    assert FailedJobRegistry("train", connection=r).get_job_ids() == [first]
    assert "LabelStudioError" in Job.fetch(first, connection=r).latest_result().exc_string
    assert Job.fetch(stale.id, connection=r).return_value()["skipped"] is True
    # A failed job never blocks the next retrain: a new job is enqueued and runs.
    second, outcome = jobqueue.enqueue_retrain(r, 1, policy, "test")
    assert outcome == "enqueued" and second != first
    assert _run_worker(redis_url, tmp_path, tiny_encoder, command).returncode == 0
    assert set(FailedJobRegistry("train", connection=r).get_job_ids()) == {first, second}
    assert FinishedJobRegistry("score", connection=r).get_job_ids() == [stale.id]


@pytest.mark.parametrize("worker_class", ["EnvironmentWorker", "EnvironmentInProcessWorker"])
def test_rq_cli_runs_our_jobs_with_the_environment_worker(redis_url, r, tmp_path, tiny_encoder, worker_class):
    """rq's own CLI cannot pass a context: EnvironmentWorker builds it from the environment."""
    stale = jobqueue.enqueue_rescore(r, 1, "p1-v0009-abcdef", jobqueue.JobPolicy(retries=0))
    rq_cli = str(Path(sys.executable).parent / "rq")
    result = _run_worker(redis_url, tmp_path, tiny_encoder, (
        rq_cli, "worker", "--burst", "--url", redis_url, "-w", f"workers.worker.{worker_class}", *jobqueue.QUEUES))
    assert result.returncode == 0, result.stderr[-2000:]
    assert Job.fetch(stale.id, connection=r).return_value()["skipped"] is True


def _get(url: str, timeout: float = 2.0) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, json.loads(response.read())


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.loads(response.read())


@pytest.mark.slow
def test_embedded_stack_starts_serves_and_stops_together(tmp_path, tiny_encoder):
    port = _free_port()
    env = _env(HOST="127.0.0.1", PORT=port, MODEL_DIR=tmp_path / "data", ENCODER=tiny_encoder,
               WEB_WORKERS=1, EMBEDDED_WORKERS=1, LABEL_STUDIO_URL="http://127.0.0.1:1",
               LABEL_STUDIO_API_KEY="x", JOB_RETRIES=0, LOG_LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "backend"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, body = _get(base + "/health")
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()[-3000:]
                assert time.monotonic() < deadline, "web server did not come up"
                time.sleep(0.5)
        assert (status, body["status"]) == (200, "UP")
        assert (tmp_path / "data" / "redis.db").parent.exists()
        config = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
                  '<Choice value="pos"/><Choice value="neg"/></Choices></View>')
        assert _post(base + "/setup", {"project": "1.1", "schema": config})[0] == 200  # makes project 1 known
        status, body = _post(base + "/webhook", {"action": "START_TRAINING", "project": 1})
        assert status == 200 and body["job_id"]
        # The embedded worker picks the job up (and fails it: no LS here), visible through /jobs.
        deadline = time.monotonic() + 120
        while _get(f"{base}/jobs/{body['job_id']}")[1]["status"] not in ("failed", "finished"):
            assert time.monotonic() < deadline, "embedded worker did not run the job"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output[-3000:]
    with pytest.raises(OSError):
        _get(base + "/health", timeout=1)


def test_start_up_paths_never_initialise_cuda(redis_url):
    """Web app and worker start-up must leave CUDA alone (RQ and gunicorn fork after them)."""
    code = (
        "import torch\n"
        "from backend.app import create_app\n"
        "from backend.settings import Settings\n"
        "import workers.__main__, workers.training, workers.scoring, workers.lifecycle\n"
        "from workers.context import WorkerContext\n"
        "from workers.worker import ReconcilingWorker\n"
        "from redis import Redis\n"
        f"create_app(Settings(redis_url={redis_url!r}))\n"
        f"ReconcilingWorker(['train'], connection=Redis.from_url({redis_url!r}),\n"
        "                  context=WorkerContext.from_settings(Settings()))\n"
        "print('cuda initialised:', torch.cuda.is_initialized())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cuda initialised: False" in result.stdout
