"""Merge simulation runs' curves.csv files and print the labels-saved summary against one baseline.

    python scripts/summarize_curves.py RUN1/curves.csv RUN2/curves.csv ... [--baseline random]
        [--seed-size 20] [--at 100] [--out merged.csv]

For runs of the same pool, test set, seed set and batch size that were split across processes
(one strategy each, say): per strategy, the labels needed to reach the baseline's final mean
accuracy, the ratio (the baseline's budget / those labels: what ``backend.al.simulate`` prints),
mean accuracy at ``--at`` labels, the final accuracy, the worst gap below the baseline after the
seed set, and the seeds averaged.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.al.simulate import COLUMNS, mean_curves, summarize, write_csv  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("curves", nargs="+", help="curves.csv files")
    parser.add_argument("--baseline", default="random", help="the strategy whose final accuracy is the target")
    parser.add_argument("--seed-size", type=int, default=20)
    parser.add_argument("--at", type=int, default=100, help="also print mean accuracy at this many labels")
    parser.add_argument("--out", help="write the merged rows here")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    for path in args.curves:
        with open(path, newline="") as f:
            rows += list(csv.DictReader(f))
    try:
        summary = summarize(rows, args.seed_size, args.baseline)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    curves = mean_curves(rows)
    seeds: dict[str, set] = {}
    for r in rows:
        seeds.setdefault(r["strategy"], set()).add(r["seed"])
    print(f"target: {args.baseline}'s accuracy at {max(curves[args.baseline])} labels = {summary[0]['target']:.4f}")
    print(f"| strategy | seeds | acc@{args.at} | final acc | labels to target | ratio | worst gap to "
          f"{args.baseline} (pts) |")
    print("|---|---|---|---|---|---|---|")
    for s in sorted(summary, key=lambda s: -(s["ratio"] or 0)):
        at = curves[s["strategy"]].get(args.at)
        ratio = f"{s['ratio']:.2f}" if s["ratio"] else "not reached"
        print(f"| {s['strategy']} | {len(seeds[s['strategy']])} | {'-' if at is None else f'{at:.4f}'} | "
              f"{s['final_accuracy']:.4f} | {s['labels_to_target'] or '-'} | {ratio} | "
              f"{s['worst_gap_points']:+.2f} |")
    if args.out:
        write_csv([{k: (float(v) if k in ("accuracy", "macro_f1") and v != "" else v) for k, v in r.items()}
                   for r in rows], Path(args.out), COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
