"""Fixtures for the fault tests: the session's real Label Studio behind a fault proxy, and
:class:`~tests.faults.stack.Stack`s of real service processes."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.e2e.conftest import e2e_encoder  # noqa: F401  (session fixture: the tiny random BERT)
from tests.e2e.lsserver import ls_server  # noqa: F401  (session fixture)
from tests.faults.proxy import FaultProxy
from tests.faults.stack import Stack
from tests.service_fixtures import r, redis_server, redis_url, settings, tiny_encoder  # noqa: F401


@pytest.fixture
def proxy(ls_server):  # noqa: F811
    """A fault proxy in front of the session's LS; the stacks' workers reach LS through it."""
    with FaultProxy(ls_server.url) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def api(ls_server):  # noqa: F811
    """The test's own LS client (direct, not through the proxy)."""
    client = ls_server.api()
    yield client
    client.http.close()


@pytest.fixture
def make_stack(ls_server, proxy, e2e_encoder, request):  # noqa: F811
    """Start stacks wired to LS through the proxy; stopped (logs printed on failure) at teardown."""
    stacks: list[Stack] = []
    failed = request.session.testsfailed

    def start(workers: int = 1, **environment: str) -> Stack:
        workdir = Path(tempfile.mkdtemp(prefix="al-faults-"))
        stack = Stack(workdir=workdir, ls_url=proxy.url, api_key=ls_server.personal_access_token(),
                      encoder=e2e_encoder, settings=environment, workers=workers)
        stacks.append(stack)
        return stack.start()

    yield start
    for stack in stacks:
        stack.stop()
        if request.session.testsfailed > failed:
            print(stack.logs())
            print(ls_server.log_tail())
        if not os.environ.get("KEEP_FAULTS_DATA"):
            shutil.rmtree(stack.workdir, ignore_errors=True)
