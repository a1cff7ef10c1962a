"""WEBHOOK_SECRET against a real Label Studio (issue 13): LS connects to
`http://host:port/<secret>`, creates its webhook under that URL, and its webhooks get through;
a webhook without the secret does not, and the secret never reaches the backend's log.
"""

from __future__ import annotations

import os
import shutil

import httpx
import pytest

from tests.e2e.conftest import start_backend
from tests.e2e.service import metric, wait_for

pytestmark = pytest.mark.e2e

SECRET = "e2e-webhook-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def secret_backend(ls_server, e2e_encoder):
    service = start_backend(ls_server, e2e_encoder, ls_server.personal_access_token(), WEBHOOK_SECRET=SECRET)
    yield service
    service.stop()
    if not os.environ.get("KEEP_E2E_DATA"):
        shutil.rmtree(service.workdir, ignore_errors=True)


def test_ls_connects_with_the_secret_and_its_webhooks_carry_it(ls_server, secret_backend, request):
    failed = request.session.testsfailed
    api = ls_server.api()
    pid, ids, rows = api.create_agnews_project("webhook secret", 40, offset=6000)
    api.connect_backend(pid, f"{secret_backend.url}/{SECRET}")  # LS calls /<secret>/health and /setup

    hooks = api.call("GET", "/api/webhooks/", params={"project": pid})
    assert [h["url"] for h in hooks] == [f"{secret_backend.url}/{SECRET}/webhook"]
    wait_for(lambda: api.project(pid)["sampling"] == "Uncertainty sampling", 120,
             what="prepare_project, enqueued by /setup through the prefix")

    annotation_id = api.annotate(ids[0], rows[0][1])
    wait_for(lambda: metric(secret_backend.metrics(), "al_webhooks_total", event="ANNOTATION_CREATED") == 1,
             30, what="LS's ANNOTATION_CREATED through the secret prefix")
    assert metric(secret_backend.metrics(), "al_duplicate_changes_total") == 0
    # A second delivery of the same change (LS serialises id and updated_at alike in its API
    # and its webhooks) is recognised and not counted again.
    annotation = api.call("GET", f"/api/annotations/{annotation_id}/")
    again = httpx.post(f"{secret_backend.url}/{SECRET}/webhook", timeout=10, json={
        "action": "ANNOTATION_CREATED", "project": {"id": pid}, "annotation": annotation})
    assert again.status_code == 200
    assert metric(secret_backend.metrics(), "al_duplicate_changes_total") == 1

    plain = httpx.post(f"{secret_backend.url}/webhook", json={"action": "START_TRAINING", "project": pid}, timeout=10)
    assert plain.status_code == 404 and SECRET not in plain.text
    unknown = httpx.post(f"{secret_backend.url}/{SECRET}/webhook",
                         json={"action": "START_TRAINING", "project": {"id": pid + 1000}}, timeout=10)
    assert unknown.status_code == 403
    log = secret_backend.log_path.read_text(errors="replace")
    assert f"/{SECRET}" not in log and "/<secret>/webhook" in log
    if request.session.testsfailed > failed:
        print(ls_server.log_tail(), secret_backend.log_tail())
