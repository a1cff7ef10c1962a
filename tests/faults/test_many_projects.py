"""Twenty projects at once on one pool of three workers, one of them stuck on a hanging LS.

Label Studio is the in-memory fake here (one per project, dispatched by project id): a real LS
with twenty projects would spend minutes on set-up alone, and what is tested is the queue's
fairness and isolation. The workers are real RQ workers with their own context each, running
in threads of this process (the fake LS lives here), on the real Redis and the real engine.
"""

from __future__ import annotations

import threading
import time

import pytest

from backend.al.store import ModelStore
from backend.app import create_app
from tests.e2e.lsserver import TEXT_CHOICES_CONFIG, agnews
from tests.e2e.service import wait_for
from tests.integration.fake_ls import FakeLabelStudio
from tests.integration.workers_helper import BackgroundWorker
from workers.context import WorkerContext

pytestmark = pytest.mark.faults

PROJECTS, TASKS, LABELLED, WORKERS = 20, 40, 8, 3
STUCK = 7  # this project's LS hangs on the retrain's read until released
HANG_LIMIT = 300.0


class ManyProjects:
    """A client factory over one fake LS per project: each call goes to the project it names."""

    def __init__(self, fakes: dict[int, FakeLabelStudio], stuck: int, hang: threading.Event) -> None:
        self.fakes, self.stuck, self.hang = fakes, stuck, hang

    def client(self, url: str, api_key: str) -> "ManyProjects":
        return self

    def __getattr__(self, method: str):
        def call(project_id: int, *args, **kwargs):
            if project_id == self.stuck and method == "annotated_tasks":
                self.hang.wait(HANG_LIMIT)
            return getattr(self.fakes[project_id].client("", ""), method)(project_id, *args, **kwargs)
        return call


def fake_project(project_id: int) -> FakeLabelStudio:
    """TASKS AG News texts (ids project_id * 1000 + i: no two projects share one), LABELLED labelled."""
    fake = FakeLabelStudio(project_id, label_config=TEXT_CHOICES_CONFIG)
    rows = agnews(TASKS, offset=project_id * TASKS)
    fake.tasks = {project_id * 1000 + i: text for i, (text, _) in enumerate(rows)}
    fake.annotations = {project_id * 1000 + i: label for i, (_, label) in enumerate(rows[:LABELLED])}
    assert len(set(fake.annotations.values())) >= 2, "a model needs two classes"
    return fake


def test_twenty_projects_on_one_pool_each_get_their_own_model_and_none_is_blocked(settings, r):
    fakes = {pid: fake_project(pid) for pid in range(1, PROJECTS + 1)}
    hang = threading.Event()
    factory = ManyProjects(fakes, STUCK, hang)
    web = create_app(settings).test_client()
    started = time.monotonic()
    for pid in fakes:
        response = web.post("/setup", json={"project": f"{pid}.1700000000", "schema": TEXT_CHOICES_CONFIG})
        assert response.status_code == 200, response.text
    pool = [BackgroundWorker(r, WorkerContext.from_settings(settings, client_factory=factory.client))
            for _ in range(WORKERS)]
    live_at: dict[int, float] = {}

    def live(pids) -> bool:
        for pid in pids:
            if pid not in live_at and fakes[pid].model_version.startswith(f"p{pid}-v0001-"):
                live_at[pid] = time.monotonic() - started
        return all(pid in live_at for pid in pids)

    others = [pid for pid in fakes if pid != STUCK]
    try:
        for worker in pool:
            worker.__enter__()
        wait_for(lambda: live(others), 240, 0.1, what="the 19 other projects' first models")
        assert STUCK not in live_at  # still waiting on its LS, holding one worker, not the pool
        hang.set()
        wait_for(lambda: live([STUCK]), 120, 0.1, what="the stuck project once its LS answers")
    finally:
        hang.set()
        for worker in pool:
            worker.__exit__()
    print("live after (s): " + ", ".join(f"{pid}: {live_at[pid]:.1f}" for pid in sorted(live_at)))

    store = ModelStore(settings.model_dir / "models")
    for pid, fake in fakes.items():
        assert store.current(pid) == fake.model_version  # its own checkpoint is the one live
        unlabelled = set(fake.tasks) - set(fake.annotations)
        published = [p["task"] for p in fake.live_predictions()]
        assert sorted(published) == sorted(unlabelled), f"project {pid}: priorities of other tasks"
        assert fake.calls["import_predictions"] == 1  # its first model's priorities, nobody else's
    assert len({tuple(sorted((p["task"] % 1000, p["score"]) for p in fake.live_predictions()))
                for fake in fakes.values()}) == PROJECTS  # twenty different orders
