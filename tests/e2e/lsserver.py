"""A real Label Studio server for tests, started once per test session.

Label Studio (LS) lives in its own virtualenv (its pins clash with ours): ``.ls-venv`` in the
repo, or wherever ``LS_VENV`` points. The server runs on loopback with a temporary data dir
and a known user and legacy token, and stays offline (no Sentry, analytics or version check).
Tests skip when the LS venv is absent, unless ``CI`` is set: there a missing LS fails them.

Both ``tests/e2e`` and ``tests/integration/test_labelstudio.py`` use :func:`ls_server`; the
process is shared through a module-level singleton, so one session starts LS once.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
AGNEWS = Path(os.environ.get("AGNEWS_POOL", REPO.parent / "shared" / "data" / "agnews" / "pool.tsv"))
AGNEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")
TEXT_CHOICES_CONFIG = (
    '<View><Text name="text" value="$text"/>'
    '<Choices name="label" toName="text" choice="single">'
    + "".join(f'<Choice value="{c}"/>' for c in AGNEWS_CLASSES)
    + "</Choices></View>"
)
START_TIMEOUT = float(os.environ.get("LS_START_TIMEOUT", "300"))


class LabelStudioServerError(RuntimeError):
    """The test Label Studio server could not be started."""


def ls_venv() -> Path:
    """Where the LS virtualenv should be: $LS_VENV, else <repo>/.ls-venv."""
    return Path(os.environ.get("LS_VENV") or REPO / ".ls-venv")


def ls_executable() -> Path | None:
    """The `label-studio` command of the LS venv, or None if the venv is absent."""
    exe = ls_venv() / "bin" / "label-studio"
    return exe if exe.is_file() else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def offline_env(data_dir: Path) -> dict[str, str]:
    """Environment for an LS process: temp data dir, no phoning home, loopback ML backends allowed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "USE_DEFAULT_BANNED_SUBNETS": "false",  # the ML backend runs on 127.0.0.1
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    })
    return env


@dataclass
class LabelStudioServer:
    """One LS process on 127.0.0.1:<port> with an admin user and a legacy API token."""

    executable: Path
    workdir: Path
    port: int = field(default_factory=free_port)
    username: str = "admin@example.com"
    password: str = "admin-pass-1234"
    token: str = "e2e0legacy0token0123456789abcdef"
    process: subprocess.Popen | None = None
    _pat: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "label-studio.log"

    def start(self) -> "LabelStudioServer":
        """Initialise the data dir, start the server and wait until /health answers."""
        init = [str(self.executable), "init", "--username", self.username, "--password", self.password,
                "--user-token", self.token, "--enable-legacy-api-token", "--no-browser"]
        with self.log_path.open("ab") as log:
            done = subprocess.run(init, cwd=self.workdir, env=offline_env(self.workdir / "data"), stdout=log,
                                  stderr=subprocess.STDOUT, timeout=START_TIMEOUT, check=False)
        if done.returncode != 0:
            raise LabelStudioServerError(f"label-studio init exited {done.returncode}\n{self.log_tail()}")
        return self.launch()

    def launch(self) -> "LabelStudioServer":
        """Start the server on an initialised data dir (again, after a crash) and wait until it is healthy."""
        start = [str(self.executable), "start", "--port", str(self.port), "--internal-host", "127.0.0.1",
                 "--no-browser"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(start, cwd=self.workdir, env=offline_env(self.workdir / "data"),
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_healthy()
        return self

    def signal(self, signum: int) -> None:
        """Send a signal to the server's whole process group (SIGKILL to crash it, SIGSTOP to freeze it)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signum)
            if signum == signal.SIGKILL:
                self.process.wait(timeout=10)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise LabelStudioServerError(
                    f"label-studio start exited {self.process.returncode}\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise LabelStudioServerError(f"Label Studio not healthy after {START_TIMEOUT:.0f} s\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server's whole process group (runserver forks a reloader-free child)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the server's log, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no Label Studio log)"
        return "--- Label Studio log (tail) ---\n" + "\n".join(text[-lines:])

    def personal_access_token(self) -> str:
        """The admin's personal access token (a JWT refresh token); LS allows one per user, so it is cached."""
        if self._pat is None:
            self._pat = str(self.api().call("POST", "/api/token/")["token"])
        return self._pat

    def api(self, token: str | None = None, timeout: float = 120.0) -> "LSApi":
        """A test-side HTTP client for set-up steps the service never does (projects, tasks, users)."""
        return LSApi(self.url, token or self.token, timeout)


class LSApi:
    """Plain HTTP calls for test set-up and for reading what annotators would see."""

    def __init__(self, url: str, token: str, timeout: float = 120.0):
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=timeout)

    def call(self, method: str, path: str, **kwargs) -> object:
        """JSON answer of one call; raises AssertionError with LS's reason on HTTP errors."""
        response = self.http.request(method, path, **kwargs)
        assert response.status_code < 400, f"{method} {path}: HTTP {response.status_code}: {response.text[:500]}"
        return response.json() if response.content else None

    def create_project(self, title: str, label_config: str = TEXT_CHOICES_CONFIG, **extra) -> int:
        return int(self.call("POST", "/api/projects/", json={"title": title, "label_config": label_config,
                                                              **extra})["id"])

    def create_agnews_project(self, title: str, n: int, offset: int) -> tuple[int, list[int], list[tuple[str, str]]]:
        """A project of `n` AG News pool rows from `offset`: (project id, task ids, (text, label) rows)."""
        rows = agnews(n, offset=offset)
        project_id = self.create_project(title)
        return project_id, self.import_tasks(project_id, [text for text, _ in rows]), rows

    def connect_backend(self, project_id: int, url: str, title: str = "active learning") -> int:
        """Connect an ML backend the way the UI's "Connect Model" does; returns LS's ML backend id."""
        return int(self.call("POST", "/api/ml", json={"url": url, "project": project_id, "title": title})["id"])

    def import_tasks(self, project_id: int, texts: list[str]) -> list[int]:
        """Import one task per text; returns the new task ids in import order."""
        before = {t["id"] for t in self.tasks(project_id)}
        self.call("POST", f"/api/projects/{project_id}/import", json=[{"text": t} for t in texts])
        return sorted(t["id"] for t in self.tasks(project_id) if t["id"] not in before)

    def tasks(self, project_id: int) -> list[dict]:
        body = self.call("GET", "/api/tasks", params={"project": project_id, "page_size": 100000,
                                                      "include": "id,data"})
        return body["tasks"]

    def annotate(self, task_id: int, choice: str, cancelled: bool = False) -> int:
        result = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}]
        body = self.call("POST", f"/api/tasks/{task_id}/annotations/",
                         json={"result": result, "was_cancelled": cancelled})
        return int(body["id"])

    def next_task(self, project_id: int) -> dict:
        """The task "Label All Tasks" would show this user now."""
        return self.call("GET", f"/api/projects/{project_id}/next")

    def project(self, project_id: int) -> dict:
        return self.call("GET", f"/api/projects/{project_id}/")

    def predictions(self, task_id: int) -> list[dict]:
        return self.call("GET", "/api/predictions/", params={"task": task_id})


