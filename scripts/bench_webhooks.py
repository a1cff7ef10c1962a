"""Sustained webhook load on the running service while it retrains and re-scores (issue 13, Load).

Starts Label Studio (LS_VENV or .ls-venv) and the service as separate real processes (a
redis-server with an append-only file, `python -m workers`, gunicorn; see tests/faults/stack.py),
a project of --tasks AG News tasks with a first model, then sends --rate ANNOTATION_CREATED
webhooks a second for --seconds: RATE * SECONDS in all, each for a new annotation id, paced on a
fixed schedule by --concurrency senders, on loopback only. A START_TRAINING goes first, and with
RETRAIN_EVERY=10 every tenth webhook asks for a retrain (coalesced), so retrains and re-scores
run throughout. Reported: latency (p50, p99, max) against LS's 1 s webhook timeout, errors, lost
webhooks (every answered webhook must be one counted change in Redis and in al_webhooks_total),
the retrains and re-scores that ran meanwhile, and the web processes' resident memory.

    .venv/bin/python scripts/bench_webhooks.py [--rate 100] [--seconds 60] [--concurrency 20]
                                               [--tasks 2000] [--workers 2] [--encoder PATH] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.lsserver import LabelStudioServer, LabelStudioServerError, scratch_server  # noqa: E402
from tests.e2e.service import metric  # noqa: E402
from tests.faults.lsproject import Project  # noqa: E402
from tests.faults.stack import Stack, rss_kib  # noqa: E402
from tests.periodic import Periodic  # noqa: E402

STAMP = "2026-11-22T10:00:00.123456Z"
LS_WEBHOOK_TIMEOUT = 1.0


def webhook(project_id: int, task_id: int, annotation_id: int) -> dict:
    return {"action": "ANNOTATION_CREATED", "project": {"id": project_id}, "task": {"id": task_id},
            "annotation": {"id": annotation_id, "task": task_id, "created_at": STAMP, "updated_at": STAMP}}


def web_rss_mib(stack: Stack) -> dict[str, float]:
    """Resident memory of gunicorn's master and each of its workers, MiB."""
    pids = stack.web_pids()
    return {("master" if pid == pids[0] else f"worker {pid}"): rss_kib(pid) / 1024 for pid in pids}


class JobWatch(Periodic):
    """Samples, once a second, which of the project's jobs run and the web processes' memory."""

    def __init__(self, stack: Stack, project_id: int) -> None:
        super().__init__(self._sample, 1.0)
        self.stack, self.project_id = stack, project_id
        self.running: list[set[str]] = []  # job names running, per second
        self.rss: list[float] = []  # total web RSS, MiB, per second

    def _sample(self) -> None:
        jobs = self.stack.jobs(self.project_id)
        self.running.append({j["name"] for j in jobs if j["status"] == "started"})
        self.rss.append(sum(web_rss_mib(self.stack).values()))

    def seconds_running(self, name: str) -> int:
        return sum(1 for names in self.running if name in names)


def send_paced(url: str, payloads: list[dict], rate: float, concurrency: int) -> list[tuple[int, float, float]]:
    """POST each payload at its slot (i / rate s after the start): (status, latency s, start lag s) each."""
    results: list[tuple[int, float, float] | None] = [None] * len(payloads)
    with httpx.Client(base_url=url, timeout=10, limits=httpx.Limits(max_connections=concurrency)) as http:
        def send(i: int, due: float) -> None:
            start = time.perf_counter()
            try:
                status = http.post("/webhook", json=payloads[i]).status_code
            except httpx.HTTPError:
                status = 0
            results[i] = (status, time.perf_counter() - start, start - due)

        with ThreadPoolExecutor(concurrency) as pool:
            t0 = time.perf_counter()
            for i in range(len(payloads)):  # bounded: exactly len(payloads) requests
                due = t0 + i / rate
                time.sleep(max(0.0, due - time.perf_counter()))
                pool.submit(send, i, due)
    return [r for r in results if r is not None]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(ls: LabelStudioServer, args: argparse.Namespace) -> dict:
    """The service on its own stack (removed afterwards), measured under load."""
    settings = {"RETRAIN_EVERY": "10", "PUBLISH_TOP_K": "1000", "MC_SAMPLES": "20"}  # the service's defaults
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as workdir, Stack(
            Path(workdir), ls.url, ls.personal_access_token(), args.encoder or "", settings,
            workers=args.workers) as stack:
        return measure(ls, stack, args)


