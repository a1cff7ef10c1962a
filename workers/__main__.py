"""``python -m workers [--burst] [--in-process] [--queues score,shard,train,cleanup]``: one RQ worker.

By default it takes every queue, in priority order. ``--queues cleanup`` makes a clean-up-only
worker: the embedded stack runs one beside its loop workers, so a long delete of a superseded
version's predictions never holds up a retrain or a re-score."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from redis import Redis

from backend import jobqueue
from backend.settings import Settings, SettingsError
from workers.context import WorkerContext
from workers.worker import InProcessWorker, ReconcilingWorker


def main(argv: list[str] | None = None) -> int:
    """Start a worker; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--queues", default=",".join(jobqueue.QUEUES),
                        help=f"comma-separated queues, in priority order (default: {','.join(jobqueue.QUEUES)})")
    parser.add_argument("--in-process", action="store_true",
                        help="run jobs in this process, not in forked work-horses: for GPU workers, whose CUDA "
                             "context and loaded networks then stay warm between jobs (see workers.worker)")
    args = parser.parse_args(argv)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = [q for q in queues if q not in jobqueue.QUEUES]
    if not queues or unknown:
        print(f"error: --queues {args.queues!r}: choose from {', '.join(jobqueue.QUEUES)}", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not settings.redis_url:
        print("error: REDIS_URL is required (or run `python -m backend`, which starts workers)",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Which GPUs a job may use is CUDA_VISIBLE_DEVICES' business; we only log it, never touch CUDA here.
    logging.getLogger("workers").info(
        "worker starting: DEVICE=%s CUDA_VISIBLE_DEVICES=%s, jobs %s", settings.engine.device,
        os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"), "in process" if args.in_process else "in work-horses")
    connection = Redis.from_url(settings.redis_url)
    worker_class = InProcessWorker if args.in_process else ReconcilingWorker
    worker = worker_class(queues, connection=connection, context=WorkerContext.from_settings(settings))
    worker.work(burst=args.burst, with_scheduler=True, logging_level=settings.log_level.upper())
    return 0


if __name__ == "__main__":
    sys.exit(main())
