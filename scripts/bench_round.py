"""One engine round on a real pool: retrain (with the pool for pseudo-labels) + re-score, timed.

    .venv/bin/python scripts/bench_round.py [--labels 100,500] [--datasets agnews,clinc150]
        [--cache-dir data/embeddings] [--threads 1] [--engine strategy=bald/power_beta=1]

For each dataset (``../shared/data``) and labelled-set size: a seeded random labelled set, the
rest of the pool unlabelled; times ``ActiveLearner.fit(..., pool=unlabelled)`` and
``ActiveLearner.rank`` over the unlabelled pool with the default engine settings, once with
``propagation=auto`` and once off, and the model's accuracy on the dataset's test.tsv. With ``auto``
the check (``PROPAGATION_CHECK=deferred``: a job after the previous retrain) is timed apart, on the
same labels; ``inline`` times ``auto`` checked inside the fit. ``--engine`` overrides other engine
settings the simulation's way (``backend.al.simulate.strategy_config``: ``key=value`` joined by ``/``).
Embeddings come from the cache (the first run embeds the pools: minutes on a CPU); publishing
to Label Studio is not part of it (scripts/bench_loop.py times whole rounds against LS).
Prints one line per case, with the propagation check's counts and the number of pseudo-labels,
and the machine's load; with propagation on, the case is fitted twice: first with no k-NN lists
kept (a project's first retrain), then timed again with them read (every later retrain on the
same texts, backend/al/neighbours.py). Before the timed cases one untimed fit imports what a fit imports on first
use (torch.optim pulls in torch._dynamo: seconds), as a worker does at start (workers/worker.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.al.config import EngineConfig  # noqa: E402
from backend.al.datasets import load_tsv  # noqa: E402
from backend.al.learner import ActiveLearner  # noqa: E402
from backend.al.simulate import strategy_config  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labels", default="100,500", help="labelled-set sizes, comma-separated")
    parser.add_argument("--datasets", default="agnews,clinc150", help="folders of ../shared/data with pool.tsv")
    parser.add_argument("--cache-dir", default=str(ROOT / "data" / "embeddings"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: as the simulations run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", default="auto,off",
                        help="PROPAGATION settings to time, comma-separated: auto (its check deferred, timed apart), "
                             "inline (auto checked inside the fit), on, off")
    parser.add_argument("--engine", default="", help="engine overrides, key=value joined by '/' "
                                                     "(e.g. strategy=bald/power_beta=1/posterior=bootstrap)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warm = ActiveLearner(EngineConfig(), Path(args.cache_dir))
    texts, labels = load_tsv(DATA / args.datasets.split(",")[0] / "pool.tsv")
    step = max(len(texts) // 50, 1)
    warm.fit(texts[::step], labels[::step], sorted(set(labels)))
    for name in args.datasets.split(","):
        texts, labels = load_tsv(DATA / name / "pool.tsv")
        test_texts, test_labels = load_tsv(DATA / name / "test.tsv")
        classes = sorted(set(labels))
        gold = torch.tensor([classes.index(y) for y in test_labels])
        for setting in args.settings.split(","):
            # auto: PROPAGATION_CHECK=deferred (the default), the check timed apart from the retrain it feeds
            propagation, when = ("auto", "inline") if setting == "inline" else (setting, "deferred")
            base = strategy_config("/".join(["default", *filter(None, [args.engine])]), EngineConfig())
            config = dataclasses.replace(base, propagation=propagation, propagation_check=when)
            learner = ActiveLearner(config, Path(args.cache_dir))
            learner.embed(texts)  # warm the cache first: the round reads cached embeddings
            for n in (int(v) for v in args.labels.split(",")):
                order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(args.seed)).tolist()
                picked, rest = order[:n], order[n:]
                train = ([texts[i] for i in picked], [labels[i] for i in picked], classes)
                pool = [texts[i] for i in rest]
                first, check, check_s = None, None, None
                if setting != "off":  # the first retrain on these texts computes the k-NN lists, the next read them
                    for kept in Path(args.cache_dir).glob("*/NEIGHBOURS"):
                        shutil.rmtree(kept.parent)
                    start = time.perf_counter()
                    (learner.check_propagation if setting == "auto" else learner.fit)(*train, pool=pool)
                    first = time.perf_counter() - start
                if setting == "auto":  # the check job after the previous retrain (here: on the same labels)
                    start = time.perf_counter()
                    check = learner.check_propagation(*train, pool=pool)
                    check_s = time.perf_counter() - start
                start = time.perf_counter()
                model = learner.fit(*train, pool=pool, check=check)
                fitted = time.perf_counter()
                learner.rank(model, pool, ids=rest)
                done = time.perf_counter()
                stats = {k: model.stats[k] for k in ("propagation_check", "pseudo_labels", "posterior",
                                                     "bootstrap_iterations") if k in model.stats}
                accuracy = float((learner.predict_proba(model, test_texts).argmax(dim=1) == gold).float().mean())
                print(f"{name} pool={len(rest)} classes={len(classes)} labels={n} propagation={setting}: "
                      + (f"first {'check' if setting == 'auto' else 'fit'} {first:.1f} s (k-NN lists computed), "
                         "then " if first is not None else "")
                      + (f"check {check_s:.2f} s (off the round), " if check_s is not None else "")
                      + f"fit {fitted - start:.2f} s, rank {done - fitted:.2f} s, round {done - start:.2f} s "
                      f"test accuracy {accuracy:.3f} {stats} load={os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
