"""Compare two simulation runs' curves.csv: mean accuracy per strategy and label count, with noise.

    python scripts/compare_curves.py BEFORE.csv AFTER.csv [--every 40]

For each strategy and every ``--every`` labels: the mean accuracy over seeds before and after,
the difference, and two standard errors of that difference (from the seed-to-seed spread), so a
change can be read against the noise of the runs themselves.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict


def load(path: str) -> dict[str, dict[int, list[float]]]:
    """{strategy: {labels: [accuracy per seed]}} from a simulation's curves.csv."""
    curves: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            curves[row["strategy"]][int(row["labels"])].append(float(row["accuracy"]))
    return curves


def two_standard_errors(a: list[float], b: list[float]) -> float:
    """2 s.e. of the difference of two means (0 with fewer than two seeds)."""
    if len(a) < 2 or len(b) < 2:
        return 0.0
    return 2 * (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--every", type=int, default=40, help="print every N labels (and the last)")
    args = parser.parse_args()
    before, after = load(args.before), load(args.after)
    for strategy in before:
        counts = sorted(set(before[strategy]) & set(after.get(strategy, {})))
        print(strategy)
        for n in counts:
            if n % args.every and n != counts[-1]:
                continue
            b, a = before[strategy][n], after[strategy][n]
            mb, ma = statistics.mean(b), statistics.mean(a)
            print(f"  {n:5d} labels: before {mb:.4f}  after {ma:.4f}  diff {ma - mb:+.4f}  "
                  f"(2 s.e. {two_standard_errors(b, a):.4f})")
        area_b = statistics.mean(statistics.mean(before[strategy][n]) for n in counts)
        area_a = statistics.mean(statistics.mean(after[strategy][n]) for n in counts)
        print(f"  mean over all label counts: before {area_b:.4f}  after {area_a:.4f}")


if __name__ == "__main__":
    main()
