"""The webhook defences through the real web server: gunicorn, as `python -m backend` runs it.

Oversized bodies (with a Content-Length and chunked) answered 413 while the client is still
sending, the secret path prefix served and masked in gunicorn's access log, and concurrent
duplicate deliveries spread over two web worker processes counted once (issue 13).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from rq import Queue

from backend import jobqueue, projects
from backend.embedded import web_command
from backend.settings import Settings
from tests.concurrency import at_once

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-Path_Prefix-0123456789abcdef"
CONFIG = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
          '<Choice value="pos"/><Choice value="neg"/></Choices></View>')
STAMP = "2026-11-22T10:00:00.123456Z"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """gunicorn serving create_app() from the environment, its output (access log included) in a file."""

    def __init__(self, redis_url: str, log: Path):
        self.port, self.log = _free_port(), log
        env = {"REDIS_URL": redis_url, "WEBHOOK_SECRET": SECRET, "RETRAIN_EVERY": "2", "HOST": "127.0.0.1",
               "PORT": str(self.port), "WEB_WORKERS": "2", "LOG_LEVEL": "INFO"}
        command = web_command(Settings.from_env(env))
        self._out = log.open("w")
        self.proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=self._out,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while self.request("GET", "/health", retry=True) is None:
            assert self.proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "gunicorn did not come up"
            time.sleep(0.2)

    def request(self, method: str, path: str, payload: object = None, retry: bool = False):
        """(status, JSON body), or None while the server is not up (with ``retry``)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            body = None if payload is None else json.dumps(payload)
            connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        except ConnectionRefusedError:
            if retry:
                return None
            raise
        finally:
            connection.close()

    def raw(self, head: bytes, body) -> tuple[bytes, int]:
        """Send a request head, then the body from a thread; return the status line, read meanwhile,
        and how many body bytes went out before the server closed."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sent = []

        def send():
            try:
                for chunk in body:
                    sock.sendall(chunk)
                    sent.append(len(chunk))
            except OSError:  # the server answered and closed: what a refusal looks like
                pass

        sock.sendall(head)
        sender = threading.Thread(target=send)
        sender.start()
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        sock.close()
        sender.join(30)
        return data.split(b"\r\n", 1)[0], sum(sent)

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(30)
        self._out.close()
        return self.log.read_text()


@pytest.fixture
def server(redis_url, tmp_path):
    server = Server(redis_url, tmp_path / "gunicorn.log")
    yield server
    if server.proc.poll() is None:
        server.stop()


def _set_up(server, project_id: int = 5) -> None:
    assert server.request("POST", f"/{SECRET}/setup", {"project": f"{project_id}.1", "schema": CONFIG})[0] == 200


def test_the_secret_prefix_is_served_and_masked_in_the_access_log(server, r):
    assert server.request("GET", f"/{SECRET}/health") == (200, {"status": "UP", "model_class": "ActiveLearner"})
    _set_up(server)
    status, body = server.request("POST", f"/{SECRET}/webhook", {"action": "START_TRAINING", "project": 5})
    assert status == 200 and body["job"]
    status, body = server.request("POST", "/webhook", {"action": "START_TRAINING", "project": 5})
    assert status == 404 and "secret path prefix" in body["error"]
    log = server.stop()
    assert '"POST /<secret>/webhook HTTP/1.1" 200' in log and '"POST /webhook HTTP/1.1" 404' in log
    assert SECRET not in log


@pytest.mark.faults
def test_oversized_bodies_are_refused_while_the_client_still_sends(server, r):
    _set_up(server)
    queued = [Queue(name, connection=r).count for name in jobqueue.QUEUES]
    start = b'{"action": "ANNOTATION_CREATED", "project": {"id": 5}, "pad": "'
    head = (f"POST /{SECRET}/webhook HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            "Content-Length: 20000000\r\n\r\n").encode()
    status, sent = server.raw(head, (start + b"x" * (65536 - len(start)), *[b"x" * 65536] * 304))
    assert status == b"HTTP/1.1 413 REQUEST ENTITY TOO LARGE"
    assert sent < 20_000_000  # answered before the body was in
    chunked = (f"POST /{SECRET}/webhook HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
               "Transfer-Encoding: chunked\r\n\r\n").encode()
    chunks = [b"%x\r\n%s\r\n" % (len(start), start)] + [b"10000\r\n" + b"x" * 65536 + b"\r\n"] * 320 + [b"0\r\n\r\n"]
    status, _ = server.raw(chunked, chunks)
    assert status == b"HTTP/1.1 413 REQUEST ENTITY TOO LARGE"
    assert [Queue(name, connection=r).count for name in jobqueue.QUEUES] == queued
    assert r.get(projects.key(5, "changes")) is None
    metrics = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    metrics.request("GET", "/metrics")
    assert "al_webhooks_total{" not in metrics.getresponse().read().decode()


@pytest.mark.faults
def test_concurrent_duplicates_across_web_processes_count_once(server, r):
    _set_up(server)
    payload = {"action": "ANNOTATION_CREATED", "project": {"id": 5}, "task": {"id": 7, "project": 5},
               "annotation": {"id": 77, "task": 7, "project": 5, "created_at": STAMP, "updated_at": STAMP}}
    statuses = at_once(lambda: server.request("POST", f"/{SECRET}/webhook", payload)[0], 10)
    assert statuses == [200] * 10
    assert int(r.get(projects.key(5, "changes"))) == 1  # RETRAIN_EVERY=2: one change, no retrain
    assert Queue("train", connection=r).count == 0
