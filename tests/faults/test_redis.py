"""Redis (append-only, fsync every second: Redis's default for AOF) crashed under the service.

Redis is SIGKILLed, so nothing is saved on the way down: what survives is what the
append-only file holds. It comes back on the same file and socket.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.service import wait_for
from tests.faults.lsproject import Project
from tests.faults.proxy import HOLD_AFTER
from tests.faults.scenarios import POOL, SEED_LABELS, held_publish, retrain

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

FSYNC_WAIT = 1.5  # appendfsync everysec: a write is on disk within a second


def idle(stack, project: Project) -> bool:
    """No job of the project queued or running, and no work-horse alive."""
    done = all(j["status"] in ("finished", "failed") for j in stack.jobs(project.id))
    return done and stack.horse_pid() is None


def test_redis_crash_keeps_a_queued_retrain_and_the_web_answers_503_meanwhile(api, make_stack):
    stack = make_stack(workers=0)  # nothing runs the jobs yet: the retrain stays queued
    project = Project.create(api, "faults: Redis crash", POOL, offset=1900, annotate=SEED_LABELS)
    project.connect(stack.url)
    job_id = retrain(stack, project)
    time.sleep(FSYNC_WAIT)
    stack.redis.crash()
    webhook = stack.post("/webhook", {"action": "START_TRAINING", "project": {"id": project.id}})
    assert webhook.status_code == 503, webhook.text
    assert "Redis" in webhook.json()["error"]
    assert httpx.get(f"{stack.url}/health", timeout=2).status_code == 200
    stack.redis.start()

    worker = stack.start_worker()
    first = project.wait_for_version(timeout=180)
    assert stack.job(job_id)["status"] == "finished"  # the very job queued before the crash
    project.assert_complete(first)

    wait_for(lambda: idle(stack, project), 60, what="the worker to be idle")
    stack.redis.crash()
    time.sleep(3)
    stack.redis.start()
    project.annotate(10)  # RETRAIN_EVERY: LS's webhooks reach the web, the same worker retrains
    second = project.wait_for_version(other_than=first, timeout=180)
    assert worker.poll() is None, stack.log_tail("worker-0")
    project.assert_complete(second)


def test_redis_restarted_mid_publish_completes_the_publish(api, proxy, make_stack):
    stack = make_stack()
    with held_publish(api, proxy, stack, "faults: Redis restart mid-publish", 2200, HOLD_AFTER) as case:
        stack.redis.crash()
        time.sleep(3)
        stack.redis.start()
        case.held.release()
        second = case.project.wait_for_version(other_than=case.first, timeout=180)
        case.project.assert_complete(second)
        r = stack.redis_client()
        wait_for(lambda: r.get(f"al:p:{case.project.id}:published") == second.encode(), 60,
                 what="Redis to record the live version")
    assert r.get(f"al:p:{case.project.id}:importing") is None
    case.assert_served_only_complete_versions(second)


def test_redis_down_when_a_publish_ends_leaves_the_worker_running(api, proxy, make_stack):
    stack = make_stack()
    with held_publish(api, proxy, stack, "faults: Redis down as a publish ends", 2500, HOLD_AFTER) as case:
        stack.redis.crash()
        case.held.release()  # the work-horse switches LS, then finds Redis gone
        wait_for(lambda: stack.horse_pid() is None, 60, what="the work-horse to end")
        time.sleep(2)
        stack.redis.start()
        time.sleep(2)
        r, project = stack.redis_client(), case.project
        state = (f"LS serves {project.live_version()!r}, Redis records {r.get(f'al:p:{project.id}:published')!r} "
                 f"as published and {r.get(f'al:p:{project.id}:importing')!r} as importing")
        assert stack.worker_processes[0].poll() is None, f"worker exited; {state}\n{stack.log_tail('worker-0', 5)}"
        second = project.wait_for_version(other_than=case.first, timeout=60)
        wait_for(lambda: r.get(f"al:p:{project.id}:published") == second.encode(), 120,
                 what="the retried publish to record the version LS serves")
        project.assert_complete(second)
