"""Scoring speed: warm and cold head-mode re-scoring against full-model MC dropout.

    .venv/bin/python scripts/bench_scoring.py [--pool ../shared/data/agnews/pool.tsv] [--mc-samples 20]

Measures, in one run on this machine, for the whole pool:
- warm: ``learner.rank`` by a fresh learner (empty memory) whose embeddings are on disk:
  text hashing, cache read, T-sample MC dropout on the head, ranking with the defaults;
- cold: the same on an empty cache, encoder load and encoding included;
- plain: one deterministic encoder pass over the pool, written the plain way
  (AutoModel in fp32, batches of 64 in file order, mean pooling), plus our own
  encoder's pass (length-sorted batches, bf16 where native), to show cold's overhead;
- full: BaaL-style MC dropout with T stochastic passes through the whole transformer
  (our ``full`` mode), timed on ``--full-items`` texts and scaled linearly to the pool
  (the work is linear in N); pass ``--full-items 0`` to run it on the whole pool.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.al.datasets import load_tsv  # noqa: E402
from backend.al.encoder import TextEncoder, mean_pool, resolve_encoder  # noqa: E402
from backend.al.kinds.full import FullClassifier  # noqa: E402
from backend.al.learner import ActiveLearner, EngineConfig  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def plain_pass(path: str, texts: list[str], batch: int = 64) -> None:
    """A plain deterministic encoder pass: fp32, file order, mean pooling."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
            mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])


def full_mc(path: str, texts: list[str], classes: int, samples: int, batch: int = 16) -> None:
    """T stochastic passes through the whole transformer per text (BaaL-style MC dropout)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    net = FullClassifier(path, classes)
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
        net.mc_logits(dict(enc), samples)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pool", default=str(ROOT.parent / "shared/data/agnews/pool.tsv"))
    p.add_argument("--mc-samples", type=int, default=20)
    p.add_argument("--labelled", type=int, default=200, help="labelled items the scored model is trained on")
    p.add_argument("--full-items", type=int, default=200, help="texts to time full MC on (0 = whole pool)")
    p.add_argument("--warm-repeats", type=int, default=5)
    args = p.parse_args()

    texts, labels = load_tsv(args.pool)
    classes = sorted(set(labels))
    config = EngineConfig(mc_samples=args.mc_samples)
    path = resolve_encoder(config.encoder)
    n = len(texts)
    print(f"pool: {n} texts from {args.pool}; T = {args.mc_samples}; torch threads = {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        trainer = ActiveLearner(config, Path(tmp) / "train-cache")
        model = trainer.fit(texts[:args.labelled], labels[:args.labelled], classes)

        cache = Path(tmp) / "cache"
        cold_s, _ = timed(lambda: ActiveLearner(config, cache).rank(model, texts))
        print(f"cold re-score (load encoder, encode, cache, MC, rank): {cold_s:8.2f} s")

        warm = []
        for _ in range(args.warm_repeats):
            s, ranking = timed(lambda: ActiveLearner(config, cache).rank(model, texts))
            warm.append(s)
        warm_s = statistics.median(warm)
        print(f"warm re-score (hash, read cache, MC, rank), median of {len(warm)}: {warm_s * 1000:8.1f} ms")
        learner = ActiveLearner(config, cache)
        learner.rank(model, texts)
        mem_s = statistics.median(timed(lambda: learner.rank(model, texts))[0] for _ in range(args.warm_repeats))
        print(f"warm re-score, embeddings already in memory:        {mem_s * 1000:8.1f} ms")

    plain_s, _ = timed(lambda: plain_pass(path, texts))
    print(f"plain deterministic encoder pass (fp32, file order): {plain_s:8.2f} s")
    ours_s, _ = timed(lambda: TextEncoder(config.encoder).encode(texts))
    print(f"our encoder pass (length-sorted, bf16 where native): {ours_s:8.2f} s")

    items = n if args.full_items <= 0 else min(args.full_items, n)
    full_part_s, _ = timed(lambda: full_mc(path, texts[:items], len(classes), args.mc_samples))
    full_s = full_part_s * n / items
    how = "measured" if items == n else f"measured on {items} texts, scaled x{n / items:.1f}"
    print(f"full-model MC dropout, T={args.mc_samples} ({how}): {full_s:8.1f} s")

    print("\nsummary")
    print(f"  warm speed-up vs full-model MC dropout: {full_s / warm_s:10.0f}x   (target >= 500x)")
    print(f"  cold / plain encoder pass:              {cold_s / plain_s:10.2f}x   (target <= 1.1x)")
    print(f"  cold / our encoder pass:                {cold_s / ours_s:10.2f}x   (overhead of cache + MC + rank)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
