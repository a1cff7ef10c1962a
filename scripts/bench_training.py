"""Training choices, measured: schedule, warm start and threads for the MC-dropout head.

    .venv/bin/python scripts/bench_training.py [--seeds 3]

1. Schedule: mean test accuracy of heads trained on random subsets (100, 180, 220, 300, 500
   labels) of AG News and TREC-6, for the first schedule (early stopping from 200 labels, lr
   3e-3, weight decay 1e-3, batch 64), early stopping with the current optimiser settings, and
   the current fixed-step schedule (backend.al.learner.HEAD_TRAINING).
2. Warm start: a chain of retrains every 20 labels up to 500, from the previous head or fresh.
3. Threads: milliseconds per training step of the head on two threads and on one.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.al.datasets import load_split  # noqa: E402
from backend.al.kinds import head as head_kind  # noqa: E402
from backend.al.kinds.head import MCDropoutHead  # noqa: E402
from backend.al.learner import ActiveLearner, EngineConfig  # noqa: E402

CURRENT = head_kind.TRAINING
SCHEDULES = {
    "first schedule (early stopping from 200, lr 3e-3, wd 1e-3, batch 64)":
        dataclasses.replace(CURRENT, lr=3e-3, weight_decay=1e-3, batch_size=64, min_val=200, min_epochs=0),
    "early stopping from 200, current optimiser (patience 20)":
        dataclasses.replace(CURRENT, min_val=200, patience=20),
    "current: fixed steps below 2000 labels": CURRENT,
}


def accuracy(learner, model, test, classes) -> float:
    gold = torch.tensor([classes.index(y) for y in test[1]])
    return float((learner.predict_proba(model, test[0]).argmax(dim=1) == gold).float().mean())


def subsets(n_pool: int, seed: int) -> list[int]:
    return torch.randperm(n_pool, generator=torch.Generator().manual_seed(seed)).tolist()


def bench_schedules(datasets, cache: Path, seeds: int) -> None:
    print("1. schedule: mean / min test accuracy over sizes 100-500 and seeds, and mean at 500 labels")
    for name, config in SCHEDULES.items():
        head_kind.TRAINING = config
        cells = []
        for label, (pool, test) in datasets.items():
            classes = sorted(set(pool[1]))
            learner = ActiveLearner(EngineConfig(), cache)
            accs, at500 = [], []
            for seed in range(seeds):
                idx = subsets(len(pool[0]), seed)
                for n in (100, 180, 220, 300, 500):
                    model = learner.fit([pool[0][i] for i in idx[:n]], [pool[1][i] for i in idx[:n]], classes)
                    accs.append(accuracy(learner, model, test, classes))
                at500.append(accs[-1])
            cells.append(f"{label} {statistics.mean(accs):.3f} / {min(accs):.3f}, @500 {statistics.mean(at500):.3f}")
        print(f"  {name}\n      " + " | ".join(cells), flush=True)
    head_kind.TRAINING = CURRENT


def bench_warm_start(pool, test, cache: Path, seeds: int) -> None:
    print("2. warm start (AG News): accuracy at 500 labels after retraining every 20 labels")
    classes = sorted(set(pool[1]))
    for warm in (True, False):
        learner = ActiveLearner(EngineConfig(warm_start=warm), cache)
        finals = []
        for seed in range(seeds):
            idx, model = subsets(len(pool[0]), seed), None
            for n in range(20, 501, 20):
                model = learner.fit([pool[0][i] for i in idx[:n]], [pool[1][i] for i in idx[:n]], classes,
                                    previous=model)
            finals.append(accuracy(learner, model, test, classes))
        print(f"  {'warm start' if warm else 'from scratch':<13} " + ", ".join(f"{a:.3f}" for a in finals),
              flush=True)


def bench_threads() -> None:
    print("3. head training step (384 -> 256 -> 4, batch 64)")
    before = torch.get_num_threads()
    for threads in (2, 1):
        torch.set_num_threads(threads)
        head = MCDropoutHead(384, 4)
        optimizer = torch.optim.AdamW(head.parameters(), 1e-3)
        x, y = torch.randn(64, 384), torch.randint(0, 4, (64,))
        start = time.perf_counter()
        for _ in range(200):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(head(x), y).backward()
            optimizer.step()
        print(f"  {threads} thread(s): {(time.perf_counter() - start) / 200 * 1000:.2f} ms per step")
    torch.set_num_threads(before)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--cache-dir", default=str(ROOT / "data" / "embeddings"))
    args = p.parse_args()
    data = Path(args.data)
    agnews, trec = load_split(data, "agnews"), load_split(data, "trec6")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache_dir) if args.cache_dir else Path(tmp)
        bench_schedules({"TREC-6": trec, "AG News": agnews}, cache, args.seeds)
        bench_warm_start(*agnews, cache, min(args.seeds, 2))
    bench_threads()
    return 0


if __name__ == "__main__":
    sys.exit(main())
