"""The ``setfit`` kind against the ``linear`` kind on the frozen encoder: test accuracy of one fit on random labels.

    .venv/bin/python scripts/bench_setfit.py [--datasets agnews,trec6] [--labels 100] [--seeds 0,1,2]
        [--test-rows 1000] [--threads 2] [--device auto] [--data-dir ../shared/data]

The learner under the loop, for issue 7's GPU aim (AG News >= 0.88 at 100 labels). For each dataset
(``../shared/data``), labelled-set size and seed, the same draws as ``scripts/bench_full_head.py`` (a
seeded random sample of the test set, then a seeded random labelled set), so its full fine-tunes
compare seed by seed. Two learners through ``ActiveLearner`` with the engine's defaults otherwise:

- ``linear``: the CPU default kind on the pretrained encoder (logistic regression with class weights,
  its penalty by the labelled set's shape, hashed n-grams; no pool, so no pseudo-labels);
- ``setfit``: ``MODEL_MODE=setfit`` (``backend/al/kinds/setfit.py``): the encoder tuned on pairs of
  the labelled texts, then the same ``linear`` fit on the tuned encoder's embeddings.

Accuracy is the argmax of the mean probabilities on the test rows. Prints one JSON line per run, then
the means and the mean paired difference (setfit - linear) with 2 standard errors. No active
learning: the loop is measured by the simulation (``default/mode=setfit``).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.al.config import EngineConfig  # noqa: E402
from backend.al.datasets import load_split  # noqa: E402
from backend.al.learner import ActiveLearner  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
LEARNERS = ("linear", "setfit")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="agnews,trec6")
    p.add_argument("--labels", default="100")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--test-rows", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--encoder", default=EngineConfig().encoder)
    p.add_argument("--data-dir", default=str(DATA), help="the datasets' folder (../shared/data)")
    args = p.parse_args(argv)
    if args.test_rows < 1:
        p.error("need --test-rows >= 1")
    torch.set_num_threads(args.threads)
    results: dict[tuple[str, int, int], dict[str, float]] = {}
    for name in args.datasets.split(","):
        (pool_texts, pool_labels), (test_texts, test_labels) = load_split(Path(args.data_dir), name)
        classes = sorted(set(pool_labels))
        for n in [int(x) for x in args.labels.split(",")]:
            for seed in [int(x) for x in args.seeds.split(",")]:
                rng = random.Random(1000 + seed)  # bench_full_head.py's draws: its fine-tunes compare
                test = rng.sample(range(len(test_texts)), min(args.test_rows, len(test_texts)))
                rows = rng.sample(range(len(pool_texts)), n)
                texts, truth = [test_texts[i] for i in test], [test_labels[i] for i in test]
                row = {"dataset": name, "labels": n, "seed": seed}
                for kind in LEARNERS:
                    learner = ActiveLearner(EngineConfig(encoder=args.encoder, mode=kind, seed=seed,
                                                         device=args.device))
                    start = time.perf_counter()
                    model = learner.fit([pool_texts[i] for i in rows], [pool_labels[i] for i in rows], classes)
                    row[f"{kind}_fit_s"] = round(time.perf_counter() - start, 1)
                    predicted = learner.predict_proba(model, texts).argmax(dim=1).tolist()
                    row[kind] = sum(classes[k] == y for k, y in zip(predicted, truth, strict=True)) / len(truth)
                results[name, n, seed] = {k: row[k] for k in LEARNERS}
                print(json.dumps({**row, "device": learner.device.type}), flush=True)
    print("\ndataset  labels   linear   setfit  setfit - linear (2 s.e.), points")
    for name, n in dict.fromkeys((k[0], k[1]) for k in results):
        runs = [v for k, v in results.items() if k[:2] == (name, n)]
        diffs = [100 * (r["setfit"] - r["linear"]) for r in runs]
        se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
        print(f"{name:8} {n:6}  {statistics.mean(r['linear'] for r in runs):7.3f}  "
              f"{statistics.mean(r['setfit'] for r in runs):7.3f}  {statistics.mean(diffs):+.2f} ({2 * se:.2f}), "
              f"{len(runs)} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