def ready_project(ls: LabelStudioServer, stack: Stack, tasks: int) -> Project:
    """An AG News project with 20 labels, connected through LS, its first model live."""
    project = Project.create(ls.api(timeout=900), "bench webhooks", tasks, offset=0, annotate=20)
    project.connect(stack.url)
    first = project.wait_for_version(timeout=1800)
    print(f"project {project.id}: {tasks} tasks, first model {first} live", flush=True)
    return project


def counted_changes(stack: Stack, project_id: int) -> tuple[int, int]:
    """(the project's change counter towards RETRAIN_EVERY, distinct changes counted so far)."""
    r = stack.redis_client()
    return int(r.get(f"al:p:{project_id}:changes") or 0), len(r.keys(f"al:p:{project_id}:seen:*"))


def delta(before: dict[str, float], after: dict[str, float], name: str, **labels: str) -> int:
    return int(metric(after, name, **labels) - metric(before, name, **labels))


def measure(ls: LabelStudioServer, stack: Stack, args: argparse.Namespace) -> dict:
    """A project with a first model, then the load; the figures."""
    project = ready_project(ls, stack, args.tasks)
    tasks, total = sorted(project.labels), int(args.rate * args.seconds)
    payloads = [webhook(project.id, tasks[i % len(tasks)], 1_000_000 + i) for i in range(total)]
    before, rss_start = stack.metrics(), web_rss_mib(stack)
    with JobWatch(stack, project.id) as watch:
        stack.post("/webhook", {"action": "START_TRAINING", "project": {"id": project.id}})  # clears the count
        counter_start, seen_start = counted_changes(stack, project.id)
        started = time.perf_counter()
        answers = send_paced(stack.url, payloads, args.rate, args.concurrency)
        elapsed = time.perf_counter() - started
    after, rss_end = stack.metrics(), web_rss_mib(stack)
    counter_end, seen_end = counted_changes(stack, project.id)
    answered, latencies = sum(1 for a in answers if a[0] == 200), [a[1] for a in answers]
    return {
        "webhooks": total, "rate_per_s": args.rate, "workers": args.workers, "seconds": round(elapsed, 1),
        "achieved_rate_per_s": round(total / elapsed, 1), "concurrency": args.concurrency,
        "tasks": args.tasks, "encoder": args.encoder or "default (all-MiniLM-L6-v2)",
        "latency_ms": {"p50": round(statistics.median(latencies) * 1000, 1),
                       "p99": round(percentile(latencies, 0.99) * 1000, 1), "max": round(max(latencies) * 1000, 1)},
        "over_ls_timeout": sum(1 for x in latencies if x >= LS_WEBHOOK_TIMEOUT),
        "max_start_lag_ms": round(max(a[2] for a in answers) * 1000, 1),
        "errors": total - answered,
        "lost": {"answered_200": answered,
                 "counted_in_metrics": delta(before, after, "al_webhooks_total", event="ANNOTATION_CREATED"),
                 "distinct_changes_in_redis": seen_end - seen_start,
                 "counter_consistent": (counter_start + seen_end - seen_start) % 10 == counter_end,
                 "lost": answered - (seen_end - seen_start)},
        "jobs_during_load": {"seconds_a_retrain_ran": watch.seconds_running("retrain"),
                             "seconds_a_rescore_ran": watch.seconds_running("rescore"),
                             "finished": {name: delta(before, after, "al_jobs_finished_total", job=name)
                                          for name in ("retrain", "rescore")}},
        "web_rss_mib": {"start": round(sum(rss_start.values()), 1), "end": round(sum(rss_end.values()), 1),
                        "peak": round(max(watch.rss, default=0.0), 1),
                        "per_process_end": {k: round(v, 1) for k, v in rss_end.items()}},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100.0, help="webhooks per second (default 100)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long (default 60)")
    parser.add_argument("--concurrency", type=int, default=20, help="senders at once (default 20)")
    parser.add_argument("--tasks", type=int, default=2000, help="tasks in the project (default 2000)")
    parser.add_argument("--workers", type=int, default=2,
                        help="RQ workers (default 2: with one, retrains starve the re-scores, see docs/RELIABILITY.md)")
    parser.add_argument("--encoder", default=None, help="ENCODER for the service (default: the service default)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    try:
        with scratch_server() as ls:
            figures = run(ls, args)
    except LabelStudioServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    lost, late = figures["lost"]["lost"], figures["over_ls_timeout"]
    return 0 if figures["errors"] == 0 and lost == 0 and late == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
