"""Benchmark publishing priorities into a real Label Studio, and the full retrain-to-live loop.

Starts Label Studio (from LS_VENV or .ls-venv, as the e2e tests do) with a project of N AG News
tasks and times, through backend.labelstudio.LabelStudioClient:
  * listing tasks (all, only new ones, ids only) and counting annotations,
  * importing N predictions, switching model_version, LS's next-task call,
  * deleting a superseded version's N predictions.
Then (unless --skip-service) it runs the backend as a real process (`python -m backend`) on a
second N-task project, connects it through LS's API, labels RETRAIN_EVERY tasks the way
"Label All Tasks" serves them, and times the last annotation (the retrain trigger) until
LS's project model_version switches to the new model, i.e. the new priorities are live.

    .venv/bin/python scripts/bench_publish.py [--tasks 10000] [--encoder PATH] [--publish-top-k 1000]
                                              [--skip-client | --skip-service] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.labelstudio import LabelStudioClient  # noqa: E402
from tests.e2e.lsserver import LabelStudioServer, agnews, ls_executable, ls_venv  # noqa: E402
from tests.e2e.service import BackendProcess, metric, wait_for  # noqa: E402


def timed(results: dict, name: str, fn):
    """Run fn(), record and print its wall time, return its value."""
    start = time.perf_counter()
    value = fn()
    results[name] = round(time.perf_counter() - start, 3)
    print(f"  {name:<52} {results[name]:8.2f} s", flush=True)
    return value


def make_project(api, title: str, n: int) -> tuple[int, dict[int, str]]:
    """A Text+Choices project with the first n AG News tasks; returns (id, task id -> true label)."""
    rows = agnews(n)
    pid = api.create_project(title)
    api.call("POST", f"/api/projects/{pid}/import", json=[{"text": t} for t, _ in rows])
    ids = sorted(t["id"] for t in api.tasks(pid))
    return pid, dict(zip(ids, (label for _, label in rows), strict=True))


def bench_client(ls: LabelStudioServer, n: int, results: dict) -> None:
    api, client = ls.api(timeout=900), LabelStudioClient(ls.url, ls.token, timeout=900)
    print(f"LabelStudioClient against LS 1.23 at {ls.url}, {n} tasks:")
    pid, labels = timed(results, f"LS import of {n} tasks (POST /import)", lambda: make_project(api, "bench", n))
    ids = sorted(labels)
    timed(results, "list_tasks (all, id+data)", lambda: client.list_tasks(pid))
    timed(results, "list_tasks(after_id) for the last 100", lambda: client.list_tasks(pid, after_id=ids[-101]))
    timed(results, "task_ids", lambda: client.task_ids(pid))
    # reference: the same listing without review=true (which keeps LS from calling ML backends)
    timed(results, "  (raw GET /api/tasks ids, without review=true)", lambda: api.call(
        "GET", "/api/tasks", params={"project": pid, "include": "id", "page_size": n}))
    timed(results, "count_annotations", lambda: client.count_annotations(pid))
    timed(results, "count_tasks (what a sync does instead of task_ids)", lambda: client.count_tasks(pid))
    result = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["World"]}}]

    def version(name: str, seed: int) -> list[dict]:
        return [{"task": t, "result": result, "score": ((t * 7919 + seed) % 10007) / 10007, "model_version": name}
                for t in ids]

    created = timed(results, f"import_predictions ({n}, version A)", lambda: client.import_predictions(
        pid, version("bench-A", 1)))
    assert created == n, f"created {created} of {n}"
    timed(results, "set_model_version (A)", lambda: client.set_model_version(pid, "bench-A"))
    client.set_sampling(pid)
    timed(results, "GET /api/projects/{id}/next (uncertainty sampling)", lambda: api.next_task(pid))
    timed(results, f"import_predictions ({n}, version B)", lambda: client.import_predictions(
        pid, version("bench-B", 2)))
    timed(results, "set_model_version (B)", lambda: client.set_model_version(pid, "bench-B"))
    deleted = timed(results, f"delete_predictions (A, {n})", lambda: client.delete_predictions(pid, "bench-A"))
    assert deleted == n, f"deleted {deleted} of {n}"


def bench_service(ls: LabelStudioServer, n: int, encoder: str | None, publish_top_k: int, results: dict) -> None:
    api = ls.api(timeout=900)
    pat = ls.personal_access_token()
    workdir = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    settings = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": pat, "RECONCILE_INTERVAL": "0",
                "PUBLISH_TOP_K": str(publish_top_k)}
    if encoder:
        settings["ENCODER"] = encoder
    backend = BackendProcess(workdir=workdir, settings=settings).start()
    retrain_every = 10
    print(f"\nService loop (python -m backend, encoder={encoder or 'default'}, PUBLISH_TOP_K={publish_top_k}, "
          f"other settings default), {n} tasks:")
    try:
        pid, labels = make_project(api, "bench service", n)
        pattern = rf"p{pid}-v\d{{4}}-\w+"

        def live_version(other_than: str = "") -> str | None:
            version = api.call("GET", f"/api/projects/{pid}/", params={"include": "id,model_version"})[
                "model_version"] or ""
            return version if re.fullmatch(pattern, version) and version != other_than else None

        start = time.perf_counter()
        api.connect_backend(pid, backend.url, title="bench")
        cold = wait_for(live_version, 1800, interval=0.2, what="cold-start priorities")
        results["connect -> cold-start priorities live"] = round(time.perf_counter() - start, 3)
        print(f"  {'connect -> cold-start priorities live':<52} "
              f"{results['connect -> cold-start priorities live']:8.2f} s", flush=True)
        wait_for(lambda: metric(backend.metrics(), "al_rescore_seconds_count") >= 1, 60, what="cold rescore")
        before = backend.metrics()
        for i in range(retrain_every):
            task = api.next_task(pid)
            if i == retrain_every - 1:
                trigger = time.perf_counter()
            api.annotate(task["id"], labels[task["id"]])
        wait_for(lambda: live_version(other_than=cold), 1800, interval=0.2, what="retrained priorities")
        results["trigger annotation -> new priorities live"] = round(time.perf_counter() - trigger, 3)
        print(f"  {'trigger annotation -> new priorities live':<52} "
              f"{results['trigger annotation -> new priorities live']:8.2f} s", flush=True)
        # the rescore job records its duration just after it switched the version
        after = wait_for(lambda: (m := backend.metrics()) and metric(m, "al_rescore_seconds_count") > metric(
            before, "al_rescore_seconds_count") and m, 60, what="rescore duration")
        for name in ("al_retrain_seconds", "al_rescore_seconds"):
            seconds = metric(after, f"{name}_sum") - metric(before, f"{name}_sum")
            results[f"  of which {name} (job)"] = round(seconds, 3)
            print(f"  {'  of which ' + name + ' (job)':<52} {seconds:8.2f} s")
        published = api.call("GET", f"/api/projects/{pid}/model-versions/")
        print(f"  predictions per version in LS now: {published}")
    except Exception:
        print(backend.log_tail(), file=sys.stderr)
        raise
    finally:
        backend.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10000, help="tasks per project (AG News pool has 10000)")
    parser.add_argument("--encoder", default=None, help="ENCODER for the service (default: the service default)")
    parser.add_argument("--publish-top-k", type=int, default=1000,
                        help="PUBLISH_TOP_K for the service (default 1000, the service default; 0 = all)")
    parser.add_argument("--skip-client", action="store_true", help="only time the service loop")
    parser.add_argument("--skip-service", action="store_true", help="only time the LS client calls")
    parser.add_argument("--json", type=Path, help="also write the timings here")
    args = parser.parse_args()
    executable = ls_executable()
    if executable is None:
        print(f"error: no Label Studio venv at {ls_venv()} (set LS_VENV)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-ls-"))
    ls = LabelStudioServer(executable=executable, workdir=workdir)
    results: dict[str, float] = {}
    try:
        timed(results, "Label Studio init + start", ls.start)
        if not args.skip_client:
            bench_client(ls, args.tasks, results)
        if not args.skip_service:
            bench_service(ls, args.tasks, args.encoder, args.publish_top_k, results)
    except Exception:
        print(ls.log_tail(), file=sys.stderr)
        raise
    finally:
        ls.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
