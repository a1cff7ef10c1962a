"""Sharded re-scoring: shard jobs that any worker runs, one fan-in that orders and publishes.

The published ranking must be the single job's, task for task and score for score. The
worker-process tests run real ``ContextWorker`` processes (forking, as ``python -m workers``)
against the test Redis; they reach the fake LS over XML-RPC, served from this process, so the
test sees what they published. ``python -m tests.integration.test_shards`` is such a worker.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
import xmlrpc.client
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from xmlrpc.server import SimpleXMLRPCServer

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from redis import Redis
from rq import Worker, get_current_job
from rq.job import Job, JobStatus
from rq.registry import FinishedJobRegistry

from backend import jobqueue, projects
from backend.al.ranking import TaskScores
from backend.al.store import ModelStore
from tests.integration.workers_helper import InProcessWorker, drain, ls_calls_of_a_retrain
from workers import lifecycle
from workers.context import WorkerContext
from workers.scoring import SHARDS_DIR, load_scores, save_scores, shard_bounds

ROOT = Path(__file__).resolve().parents[2]
FAULT = "test:shard-faults"  # the worker processes fail this many attempts of shard FAILING
FAILING = 1
SHARD_SIZE = 8  # the fake project's 22 unlabelled tasks: shards of 8, 7 and 7


def _sharding(settings, size: int = SHARD_SIZE):
    """Settings that shard every pool over ``size`` tasks, warm or not (SHARD_WARM_MAX=0): the tests'
    pools are warm after their first scoring, and the default scores a warm pool in one job."""
    return replace(settings, shard_size=size, shard_warm_max=0)


# -- pure: the split and the saved scores ------------------------------------------------------

@given(n=st.integers(0, 5000), size=st.integers(0, 700))
def test_shard_bounds_cover_the_pool_in_near_equal_slices(n, size):
    bounds = shard_bounds(n, size)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))  # contiguous, in order
    sizes = [end - start for start, end in bounds]
    if size == 0 or n <= size:
        assert bounds == [(0, n)]
    else:
        assert len(bounds) == -(-n // size) and max(sizes) <= size and max(sizes) - min(sizes) <= 1


def test_shard_bounds_refuse_negative_sizes():
    with pytest.raises(ValueError, match="shard_size >= 0"):
        shard_bounds(10, -1)


@pytest.mark.parametrize("with_probs", [True, False])
def test_saved_scores_load_back_exactly(tmp_path, with_probs):
    g = torch.Generator().manual_seed(3)
    ids = torch.tensor([40, 7, 19])
    scored = TaskScores(ids, torch.rand(3, generator=g), torch.rand(3, 4, generator=g) if with_probs else None,
                        "bald" if with_probs else "cold_start", torch.tensor([False, True, False]))
    save_scores(tmp_path / "s.pt", scored)
    back = load_scores(tmp_path / "s.pt")
    assert torch.equal(back.ids, ids) and torch.equal(back.values, scored.values)
    assert torch.equal(back.ambiguous, scored.ambiguous) and back.strategy == scored.strategy
    assert (back.probs is None) if not with_probs else torch.equal(back.probs, scored.probs)
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]  # no temporary file left


# -- in-process RQ worker: cold start ----------------------------------------------------------

def _published(ls) -> list[tuple[int, float, str]]:
    """The live predictions as (task, score, result), by task."""
    return sorted((p["task"], p["score"], repr(p["result"])) for p in ls.live_predictions())


def _forget_publishing(r, ls) -> None:
    """A fresh Redis and an LS without predictions: the next publish starts from nothing."""
    r.flushall()
    ls.predictions.clear()
    ls.model_version = ""


def test_cold_start_in_shards_publishes_the_single_job_order(r, ls, settings):
    ls.annotations.clear()
    drain_with = {size: WorkerContext.from_settings(_sharding(settings, size), client_factory=ls.client)
                  for size in (0, SHARD_SIZE)}
    jobqueue.enqueue_rescore(r, 1, None, drain_with[0].policy)
    drain(r, drain_with[0])
    single = _published(ls)
    assert len(single) == 30 and ls.model_version == projects.cold_start_version(1)

    _forget_publishing(r, ls)
    rescore = jobqueue.enqueue_rescore(r, 1, None, drain_with[SHARD_SIZE].policy)
    drain(r, drain_with[SHARD_SIZE])
    assert rescore.latest_result().return_value["shards"] == 4  # 30 tasks: 8, 8, 7, 7
    fan_in = jobqueue.latest_rescore(r, 1)  # the fan-in took over as the project's latest rescore
    assert fan_in.func_name == "workers.scoring.publish_ranking"
    assert fan_in.get_status() == JobStatus.FINISHED and fan_in.return_value()["published"] == 30
    assert _published(ls) == single and ls.model_version == projects.cold_start_version(1)
    assert list((settings.model_dir / SHARDS_DIR / "1").iterdir()) == []  # cleaned after publishing


@pytest.mark.parametrize("warm_max", [30, 29])
def test_a_warm_pool_is_scored_in_one_job_up_to_shard_warm_max(r, ls, settings, warm_max):
    """Sharding spreads encoder work: a cold pool is sharded; once its embeddings are cached, a pool of
    at most SHARD_WARM_MAX tasks (30 here) is scored in one job, with the same order; a larger one is not."""
    ls.annotations.clear()
    rule = WorkerContext.from_settings(replace(settings, shard_size=SHARD_SIZE, shard_warm_max=warm_max),
                                       client_factory=ls.client)
    cold = jobqueue.enqueue_rescore(r, 1, None, rule.policy)
    drain(r, rule)
    assert cold.latest_result().return_value["shards"] == 4  # 30 texts to encode > SHARD_SIZE
    sharded = _published(ls)
    _forget_publishing(r, ls)
    warm = jobqueue.enqueue_rescore(r, 1, None, rule.policy)
    drain(r, rule)
    result = warm.latest_result().return_value
    if warm_max >= 30:
        assert "shards" not in result and result["published"] == 30  # published by the rescore itself
    else:
        assert result["shards"] == 4
    assert _published(ls) == sharded and ls.model_version == projects.cold_start_version(1)


def test_a_fan_in_run_twice_publishes_once_and_repeats_its_outcome(r, ls, settings):
    """rq 3.0 may run a fan-in a second time (two shards ending at once each move it to ready):
    the second execution finds the run ended and repeats the first's outcome; nothing is published twice."""
    ls.annotations.clear()
    sharded = WorkerContext.from_settings(_sharding(settings), client_factory=ls.client)
    jobqueue.enqueue_rescore(r, 1, None, sharded.policy)
    drain(r, sharded)
    fan_in = jobqueue.latest_rescore(r, 1)
    assert fan_in.get_status() == JobStatus.FINISHED and fan_in.return_value()["published"] == 30
    imported = len(ls.predictions)
    again = jobqueue.enqueue(r, jobqueue.SCORE, "workers.scoring.publish_ranking", *fan_in.args,
                             policy=sharded.policy, description="the same fan-in, a second time")
    drain(r, sharded)
    assert again.get_status() == JobStatus.FINISHED
    assert again.return_value() == {"skipped": True, "reason": "published by another execution", "version": None}
    assert len(ls.predictions) == imported  # not imported again


