"""``python -m workers [--burst]``: one RQ worker on the train and score queues, with our settings."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from redis import Redis

from backend import jobqueue
from backend.settings import Settings, SettingsError
from workers.context import WorkerContext
from workers.worker import ReconcilingWorker


def main(argv: list[str] | None = None) -> int:
    """Start a worker; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    args = parser.parse_args(argv)
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
        "worker starting: DEVICE=%s CUDA_VISIBLE_DEVICES=%s", settings.engine.device,
        os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
    connection = Redis.from_url(settings.redis_url)
    worker = ReconcilingWorker(list(jobqueue.QUEUES), connection=connection,
                               context=WorkerContext.from_settings(settings))
    worker.work(burst=args.burst, with_scheduler=True, logging_level=settings.log_level.upper())
    return 0


if __name__ == "__main__":
    sys.exit(main())
