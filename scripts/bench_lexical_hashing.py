"""Hashing speed of the n-gram features: ``lexical.features`` against the gram-by-gram definition
(CRC-32 of every gram string, bucket sums in a dict), 10,001 AG News texts, one thread, median of 5.

    PYTHONPATH=. .venv/bin/python scripts/bench_lexical_hashing.py [--pool ../shared/data/agnews/pool.tsv]

A timing benchmark: run it while the machine is quiet.
"""

from __future__ import annotations

import argparse
import statistics
import time
import zlib

import torch

from backend.al import lexical
from backend.al.datasets import load_tsv


def gram_by_gram(texts: list[str], bits: int = lexical.BITS) -> list[dict[int, int]]:
    """Each text's signed bucket counts, one CRC-32 per gram string (the definition features() follows)."""
    out = []
    for text in texts:
        buckets: dict[int, int] = {}
        for gram in lexical.grams(text):
            h = zlib.crc32(gram.encode("utf-8"))
            buckets[h % 2 ** bits] = buckets.get(h % 2 ** bits, 0) + (-1 if h >= 2 ** 31 else 1)
        out.append(buckets)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pool", default="../shared/data/agnews/pool.tsv")
    args = p.parse_args()
    texts, _ = load_tsv(args.pool)
    torch.set_num_threads(1)
    for name, run in (("gram by gram", gram_by_gram), ("lexical.features", lexical.features)):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            run(texts)
            times.append(time.perf_counter() - start)
        print(f"{name}: median of 5 {statistics.median(times) * 1000:.0f} ms ({len(texts)} texts)")


if __name__ == "__main__":
    main()