def test_a_sharded_rescore_publishes_with_the_retrains_read_of_label_studio(r, ls, settings):
    """The retrain's read of LS serves its re-score's fan-out and then its fan-in; a retried fan-in reads LS afresh."""
    from backend.labelstudio import LabelStudioError

    sharded = WorkerContext(_sharding(settings), jobqueue.JobPolicy(retries=2, backoff=(0,)),
                            ls.client)
    reads = ls_calls_of_a_retrain(r, sharded, ls)
    fan_in = jobqueue.latest_rescore(r, 1)
    assert fan_in.func_name == "workers.scoring.publish_ranking" and fan_in.return_value()["shards"] == 3
    assert reads["get_project"] == 1 and reads["list_tasks"] == 1  # the retrain's read, and nothing after it
    assert jobqueue.SYNCED not in fan_in.meta  # used up by its first attempt
    version = ModelStore(settings.model_dir / "models").current(1)
    assert ls.model_version == version and len(ls.live_predictions(version)) == 22
    ls.annotations[next(iter(set(ls.tasks) - set(ls.annotations)))] = "pos"
    ls.fail["import_predictions"] = LabelStudioError("transient (fake)")  # the fan-in's first attempt fails
    reads = ls_calls_of_a_retrain(r, sharded, ls)
    assert reads["get_project"] == 2 and reads["list_tasks"] == 2  # its retry read LS afresh
    version = ModelStore(settings.model_dir / "models").current(1)
    assert ls.model_version == version and len(ls.live_predictions(version)) == 21