@contextmanager
def scratch_server() -> Iterator[LabelStudioServer]:
    """A Label Studio server of its own on a temporary data dir, for scripts: started, then stopped
    and removed; its log tail goes to stderr if the block raises."""
    executable = ls_executable()
    if executable is None:
        raise LabelStudioServerError(f"no Label Studio venv at {ls_venv()} (set LS_VENV)")
    server = LabelStudioServer(executable=executable, workdir=Path(tempfile.mkdtemp(prefix="ls-scratch-")))
    try:
        yield server.start()
    except Exception:
        print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


def agnews(n: int, offset: int = 0) -> list[tuple[str, str]]:
    """The first n (text, label) pairs of the AG News pool after `offset`."""
    rows = []
    with AGNEWS.open(encoding="utf-8") as lines:
        for i, line in enumerate(lines):
            if i < offset:
                continue
            text, label = line.rstrip("\n").split("\t")
            rows.append((text, label))
            if len(rows) == n:
                break
    return rows


def dump(obj: object) -> str:
    return json.dumps(obj, indent=1)[:2000]


# -- the shared session server --------------------------------------------------------------

_server: LabelStudioServer | None = None
_users = 0


def acquire_server() -> LabelStudioServer:
    """Start the session's LS server on first use; later calls share it."""
    global _server, _users
    executable = ls_executable()
    if executable is None:
        reason = (f"Label Studio venv not found at {ls_venv()} "
                  "(install it with `make ls-venv` or point LS_VENV at one)")
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI must run the Label Studio tests", pytrace=False)
        pytest.skip(reason)
    if _server is None:
        workdir = Path(tempfile.mkdtemp(prefix="ls-e2e-"))
        server = LabelStudioServer(executable=executable, workdir=workdir)
        try:
            server.start()
        except (LabelStudioServerError, OSError, subprocess.SubprocessError) as exc:
            server.stop()
            pytest.fail(f"could not start Label Studio: {exc}", pytrace=False)
        _server = server
        atexit.register(_shutdown)
    _users += 1
    return _server


def release_server() -> None:
    """Drop one user of the shared server; the last one stops it."""
    global _users
    _users -= 1
    if _users <= 0:
        _shutdown()


def _shutdown() -> None:
    global _server
    if _server is not None:
        _server.stop()
        if not os.environ.get("KEEP_LS_DATA"):
            shutil.rmtree(_server.workdir, ignore_errors=True)
        _server = None


@pytest.fixture(scope="session")
def ls_server():
    """The session's real Label Studio server (see module docstring)."""
    server = acquire_server()
    yield server
    release_server()
