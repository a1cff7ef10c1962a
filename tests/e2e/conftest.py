"""Fixtures for tests against a real Label Studio server and the backend running as a process."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.e2e.lsserver import ls_server  # noqa: F401  (session fixture)
from tests.e2e.service import BackendProcess


@pytest.fixture
def ls(ls_server, request):  # noqa: F811
    """The session's LS server; prints its log tail when the test fails."""
    failed = request.session.testsfailed
    yield ls_server
    if request.session.testsfailed > failed:
        print(ls_server.log_tail())


@pytest.fixture(scope="session")
def e2e_encoder(tmp_path_factory) -> str:
    """E2E_ENCODER if set (e.g. the real default, all-MiniLM-L6-v2), else a tiny random BERT.

    The e2e tests check the wiring (webhooks, jobs, publishing, LS's task order), not model
    quality, so a 32-wide random BERT keeps them fast on CPU with the same code paths.
    """
    if os.environ.get("E2E_ENCODER"):
        return os.environ["E2E_ENCODER"]
    from tests.tinybert import make_tiny_bert

    return str(make_tiny_bert(tmp_path_factory.mktemp("tiny-bert")))


def start_backend(ls_server, encoder: str, api_key: str, **settings: str) -> BackendProcess:  # noqa: F811
    """`python -m backend` wired to the test LS; settings are extra environment variables."""
    env = {"LABEL_STUDIO_URL": ls_server.url, "LABEL_STUDIO_API_KEY": api_key, "ENCODER": encoder,
           "MC_SAMPLES": "4", "RETRAIN_EVERY": "10", "PUBLISH_TOP_K": "0", "RECONCILE_INTERVAL": "0",
           "EXPLORATION": "0.1", "JOB_RETRIES": "0"}
    env.update(settings)
    workdir = Path(tempfile.mkdtemp(prefix="al-backend-e2e-"))
    backend = BackendProcess(workdir=workdir, settings=env)
    try:
        backend.start()
    except Exception as exc:
        backend.stop()
        pytest.fail(f"could not start the backend: {exc}", pytrace=False)
    return backend


@pytest.fixture(scope="module")
def backend(ls_server, e2e_encoder):  # noqa: F811
    """The backend as a real process, authenticated to LS with a personal access token."""
    pat = ls_server.personal_access_token()
    service = start_backend(ls_server, e2e_encoder, pat)
    yield service
    service.stop()
    if not os.environ.get("KEEP_E2E_DATA"):
        shutil.rmtree(service.workdir, ignore_errors=True)


@pytest.fixture
def logs_on_failure(ls_server, backend, request):  # noqa: F811
    """Print LS's and the backend's log tails when the test fails."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        print(ls_server.log_tail())
        print(backend.log_tail())
