"""Label Studio misbehaving under a running service: killed, frozen, or answering HTTP 500.

The session's LS is crashed (SIGKILL) and relaunched on its data dir in place (about 5 s), or
frozen with SIGSTOP; HTTP 500s come from the fault proxy between the workers and LS, either
instead of LS's answer or after LS did the work. Every retry uses the service's own backoff.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.e2e.service import metric, wait_for
from tests.faults.lsproject import VersionWatch
from tests.faults.proxy import FAIL, FAIL_AFTER, HOLD
from tests.faults.scenarios import IMPORT, held_publish, retrain, trained_project

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

SWITCH = r"^/api/projects/\d+/?$"  # PATCH: LS's model_version switch
FROZEN = 8  # seconds LS stays frozen: well within the LS client's 60 s timeout
SDK_ATTEMPTS = 3  # label-studio-sdk tries a failed call up to 3 times (2 retries) before giving up


def test_ls_killed_mid_publish_and_restarted_completes_after_a_retry(ls_server, api, proxy, make_stack):
    stack = make_stack()
    with held_publish(api, proxy, stack, "faults: LS killed mid-publish", 700, HOLD) as case:
        ls_server.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        case.held.release()  # the import reaches a dead LS
        try:
            wait_for(lambda: any(s == 502 for _, _, s in proxy.log), 30, 0.1, what="the import to fail")
        finally:
            ls_server.launch()
        print(f"LS back {time.monotonic() - killed_at:.1f} s after the crash")
        second = case.project.wait_for_version(other_than=case.first, timeout=120)
        print(f"new version live {time.monotonic() - killed_at:.1f} s after the crash")
        case.project.assert_complete(second)
    case.assert_served_only_complete_versions(second)
    rescore = next(j for j in stack.jobs(case.project.id) if j["name"] == "rescore")
    assert (rescore["status"], rescore["retries_left"]) == ("finished", 2)


def test_ls_frozen_mid_publish_completes_when_it_resumes(ls_server, api, proxy, make_stack):
    stack = make_stack()
    with held_publish(api, proxy, stack, "faults: LS frozen mid-publish", 1000, HOLD) as case:
        ls_server.signal(signal.SIGSTOP)
        try:
            case.held.release()  # the import reaches a frozen LS and waits
            time.sleep(FROZEN)
            publishing = next(j for j in stack.jobs(case.project.id) if j["name"] == "rescore")
            assert publishing["status"] == "started"  # waiting on LS, neither failed nor given up
        finally:
            ls_server.signal(signal.SIGCONT)
        second = case.project.wait_for_version(other_than=case.first, timeout=120)
        case.project.assert_complete(second)
    case.assert_served_only_complete_versions(second)
    rescore = next(j for j in stack.jobs(case.project.id) if j["name"] == "rescore")
    assert (rescore["status"], rescore["retries_left"]) == ("finished", 3)  # no retry needed


def test_ls_answering_500_while_a_retrain_reads_is_retried(api, proxy, make_stack):
    stack = make_stack()
    project, first = trained_project(api, stack, "faults: LS 500 on read", offset=1300)
    failing = proxy.add("GET", r"^/api/tasks\?", FAIL, times=SDK_ATTEMPTS)
    job_id = retrain(stack, project)
    job = wait_for(lambda: (j := stack.job(job_id))["retries_left"] == 2 and j, 60, what="the retrain to fail once")
    assert failing.matched == SDK_ATTEMPTS
    assert project.live_version() == first
    second = project.wait_for_version(other_than=first, timeout=120)
    project.assert_complete(second)
    assert stack.job(job_id)["status"] == "finished", job
    assert metric(stack.metrics(), "al_jobs_finished_total", job="retrain") == 2


def test_ls_answering_500_during_publish_never_duplicates_or_half_switches(api, proxy, make_stack):
    """Both 500s come after LS did the work: the import stored, the switch applied."""
    stack = make_stack()
    project, first = trained_project(api, stack, "faults: LS 500 on publish", offset=1600)
    with VersionWatch(project) as watch:
        stored = proxy.add("POST", IMPORT, FAIL_AFTER)
        retrain(stack, project)
        second = project.wait_for_version(other_than=first, timeout=120)
        assert stored.matched == 1
        project.assert_complete(second)  # the retry deleted what the failed attempt stored

        switched = proxy.add("PATCH", SWITCH, FAIL_AFTER, times=SDK_ATTEMPTS)
        retrain(stack, project)
        third = project.wait_for_version(other_than=second, timeout=120)
        wait_for(lambda: switched.matched == SDK_ATTEMPTS and stack.redis_client().get(
            f"al:p:{project.id}:published") == third.encode(), 60, what="the retry to record the switch")
        project.assert_complete(third)  # and the superseded version was cleaned up
    assert watch.versions() == [first, second, third], watch.versions()
    assert watch.incomplete(project.unlabelled) == []
    rescores = [j for j in stack.jobs(project.id) if j["name"] == "rescore"]
    assert [j["retries_left"] for j in rescores[:2]] == [2, 2]  # newest first: each needed one retry
    assert all(j["status"] == "finished" for j in rescores)
