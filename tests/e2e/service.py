"""The ML backend as a real process (`python -m backend`: embedded Redis, RQ worker, gunicorn).

Used by the e2e tests and by scripts/bench_publish.py. Settings go in through the environment,
exactly as an operator would set them; REDIS_URL is removed so the embedded stack runs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.e2e.lsserver import REPO, free_port

START_TIMEOUT = 120.0


class BackendError(RuntimeError):
    """The backend process did not come up or misbehaved."""


@dataclass
class BackendProcess:
    """`python -m backend` on 127.0.0.1:<port> with its own MODEL_DIR under `workdir`."""

    workdir: Path
    settings: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "backend.log"

    def start(self) -> "BackendProcess":
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL",)}
        env.update({"HOST": "127.0.0.1", "PORT": str(self.port), "MODEL_DIR": str(self.workdir / "model"),
                    "WEB_WORKERS": "1", "EMBEDDED_WORKERS": "1", "LOG_LEVEL": "INFO",
                    "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false",
                    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        env.update(self.settings)
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "backend"], cwd=REPO, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BackendError(f"python -m backend exited {self.process.returncode}\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise BackendError(f"backend not healthy after {START_TIMEOUT:.0f} s\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the embedded runner (it stops its children), SIGKILL the group if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no backend log)"
        return "--- backend log (tail) ---\n" + "\n".join(text[-lines:])

    def metrics(self) -> dict[str, float]:
        """The /metrics exposition as {'name{labels}': value}."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return parse_metrics(text)

    def project_jobs(self, project_id: int) -> list[dict]:
        """GET /jobs?project=<id>: the project's latest jobs, newest first."""
        response = httpx.get(f"{self.url}/jobs", params={"project": project_id}, timeout=10)
        response.raise_for_status()
        return response.json()["jobs"]

    def job(self, job_id: str) -> dict:
        response = httpx.get(f"{self.url}/jobs/{job_id}", timeout=10)
        response.raise_for_status()
        return response.json()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format, samples only."""
    samples = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?)\s+(\S+)$", line.strip())
        if match and not line.startswith("#"):
            samples[match.group(1)] = float(match.group(2))
    return samples


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def wait_for(condition, timeout: float, interval: float = 0.5, what: str = "condition"):
    """Poll `condition()` until it returns something truthy; returns it, or raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f} s")
        time.sleep(interval)