def test_shards_of_a_superseded_version_skip_and_publish_nothing(r, ls, settings, context):
    jobqueue.enqueue_retrain(r, 1, context.policy, "test")
    drain(r, context)
    old = ModelStore(settings.model_dir / "models").current(1)
    _forget_publishing(r, ls)
    sharded = WorkerContext.from_settings(_sharding(settings), client_factory=ls.client)
    jobqueue.enqueue_rescore(r, 1, old, sharded.policy)
    # The fan-out runs, then a newer version appears before the shards are scored.
    InProcessWorker(["score"], connection=r, context=sharded).work(burst=True, max_jobs=1, logging_level="WARNING")
    ls.annotations[next(iter(set(ls.tasks) - set(ls.annotations)))] = "pos"
    jobqueue.enqueue_retrain(r, 1, context.policy, "test")
    InProcessWorker(["train"], connection=r, context=sharded).work(burst=True, max_jobs=1, logging_level="WARNING")
    new = ModelStore(settings.model_dir / "models").current(1)
    assert new != old
    drain(r, sharded)
    ran = {}
    for job in _finished(r):
        if job.func_name in ("workers.scoring.score_shard", "workers.scoring.publish_ranking") and job.args[1] == old:
            ran.setdefault(job.func_name, []).append(job.return_value())
    assert [result["skipped"] for result in ran["workers.scoring.score_shard"]] == [True, True, True]
    assert ran["workers.scoring.publish_ranking"] == [{"skipped": True, "version": old, "current": new}]
    assert ls.live_predictions(old) == [] and ls.model_version == new  # the newer version's rescore published
    assert list((settings.model_dir / SHARDS_DIR / "1").iterdir()) == []


def test_a_shard_delivered_twice_is_scored_once(r, ls, settings, context):
    jobqueue.enqueue_retrain(r, 1, context.policy, "test")
    drain(r, context)
    version, single = ModelStore(settings.model_dir / "models").current(1), _published(ls)
    _forget_publishing(r, ls)
    sharded = WorkerContext.from_settings(_sharding(settings), client_factory=ls.client)
    jobqueue.enqueue_rescore(r, 1, version, sharded.policy)
    InProcessWorker(["score"], connection=r, context=sharded).work(burst=True, max_jobs=1, logging_level="WARNING")
    run = jobqueue.latest_rescore(r, 1).id

    def again():
        return jobqueue.enqueue(r, jobqueue.SHARD, "workers.scoring.score_shard", 1, version, 0, run,
                                policy=sharded.policy, description="shard 0 again", at_front=True)

    twice = again()  # e.g. RQ re-delivering a job whose worker died after it had saved its scores
    drain(r, sharded)
    results = [job.return_value() for job in _finished(r) if job.func_name.endswith("score_shard") and job.args[2] == 0]
    assert twice.latest_result().return_value == {"skipped": False, "shard": 0, "scored": 8}
    assert sorted(results, key=len) == [{"skipped": False, "shard": 0, "scored": 8},
                                        {"skipped": False, "shard": 0, "scored": 0, "already": True}]
    assert _published(ls) == single and ls.model_version == version
    late = again()  # after the fan-in removed the run's folder
    drain(r, sharded)
    assert late.latest_result().return_value == {"skipped": True, "reason": "run ended", "shard": 0}


