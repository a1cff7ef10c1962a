"""A work-horse SIGKILLed (as by the OOM killer) mid-retrain and mid-publish, with a real LS.

The proxy holds the work-horse's LS call at the exact point of interest; the test kills it
there. RQ retries the job after the service's own backoff (10 s for the first retry).
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.service import metric, wait_for
from tests.faults.proxy import HOLD, HOLD_AFTER
from tests.faults.scenarios import ANNOTATED_READ, held_publish, retrain, trained_project

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


def test_work_horse_sigkilled_mid_retrain_is_retried_and_leaves_no_lock(api, proxy, make_stack):
    stack = make_stack()
    project, first = trained_project(api, stack, "faults: kill mid-retrain", offset=100)
    held = proxy.add("GET", ANNOTATED_READ, HOLD)
    job_id = retrain(stack, project)
    assert held.hit.wait(60), "the retrain never read the annotations"
    stack.kill_horse()
    killed_at = time.monotonic()
    held.release()

    second = project.wait_for_version(other_than=first, timeout=120)
    print(f"new version live {time.monotonic() - killed_at:.1f} s after the kill")
    job = wait_for(lambda: (j := stack.job(job_id))["status"] == "finished" and j, 30, what="the retrain")
    assert job["retries_left"] == 2  # one retry used, by the killed attempt
    project.assert_complete(second)
    coalescing = f"al:p:{project.id}:retrain:*"
    wait_for(lambda: stack.redis_client().keys(coalescing) == [], 30, what="no retrain lock or coalescing key")

    project.annotate(10)  # RETRAIN_EVERY: LS's webhooks still make a retrain
    third = project.wait_for_version(other_than=second, timeout=120)
    project.assert_complete(third)
    assert metric(stack.metrics(), "al_jobs_finished_total", job="retrain") == 3


def test_work_horse_sigkilled_mid_publish_republishes_and_ls_stays_on_a_complete_version(
        api, proxy, make_stack):
    stack = make_stack()
    with held_publish(api, proxy, stack, "faults: kill mid-publish", 400, HOLD_AFTER) as case:
        project = case.project  # LS stored the new predictions; the work-horse hears nothing of it
        orphans = wait_for(lambda: {v: n for v, n in project.version_counts().items() if v != case.first}, 30,
                           what="the new version's predictions in LS")
        stack.kill_horse()
        killed_at = time.monotonic()
        case.held.release()
        assert project.live_version() == case.first
        second = project.wait_for_version(other_than=case.first, timeout=120)
        print(f"new version live {time.monotonic() - killed_at:.1f} s after the kill")
        project.assert_complete(second)  # the retry deleted the orphaned import before importing again
    assert orphans == {second: project.unlabelled}
    case.assert_served_only_complete_versions(second)
    assert metric(stack.metrics(), "al_jobs_finished_total", job="rescore") == 2
