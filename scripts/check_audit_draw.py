"""Is the audit item a fair draw of the unlabelled pool? (docs/BENCHMARKS.md, section 4)

    .venv/bin/python scripts/check_audit_draw.py --pool runs/trec6-pool.tsv --seeds 300

1. Positions: over the simulation's seeds (seed * 1000 + round), where in the pool the item of
   the first exploration slot sits (uniform: mean 0.5, Kolmogorov-Smirnov distance small).
2. Shared seed: for fixed head models (random labelled sets of 100 and 250), rank the rest of the
   pool as ``learner.rank`` does (MC-dropout masks and exploration from the same seed) and with an
   unrelated exploration seed; the first exploration slot's accuracy against the pool accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from backend.al.acquisition import acquire
from backend.al.datasets import load_tsv
from backend.al.learner import ActiveLearner, EngineConfig
from backend.al.ranking import TaskScores


def positions(pool_size: int, seeds: int, rounds: int) -> None:
    cfg, found = EngineConfig(mode="head"), []
    learner = ActiveLearner(cfg)
    for seed in range(seeds):
        for round_ in range(rounds):
            n = pool_size - 10 * round_
            scored = TaskScores(torch.arange(n), torch.zeros(n), None, cfg.strategy)
            ranking = learner.order(scored, seed=seed * 1000 + round_)
            found.append(next(i for i in ranking.order.tolist() if ranking.explored[i]) / n)
    found.sort()
    k = len(found)
    ks = max(max((i + 1) / k - z, z - i / k) for i, z in enumerate(found))
    print(f"positions: {k} draws, mean {sum(found) / k:.3f}, KS distance {ks:.3f} (5% critical {1.36 / k ** 0.5:.3f})")


def shared_seed(pool: tuple[list[str], list[str]], seeds: int, cache: Path) -> None:
    classes = sorted(set(pool[1]))
    cfg = EngineConfig(mode="head")
    learner = ActiveLearner(cfg, cache_dir=cache)
    for size, model_seed in ((100, 1), (250, 2)):
        perm = torch.randperm(len(pool[0]), generator=torch.Generator().manual_seed(model_seed)).tolist()
        labelled, rest = perm[:size], sorted(perm[size:])
        model = learner.fit([pool[0][i] for i in labelled], [pool[1][i] for i in labelled], classes)
        texts, ids = [pool[0][i] for i in rest], torch.tensor(rest)
        gold = torch.tensor([classes.index(pool[1][i]) for i in rest])
        total = {"pool": 0.0, "shared": 0, "independent": 0}
        for seed in range(seeds):
            probs = learner.mc_probs(model, texts, seed=seed)
            right = probs.mean(dim=1).argmax(dim=1) == gold
            scored = TaskScores(ids, acquire(cfg.strategy, probs, False, ids=ids, seed=seed), probs.mean(dim=1),
                                cfg.strategy)
            total["pool"] += float(right.float().mean())
            for name, order_seed in (("shared", seed), ("independent", 50_000_000 + seed)):
                ranking = learner.order(scored, seed=order_seed)
                total[name] += int(right[next(i for i in ranking.order.tolist() if ranking.explored[i])])
        print(f"{size} labels, {seeds} seeds: pool accuracy {total['pool'] / seeds:.4f}; first exploration slot: "
              f"shared seed {total['shared'] / seeds:.4f}, independent seed {total['independent'] / seeds:.4f}",
              flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pool", required=True, help="text<TAB>label TSV (TREC-6 as in BENCHMARKS section 1)")
    p.add_argument("--seeds", type=int, default=300)
    p.add_argument("--cache-dir", default="data/embeddings")
    args = p.parse_args()
    pool = load_tsv(args.pool)
    positions(len(pool[0]) - 20, 200, 29)
    shared_seed(pool, args.seeds, Path(args.cache_dir))


if __name__ == "__main__":
    main()