def _finished(r) -> list[Job]:
    ids = [i for name in jobqueue.QUEUES for i in FinishedJobRegistry(name, connection=r).get_job_ids()]
    return [job for job in Job.fetch_many(ids, connection=r) if job is not None]


# -- real worker processes ---------------------------------------------------------------------

class _RemoteClient:
    """In a worker process: the fake LS's client, its calls sent over XML-RPC."""

    def __init__(self, url: str) -> None:
        self.proxy = xmlrpc.client.ServerProxy(url, allow_none=True)

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: self.proxy.call(name, list(args), kwargs)


def _serve(ls):
    """The receiving end: one call of the fake LS's client (a set comes back as a list)."""
    client = ls.client("", "")

    def call(name: str, args: list, kwargs: dict):
        if name.startswith("_"):
            raise AttributeError(name)
        result = getattr(client, name)(*args, **kwargs)
        return sorted(result) if isinstance(result, set) else result

    return call


@pytest.fixture
def ls_url(ls):
    server = SimpleXMLRPCServer(("127.0.0.1", 0), allow_none=True, logRequests=False)
    server.register_function(_serve(ls), "call")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@contextmanager
def _worker_processes(count: int, redis_url: str, settings, ls_url: str):
    """``count`` forking worker processes of this module on the test Redis, stopped on exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "LABEL_STUDIO_"))}
    env.update(PYTHONPATH=str(ROOT), REDIS_URL=redis_url, MODEL_DIR=str(settings.model_dir),
               ENCODER=settings.engine.encoder, MC_SAMPLES=str(settings.engine.mc_samples), PUBLISH_TOP_K="0",
               SHARD_SIZE=str(SHARD_SIZE), SHARD_WARM_MAX="0", JOB_RETRIES="1", RECONCILE_INTERVAL="0",
               LOG_LEVEL="WARNING",
               LABEL_STUDIO_URL=ls_url, LABEL_STUDIO_API_KEY="test-token")
    logs = [settings.model_dir.parent / f"worker-{i}.log" for i in range(count)]
    procs = [subprocess.Popen([sys.executable, "-m", "tests.integration.test_shards"], cwd=ROOT, env=env,
                              stdout=log.open("w"), stderr=subprocess.STDOUT) for log in logs]
    r = Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 120
        while len(Worker.all(connection=r)) < count:  # every worker idle before the first job
            assert all(p.poll() is None for p in procs), [log.read_text()[-2000:] for log in logs]
            assert time.monotonic() < deadline, "worker processes did not start"
            time.sleep(0.2)
        yield procs
    finally:
        for p in procs:
            p.terminate()  # SIGTERM: rq's warm shutdown
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        r.close()


def _wait_for_fan_in(r, timeout: float = 180) -> Job:
    """The project's latest rescore once it is a fan-in that has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = jobqueue.latest_rescore(r, 1)
        if job is not None and job.func_name == "workers.scoring.rescore" and job.get_status() == JobStatus.FAILED:
            raise AssertionError(f"the rescore failed: {job.latest_result().exc_string}")
        if (job is not None and job.func_name == "workers.scoring.publish_ranking"
                and job.get_status() in (JobStatus.FINISHED, JobStatus.FAILED)):
            return job
        time.sleep(0.2)
    raise AssertionError(f"no fan-in ended within {timeout} s")


def _reference(r, ls, context) -> tuple[str, list]:
    """Train a version and publish it in one job (in-process worker); then forget the publish."""
    assert context.settings.shard_size == 0 or context.settings.shard_size >= len(ls.tasks)
    jobqueue.enqueue_retrain(r, 1, context.policy, "test")
    drain(r, context)
    version = ModelStore(context.settings.model_dir / "models").current(1)
    single = _published(ls)
    assert version is not None and ls.model_version == version and len(single) == 22
    _forget_publishing(r, ls)
    return version, single


def _shard_jobs(r) -> list[Job]:
    ids = FinishedJobRegistry(jobqueue.SHARD, connection=r).get_job_ids()
    return [j for j in Job.fetch_many(ids, connection=r) if j is not None and j.func_name.endswith("score_shard")]


