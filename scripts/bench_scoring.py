"""Scoring speed: warm and cold head-mode re-scoring against full-model MC dropout.

    .venv/bin/python scripts/bench_scoring.py [--pool ../shared/data/agnews/pool.tsv] [--mc-samples 20]
    .venv/bin/python scripts/bench_scoring.py --warm-only [--cache-dir DIR] [--cache-rows 1000000]

Measures, in one run on this machine, for the whole pool:
- warm: ``learner.rank`` by a fresh learner (as in a new work-horse: nothing mapped yet)
  whose embeddings are on disk: first with no pool snapshot (rows looked up in the caches'
  segments, then written as a snapshot, :mod:`backend.al.snapshots`), then from the snapshot
  (text hashing, one memory map, MC, ranking with the defaults), then for the pool less 2% of
  its texts (a subset: one search and a gather); then the steps one by one;
- cold: the same on an empty cache, encoder load and encoding included;
- plain: one deterministic encoder pass over the pool, written the plain way
  (AutoModel in fp32, batches of 64 in file order, mean pooling), plus our own
  encoder's pass (length-sorted batches, bf16 where native), to show cold's overhead;
- full: BaaL-style MC dropout with T stochastic passes through the whole transformer
  (our ``full`` mode), timed on ``--full-items`` texts and scaled linearly to the pool
  (the work is linear in N); pass ``--full-items 0`` to run it on the whole pool.

``--warm-only`` skips the plain, our-encoder and full passes, and the cold pass too when
``--cache-dir`` already holds the pool's embeddings (a quick check of the warm path).
``--cache-rows N`` adds N random other rows to the cache first, to show that a warm lookup
does not grow with what else the cache holds (a 1M-task pool at 384 dims is 1.5 GB).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.al import lexical  # noqa: E402
from backend.al.datasets import load_tsv  # noqa: E402
from backend.al.embeddings import KEY, text_digests, write_segment  # noqa: E402
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


def median_times(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds (all threads) of fn; CPU time shows what load inflates."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def add_other_rows(learner: ActiveLearner, rows: int, dim: int, chunk: int = 65536) -> None:
    """Fill the cache with `rows` random rows under random keys, in one segment (bounded memory)."""
    rng = np.random.default_rng(0)
    keys = np.sort(np.frombuffer(rng.bytes(20 * rows), dtype=KEY))
    vectors = (rng.standard_normal((min(chunk, rows - at), dim), dtype=np.float32) for at in range(0, rows, chunk))
    write_segment(learner.cache.segments_dir, keys, vectors, rows, dim)


def warm_steps(config: EngineConfig, cache: Path, model, texts: list[str], repeats: int) -> float:
    """Print the warm re-score's total and its steps (medians); returns the total."""
    for old in ActiveLearner(config, cache).snapshots.dir.glob("*.snap"):
        old.unlink()
    first_s, first_cpu = median_times(lambda: ActiveLearner(config, cache).rank(model, texts), 1)
    print(f"first warm re-score, no pool snapshot (rows from the caches, snapshot written): "
          f"{first_s * 1000:8.1f} ms (CPU {first_cpu * 1000:.1f} ms)")
    warm_s, warm_cpu = median_times(lambda: ActiveLearner(config, cache).rank(model, texts), repeats)
    print(f"warm re-score (fresh learner: hash, map snapshot, MC, rank), median of {repeats}: "
          f"{warm_s * 1000:8.1f} ms (CPU {warm_cpu * 1000:.1f} ms)")
    fewer = [t for i, t in enumerate(texts) if i % 50]  # 2% of the pool labelled since
    sub_s, sub_cpu = median_times(lambda: ActiveLearner(config, cache).rank(model, fewer), repeats)
    print(f"warm re-score of the pool less 2% (a subset of the snapshot), median of {repeats}: "
          f"{sub_s * 1000:8.1f} ms (CPU {sub_cpu * 1000:.1f} ms)")
    learner = ActiveLearner(config, cache)
    learner.rank(model, texts)
    scored = learner.score(model, texts)
    steps = [
        ("hash the texts (SHA-1)", lambda: text_digests(texts)),
        ("embed, fresh learner (hash, map, look up, copy)", lambda: ActiveLearner(config, cache).embed(texts)),
        ("embed, segments already mapped", lambda: learner.embed(texts)),
        ("rows from the pool snapshot (hash, map)", lambda: ActiveLearner(config, cache).rows(texts, lexical.BITS)),
        ("MC probabilities (embed + MC + softmax)", lambda: learner.mc_probs(model, texts)),
        ("score (MC + acquisition)", lambda: learner.score(model, texts)),
        ("order (exploration, final order)", lambda: learner.order(scored)),
        ("rank, same learner", lambda: learner.rank(model, texts)),
    ]
    for name, fn in steps:
        wall, cpu = median_times(fn, repeats)
        print(f"  {name:50s} {wall * 1000:8.1f} ms (CPU {cpu * 1000:7.1f} ms)")
    return warm_s


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pool", default=str(ROOT.parent / "shared/data/agnews/pool.tsv"))
    p.add_argument("--mc-samples", type=int, default=20)
    p.add_argument("--encoder", default=EngineConfig.encoder, help="encoder name or folder (default: the packaged one)")
    p.add_argument("--mode", default="head", help="model kind scored (default head: the warm path this measures)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    p.add_argument("--labelled", type=int, default=200, help="labelled items the scored model is trained on")
    p.add_argument("--full-items", type=int, default=200, help="texts to time full MC on (0 = whole pool)")
    p.add_argument("--warm-repeats", type=int, default=5)
    p.add_argument("--warm-only", action="store_true", help="warm re-score only (cold too if the cache is empty)")
    p.add_argument("--cache-dir", type=Path, help="embedding cache to use and keep (default: a temporary one)")
    p.add_argument("--cache-rows", type=int, default=0, help="random other rows to add to the cache, then warm again")
    args = p.parse_args()
    if args.warm_repeats < 1 or args.cache_rows < 0 or args.threads < 0:
        p.error("--warm-repeats must be >= 1, --cache-rows and --threads >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    texts, labels = load_tsv(args.pool)
    classes = sorted(set(labels))
    config = EngineConfig(encoder=args.encoder, mode=args.mode, mc_samples=args.mc_samples)
    path = resolve_encoder(config.encoder)
    n = len(texts)
    print(f"pool: {n} texts from {args.pool}; mode {args.mode}; T = {args.mc_samples}; "
          f"torch threads = {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}")

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or Path(tmp) / "cache"
        filled = bool(ActiveLearner(config, cache).cache.lookup(text_digests(texts))[0].all())
        trainer = ActiveLearner(config, cache if filled else Path(tmp) / "train-cache")
        model = trainer.fit(texts[:args.labelled], labels[:args.labelled], classes)

        cold_s = None
        if filled:
            print(f"cold re-score: skipped, {cache} holds the pool already")
        else:
            cold_s, _ = timed(lambda: ActiveLearner(config, cache).rank(model, texts))
            print(f"cold re-score (load encoder, encode, cache, MC, rank): {cold_s:8.2f} s")
        warm_s = warm_steps(config, cache, model, texts, args.warm_repeats)
        if args.cache_rows:
            learner = ActiveLearner(config, cache)
            add_other_rows(learner, args.cache_rows, int(learner.embed(texts[:1]).shape[1]))
            print(f"with {args.cache_rows} other rows in the cache:")
            warm_steps(config, cache, model, texts, args.warm_repeats)
    if args.warm_only:
        return 0

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
    if cold_s is not None:
        print(f"  cold / plain encoder pass:              {cold_s / plain_s:10.2f}x   (target <= 1.1x)")
        print(f"  cold / our encoder pass:                {cold_s / ours_s:10.2f}x   (overhead of cache + MC + rank)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
