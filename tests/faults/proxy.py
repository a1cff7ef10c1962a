"""A loopback reverse proxy in front of the real Label Studio that a test can make misbehave.

The backend's workers reach LS through it (LABEL_STUDIO_URL points here); everything else
(the test's own LS calls, LS's webhooks) goes direct. A :class:`Fault` matches requests by
method and a regular expression on path and query, and for its next ``times`` matches either
answers 500 without forwarding, forwards and then answers 500 (LS did the work, the caller
never learns it), or holds the request, before or after forwarding, until the test releases
it: a work-horse held there is exactly "mid-read" or "mid-publish" when the test strikes.
"""

from __future__ import annotations

import re
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

FAIL = "fail"  # answer 500, LS never sees the request
FAIL_AFTER = "fail-after"  # forward, let LS do the work, answer 500
HOLD = "hold"  # wait for release(), then forward
HOLD_AFTER = "hold-after"  # forward, wait for release(), then answer
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host",
                "proxy-connection", "te", "trailer", "upgrade"}
HOLD_LIMIT = 300.0  # a held request is let go after this many seconds whatever the test does


@dataclass
class Fault:
    """What to do to the next ``times`` requests matching ``method`` and ``pattern`` (path?query)."""

    method: str
    pattern: str
    action: str
    times: int = 1
    hit: threading.Event = field(default_factory=threading.Event)  # set on the first match
    released: threading.Event = field(default_factory=threading.Event)
    matched: int = 0

    def matches(self, method: str, target: str) -> bool:
        return self.matched < self.times and method == self.method and re.search(self.pattern, target) is not None

    def release(self) -> None:
        """Let held requests go (and every later match pass at once)."""
        self.released.set()


class FaultProxy:
    """``http://127.0.0.1:<port>`` forwarding to ``upstream`` except where a fault says otherwise."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, int]] = []  # (method, path?query, status answered)
        self._lock = threading.Lock()
        self._http = httpx.Client(base_url=self.upstream, timeout=900)
        self._server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for fault in self.faults:
            fault.release()
        self._server.shutdown()
        self._server.server_close()
        self._http.close()

    def add(self, method: str, pattern: str, action: str, times: int = 1) -> Fault:
        """Arm a fault; returns it so the test can wait for its hit and release it."""
        fault = Fault(method, pattern, action, times)
        with self._lock:
            self.faults.append(fault)
        return fault

    def claim(self, method: str, target: str) -> Fault | None:
        """The armed fault this request falls under, counted as used."""
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, target):
                    fault.matched += 1
                    fault.hit.set()
                    return fault
        return None

    def forward(self, method: str, target: str, headers: dict[str, str], body: bytes) -> httpx.Response | None:
        """The upstream answer, or None when LS cannot be reached."""
        try:
            return self._http.request(method, target, headers=headers, content=body)
        except httpx.HTTPError:
            return None

    def answered(self, method: str, target: str, status: int) -> None:
        with self._lock:
            self.log.append((method, target, status))


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A caller that vanished mid-request (a SIGKILLed work-horse) is part of the test, not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # the test's output is no place for an access log
            pass

        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            fault = proxy.claim(self.command, self.path)
            action = fault.action if fault else None
            if action == HOLD:
                fault.released.wait(HOLD_LIMIT)
            if action == FAIL:
                return self._answer(500, b'{"detail": "injected fault"}')
            response = proxy.forward(self.command, self.path, headers, body)
            if action == HOLD_AFTER:
                fault.released.wait(HOLD_LIMIT)
            if action == FAIL_AFTER:
                return self._answer(500, b'{"detail": "injected fault after LS did the work"}')
            if response is None:
                return self._answer(502, b'{"detail": "Label Studio unreachable"}')
            kept = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_HEADERS}
            return self._answer(response.status_code, response.content, kept)

        def _answer(self, status: int, content: bytes, headers: dict[str, str] | None = None) -> None:
            proxy.answered(self.command, self.path, status)
            try:
                self.send_response(status)
                for name, value in (headers or {"Content-Type": "application/json"}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)
            except OSError:  # the caller is gone (a killed work-horse): nothing to answer
                self.close_connection = True

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    return Handler