def test_worker_processes_publish_the_single_job_ranking_and_retry_a_failed_shard(
        r, redis_url, ls, ls_url, settings, context):
    version, single = _reference(r, ls, context)
    r.set(FAULT, 1)  # shard 1's first attempt fails; RQ's retry scores it
    with _worker_processes(2, redis_url, settings, ls_url):
        jobqueue.enqueue_rescore(r, 1, version, jobqueue.JobPolicy(retries=1, backoff=(0,)))
        fan_in = _wait_for_fan_in(r)
    assert fan_in.get_status() == JobStatus.FINISHED, fan_in.latest_result().exc_string
    assert fan_in.return_value() == {"skipped": False, "version": version, "published": 22, "pool": 22, "shards": 3}
    assert _published(ls) == single
    assert ls.model_version == version and projects.published_version(r, 1) == version
    shards = _shard_jobs(r)
    assert sorted(j.args[2] for j in shards) == [0, 1, 2]
    assert int(r.get(FAULT)) < 0  # the fault fired (and only once)
    assert len({j.worker_name for j in shards}) == 2, "both workers scored shards"
    assert not any((settings.model_dir / SHARDS_DIR / "1").iterdir())


def test_a_shard_that_fails_for_good_publishes_nothing_and_a_new_rescore_completes(
        r, redis_url, ls, ls_url, settings, context):
    version, single = _reference(r, ls, context)
    r.set(FAULT, 2)  # both attempts of shard 1 fail (JOB_RETRIES=1)
    policy = jobqueue.JobPolicy(retries=1, backoff=(0,))
    with _worker_processes(2, redis_url, settings, ls_url):
        jobqueue.enqueue_rescore(r, 1, version, policy)
        fan_in = _wait_for_fan_in(r)
        assert fan_in.get_status() == JobStatus.FAILED
        assert "ShardsIncomplete: project 1: shards [1] of 3" in fan_in.latest_result().exc_string
        # Not a single prediction of the partial ranking reached LS, and LS was not switched.
        assert ls.predictions == [] and ls.model_version == "" and projects.published_version(r, 1) is None
        assert not any((settings.model_dir / SHARDS_DIR / "1").iterdir())
        # What the reconcile sees: the version is not live and no rescore is under way, so it re-scores.
        # (Once, in CI, a rescore job still counted as under way right after the fan-in read as failed:
        # the workers' bookkeeping can lag that status by a moment, so allow it up to 10 s.)
        deadline = time.monotonic() + 10
        while jobqueue.rescore_under_way(r, 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lifecycle._not_live(r, 1, version) and not jobqueue.rescore_under_way(r, 1)
        assert jobqueue.enqueue_rescore_once(r, 1, version, policy) is not None
        fan_in = _wait_for_fan_in(r)
    assert fan_in.get_status() == JobStatus.FINISHED, fan_in.latest_result().exc_string
    assert _published(ls) == single and ls.model_version == version


# -- the worker process the tests above start ----------------------------------------------------

def _fail_armed_shard(score):
    """Wrap ActiveLearner.score: shard FAILING raises while the Redis counter FAULT is positive."""

    def wrapped(self, *args, **kwargs):
        job = get_current_job()
        if (job is not None and job.func_name == "workers.scoring.score_shard" and job.args[2] == FAILING
                and job.connection.decr(FAULT) >= 0):
            raise RuntimeError(f"injected failure of shard {FAILING}")
        return score(self, *args, **kwargs)

    return wrapped


def _work() -> None:
    from backend.al.learner import ActiveLearner
    from backend.settings import Settings
    from workers.worker import ContextWorker

    settings = Settings.from_env()
    policy = jobqueue.JobPolicy(timeout=settings.job_timeout, retries=settings.job_retries, backoff=(0,))
    context = WorkerContext(settings, policy, lambda url, key: _RemoteClient(url))
    ActiveLearner.score = _fail_armed_shard(ActiveLearner.score)
    worker = ContextWorker(list(jobqueue.QUEUES), connection=Redis.from_url(settings.redis_url), context=context)
    worker.work(logging_level="WARNING")


if __name__ == "__main__":
    _work()
