"""Data sets of other shapes than the three we tune on, derived from ../shared/data (issue 7: "these
defaults are checked on data you do not have: other class counts, other text lengths").

    .venv/bin/python scripts/make_shapes.py OUT_DIR [--seed 0]
    DATA_DIR=OUT_DIR scripts/bench_labels.sh runs/shapes "default random reference" binary rare long trec50 clinc30

Writes ``OUT_DIR/<name>/pool.tsv`` and ``test.tsv`` (text<TAB>label) for each shape, seeded and
deterministic:

- ``binary``: two confusable topics, AG News Business against Sci/Tech (every pool row of the two,
  2,000 test rows): two balanced classes.
- ``rare``: a rare class, AG News Sports (5%) against the three others merged as "Other" (4,000 pool
  and 4,000 test rows at that ratio): two classes, 1:19. Read its macro-F1 beside accuracy, which the
  majority class alone puts at 0.95.
- ``long``: long texts, four AG News texts of one class joined into one (2,400 pool and 800 test
  texts, 124 words on average against 31): past the encoder's 128 tokens, so it sees the first part.
- ``trec50``: TREC's 50 fine question classes (the pool and test files' full ``COARSE:fine`` tags):
  many classes, very imbalanced (from 4 to 962 pool questions a class; 42 of them in the test set).
- ``clinc30``: 30 of CLINC150's 150 intents, drawn by the seed (3,000 pool and 900 test rows): a
  class count between TREC-6's and CLINC150's.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.al.datasets import load_trec, load_tsv, sample_rows, write_tsv  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
Rows = tuple[list[str], list[str]]


def _select(rows: Rows, keep: set[str]) -> Rows:
    pairs = [(t, y) for t, y in zip(*rows, strict=True) if y in keep]
    return [t for t, _ in pairs], [y for _, y in pairs]


def binary(agnews: dict[str, Rows], seed: int) -> dict[str, Rows]:
    keep = {"Business", "Sci/Tech"}
    return {"pool": _select(agnews["pool"], keep), "test": sample_rows(*_select(agnews["test"], keep), 2000, seed)}


def _rare_split(rows: Rows, size: int, share: float, rng: random.Random) -> Rows:
    sports = [t for t, y in zip(*rows, strict=True) if y == "Sports"]
    other = [t for t, y in zip(*rows, strict=True) if y != "Sports"]
    n_rare = round(size * share)
    pairs = [(t, "Sports") for t in rng.sample(sports, n_rare)]
    pairs += [(t, "Other") for t in rng.sample(other, size - n_rare)]
    rng.shuffle(pairs)
    return [t for t, _ in pairs], [y for _, y in pairs]


def rare(agnews: dict[str, Rows], seed: int) -> dict[str, Rows]:
    rng = random.Random(seed)
    return {"pool": _rare_split(agnews["pool"], 4000, 0.05, rng), "test": _rare_split(agnews["test"], 4000, 0.05, rng)}


def _joined(rows: Rows, per_class: int, parts: int, rng: random.Random) -> Rows:
    by_class: dict[str, list[str]] = defaultdict(list)
    for t, y in zip(*rows, strict=True):
        by_class[y].append(t)
    pairs = []
    for label in sorted(by_class):
        texts = rng.sample(by_class[label], per_class * parts)
        pairs += [(" ".join(texts[i * parts:(i + 1) * parts]), label) for i in range(per_class)]
    rng.shuffle(pairs)
    return [t for t, _ in pairs], [y for _, y in pairs]


def long(agnews: dict[str, Rows], seed: int) -> dict[str, Rows]:
    rng = random.Random(seed)
    return {"pool": _joined(agnews["pool"], 600, 4, rng), "test": _joined(agnews["test"], 200, 4, rng)}


def trec50(seed: int) -> dict[str, Rows]:
    return {"pool": load_trec(DATA / "trec6" / "train.label", fine=True),
            "test": load_trec(DATA / "trec6" / "test.label", fine=True)}


def clinc30(seed: int) -> dict[str, Rows]:
    pool, test = load_tsv(DATA / "clinc150" / "pool.tsv"), load_tsv(DATA / "clinc150" / "test.tsv")
    keep = set(random.Random(seed).sample(sorted(set(pool[1])), 30))
    return {"pool": sample_rows(*_select(pool, keep), 3000, seed), "test": sample_rows(*_select(test, keep), 900, seed)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="output folder (one sub-folder per shape)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    agnews = {"pool": load_tsv(DATA / "agnews" / "pool.tsv"), "test": load_tsv(DATA / "agnews" / "test.tsv")}
    shapes = {"binary": binary(agnews, args.seed), "rare": rare(agnews, args.seed), "long": long(agnews, args.seed),
              "trec50": trec50(args.seed), "clinc30": clinc30(args.seed)}
    for name, files in shapes.items():
        for part, (texts, labels) in files.items():
            write_tsv(args.out / name / f"{part}.tsv", texts, labels)
        pool_labels, test_labels = files["pool"][1], files["test"][1]
        words = sum(len(t.split()) for t in files["pool"][0]) / len(files["pool"][0])
        smallest = min(map(pool_labels.count, set(pool_labels)))
        print(f"{name}: {len(pool_labels)} pool / {len(test_labels)} test rows, {len(set(pool_labels))} classes, "
              f"{words:.0f} words a text on average, smallest pool class {smallest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
