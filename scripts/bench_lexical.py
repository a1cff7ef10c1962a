"""What hashed word n-grams add to the linear kind's embedding, on random labelled sets.

    .venv/bin/python scripts/bench_lexical.py [--datasets trec6,agnews,clinc150] [--labels 40,100,200,500]
        [--scales 0,rule,0.5,1] [--seeds 3] [--bits 10] [--no-opening] [--cache-dir data/embeddings]

For each dataset of ../shared/data and labelled-set size: ``--seeds`` seeded random labelled sets from
the pool; the linear kind's logistic regression (class weights, L2 = 0.01 x labels per class, fitted
to convergence) on the embedding alone (scale 0), on the embedding with the n-gram rows at a fixed
scale beside it, and with the kind's rule (``rule``: ``kinds.linear.lexical_scale`` capped at 0.5,
the default ``LEXICAL``); the mean test accuracy of each. No active learning: this isolates the
features from the query strategy (``scripts/bench_labels.sh`` measures the loop).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.al import lexical  # noqa: E402
from backend.al.config import EngineConfig  # noqa: E402
from backend.al.datasets import load_split  # noqa: E402
from backend.al.kinds.linear import default_l2, lexical_scale  # noqa: E402
from backend.al.learner import ActiveLearner  # noqa: E402
from backend.al.logistic import fit_logistic  # noqa: E402
from backend.al.training import class_weights  # noqa: E402

DATA = ROOT.parent / "shared" / "data"



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="trec6,agnews,clinc150")
    parser.add_argument("--labels", default="40,100,200,500", help="labelled-set sizes, comma-separated")
    parser.add_argument("--scales", default="0,rule,0.5,1", help="n-gram scales: numbers, or 'rule' (the default)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--bits", type=int, default=lexical.BITS)
    parser.add_argument("--no-opening", action="store_true", help="leave out the opening-words features")
    parser.add_argument("--cache-dir", default=str(ROOT / "data" / "embeddings"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cap = EngineConfig().lexical
    for name in args.datasets.split(","):
        (pool, pool_labels), (test, test_labels) = load_split(DATA, name)
        classes = sorted(set(pool_labels) | set(test_labels))
        learner = ActiveLearner(EngineConfig(), cache_dir=Path(args.cache_dir))
        emb, test_emb = learner.embed(pool).float(), learner.embed(test).float()
        grams = lexical.features(pool, args.bits, not args.no_opening).dense()
        test_grams = lexical.features(test, args.bits, not args.no_opening).dense()
        y = torch.tensor([classes.index(v) for v in pool_labels])
        gold = torch.tensor([classes.index(v) for v in test_labels])
        for n in (int(v) for v in args.labels.split(",")):
            l2 = default_l2(n, len(classes))
            accuracy: dict[str, list[float]] = {s: [] for s in args.scales.split(",")}
            for seed in range(args.seeds):
                picked = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]
                targets = F.one_hot(y[picked], len(classes)).float()
                for key in accuracy:
                    scale = lexical_scale(l2, cap) if key == "rule" else float(key)
                    train = torch.cat([emb[picked], scale * grams[picked]], dim=1) if scale else emb[picked]
                    held = torch.cat([test_emb, scale * test_grams], dim=1) if scale else test_emb
                    w, b, _ = fit_logistic(train, targets, False, l2, class_weights(targets, False))
                    accuracy[key].append(float(((held.double() @ w + b).argmax(dim=1) == gold).float().mean()))
            print(f"{name} labels={n} ({n / len(classes):.1f} a class) rule scale={lexical_scale(l2, cap):.2f}: "
                  + "  ".join(f"scale {k}: {sum(v) / len(v):.3f}" for k, v in accuracy.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
