"""Full mode's starting classifier layer (``FULL_HEAD``): test accuracy of one fine-tune on random labels.

    .venv/bin/python scripts/bench_full_head.py [--datasets agnews,trec6] [--labels 40,100]
        [--seeds 0,1,2] [--test-rows 1000] [--heads random,probe] [--threads 1]
        [--variants batch_size=32,batch_size=32/lr=1e-4]

For each dataset (``../shared/data``), labelled-set size and seed: a seeded random labelled set from
the pool and a seeded random sample of the test set (the same for every head), one ``full`` fine-tune
per head (``FULL_HEAD``: ``random`` weights or ``probe``, a logistic regression on the pretrained
encoder's outputs), and the fine-tuned network's accuracy on the test rows (dropout off: the model,
not an MC average). Prints one JSON line per run, then the mean per (dataset, labels, head) and the
mean paired difference (probe - random) with 2 standard errors. No active learning: this measures
the learner under the loop; on a GPU the simulation measures the loop (``default/full_head=probe``).

``--variants``: fine-tune settings to compare instead of heads (each ``key=value`` joined by ``/``,
fields of ``backend.al.training.TrainConfig`` replacing full mode's ``TRAINING``; ``base`` is
``TRAINING`` itself), with the default head; each variant's difference is taken against ``base``.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from backend.al.kinds import full  # noqa: E402
from backend.al.learner import ActiveLearner  # noqa: E402
from backend.al.simulate import with_options  # noqa: E402

DATA = ROOT.parent / "shared" / "data"



def accuracy(learner: ActiveLearner, model, texts: list[str], labels: list[str]) -> float:
    """The fine-tuned network's accuracy, dropout off, in batches of 64."""
    kind = learner.kind("full")
    net = kind._network(len(model.classes), model.state)
    net.eval()
    tokens, pad = kind.tokens(texts), kind.tokenizer.pad_token_id or 0
    with torch.no_grad():
        predicted = torch.cat([net(*tokens.batch(idx, pad)).argmax(1).cpu()
                               for idx in torch.arange(len(texts)).split(64)])
    return sum(model.classes[p] == y for p, y in zip(predicted.tolist(), labels, strict=True)) / len(labels)


def training(base, spec: str):
    """``base`` with the ``key=value`` fields of ``spec`` (joined by ``/``) replaced; ``base`` for "base"."""
    if spec == "base":
        return base
    try:
        return with_options(base, spec.split("/"), "fine-tune setting")
    except ValueError as error:
        raise SystemExit(f"{error}; choose from {', '.join(f.name for f in dataclasses.fields(base))}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="agnews,trec6")
    p.add_argument("--labels", default="40,100")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--heads", default="random,probe")
    p.add_argument("--variants", default="", help="fine-tune settings to compare instead of heads")
    p.add_argument("--test-rows", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--encoder", default=EngineConfig().encoder)
    p.add_argument("--data-dir", default=str(DATA), help="the datasets' folder (../shared/data)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    base_training = full.TRAINING
    variants = ["base", *args.variants.split(",")] if args.variants else []
    heads = variants or args.heads.split(",")
    results: dict[tuple[str, int, str, int], float] = {}
    for name in args.datasets.split(","):
        (pool_texts, pool_labels), (test_texts, test_labels) = load_split(Path(args.data_dir), name)
        classes = sorted(set(pool_labels))
        for n in [int(x) for x in args.labels.split(",")]:
            for seed in [int(x) for x in args.seeds.split(",")]:
                rng = random.Random(1000 + seed)
                test = rng.sample(range(len(test_texts)), min(args.test_rows, len(test_texts)))
                rows = rng.sample(range(len(pool_texts)), n)
                for head in heads:
                    full.TRAINING = training(base_training, head) if variants else base_training
                    learner = ActiveLearner(EngineConfig(encoder=args.encoder, mode="full", seed=seed,
                                                         **({} if variants else {"full_head": head})))
                    start = time.perf_counter()
                    model = learner.fit([pool_texts[i] for i in rows], [pool_labels[i] for i in rows], classes)
                    seconds = time.perf_counter() - start
                    acc = accuracy(learner, model, [test_texts[i] for i in test], [test_labels[i] for i in test])
                    results[(name, n, head, seed)] = acc
                    what = "variant" if variants else "head"
                    print(json.dumps({"dataset": name, "labels": n, "seed": seed, what: head,
                                      "accuracy": round(acc, 4), "fit_s": round(seconds, 1)}), flush=True)
    first, others = (heads[0], heads[1:]) if variants else ("random", ["probe"])
    print("\ndataset  labels  " + "  ".join(f"{h:>7}" for h in heads) + f"  difference to {first} (2 s.e.), points")
    for name, n in dict.fromkeys((k[0], k[1]) for k in results):
        seeds = sorted({k[3] for k in results if k[:2] == (name, n)})
        means = [statistics.mean(results[(name, n, h, s)] for s in seeds) for h in heads]
        line = f"{name:8} {n:6}  " + "  ".join(f"{m:7.3f}" for m in means)
        for other in (o for o in others if {first, o} <= set(heads)):
            diffs = [100 * (results[(name, n, other, s)] - results[(name, n, first, s)]) for s in seeds]
            se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
            line += f"  {other}: {statistics.mean(diffs):+.2f} ({2 * se:.2f})"
        line += f", {len(seeds)} seeds"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
