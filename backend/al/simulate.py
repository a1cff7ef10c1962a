"""Simulate active learning on a labelled pool: the engine's proof, with the service's code.

    python -m backend.al.simulate --pool FILE --test FILE \\
        --strategy bald,entropy,margin,random,default --seed-size 20 --batch-size 20 \\
        --budget 500 --seeds 5 --out DIR

The pool's labels play the annotator. Every seed starts from the same random seed set
for every strategy; each round retrains (as the service does), evaluates on the test
file and labels the top ``--batch-size`` items of the strategy's ranking. ``default`` is
exactly the service's default ranking (``EngineConfig()``); a plain name (``margin``)
is that acquisition function alone, greedy, with no diversity or exploration. A
variant overrides engine settings: ``margin/power_beta=1/exploration=0.1``.

Writes DIR/curves.csv (strategy,seed,labels,accuracy,macro_f1) and DIR/curves.png,
and prints, per strategy, the labels needed to reach random's full-budget accuracy.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import torch

from backend.al.acquisition import STRATEGIES
from backend.al.datasets import load_tsv
from backend.al.learner import ActiveLearner, EngineConfig

PLAIN = {"power_beta": 0.0, "diversity_clusters": 0, "exploration": 0.0}


def strategy_config(spec: str, base: EngineConfig) -> EngineConfig:
    """EngineConfig for a strategy spec: 'default', a name, or 'name/key=value/...'."""
    name, *overrides = spec.split("/")
    if name == "default":
        config = base
    elif name in STRATEGIES:
        config = dataclasses.replace(base, strategy=name, **PLAIN)
    else:
        raise ValueError(f"unknown strategy {name!r}; choose from default, {', '.join(STRATEGIES)}")
    types = {f.name: f.type for f in dataclasses.fields(EngineConfig)}
    for item in overrides:
        key, eq, raw = item.partition("=")
        if not eq or key not in types:
            raise ValueError(f"bad strategy option {item!r} in {spec!r}")
        cast = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true")}.get(str(types[key]), str)
        config = dataclasses.replace(config, **{key: cast(raw)})
    return config


def macro_f1(pred: torch.Tensor, gold: torch.Tensor, num_classes: int) -> float:
    """Macro-averaged F1 over the classes present in gold or pred. (N,), (N,) -> float."""
    scores = []
    for c in range(num_classes):
        tp = int(((pred == c) & (gold == c)).sum())
        fp = int(((pred == c) & (gold != c)).sum())
        fn = int(((pred != c) & (gold == c)).sum())
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


def run_one(learner: ActiveLearner, pool: tuple[list[str], list[str]], test: tuple[list[str], list[str]],
            classes: list[str], seed: int, seed_size: int, batch_size: int, budget: int) -> list[dict]:
    """One learning curve: rows {labels, accuracy, macro_f1} after each retrain."""
    texts, labels = pool
    test_gold = torch.tensor([classes.index(y) for y in test[1]])
    generator = torch.Generator().manual_seed(seed)
    labelled = torch.randperm(len(texts), generator=generator)[:seed_size].tolist()
    unlabelled = sorted(set(range(len(texts))) - set(labelled))
    rows, model, round_ = [], None, 0
    while True:
        model = learner.fit([texts[i] for i in labelled], [labels[i] for i in labelled], classes, previous=model)
        pred = learner.predict_proba(model, test[0]).argmax(dim=1)
        rows.append({"labels": len(labelled), "accuracy": float((pred == test_gold).float().mean()),
                     "macro_f1": macro_f1(pred, test_gold, len(classes))})
        if len(labelled) >= budget or not unlabelled:
            return rows
        ranking = learner.rank(model, [texts[i] for i in unlabelled], ids=unlabelled, seed=seed * 1000 + round_)
        take = ranking.order[:min(batch_size, budget - len(labelled))].tolist()
        chosen = {unlabelled[i] for i in take}
        labelled += [unlabelled[i] for i in take]
        unlabelled = [i for i in unlabelled if i not in chosen]
        round_ += 1


def mean_curves(rows: Sequence[dict], metric: str = "accuracy") -> dict[str, dict[int, float]]:
    """{strategy: {labels: mean metric over seeds}}."""
    acc: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        acc[r["strategy"]][int(r["labels"])].append(float(r[metric]))
    return {s: {n: sum(v) / len(v) for n, v in sorted(c.items())} for s, c in acc.items()}


def summarize(rows: Sequence[dict], seed_size: int, baseline: str = "random") -> list[dict]:
    """Per strategy: labels to reach the baseline's final mean accuracy, ratio, worst gap after the seed set."""
    curves = mean_curves(rows)
    if baseline not in curves:
        raise ValueError(f"the summary needs the {baseline!r} strategy in the run")
    base = curves[baseline]
    budget = max(base)
    target = base[budget]
    out = []
    for strategy, curve in curves.items():
        reached = next((n for n, a in curve.items() if a >= target), None)
        gaps = [base[n] - a for n, a in curve.items() if n > seed_size and n in base]
        out.append({"strategy": strategy, "final_accuracy": curve[max(curve)], "target": target,
                    "labels_to_target": reached, "ratio": budget / reached if reached else None,
                    "worst_gap_points": 100 * max(gaps) if gaps else 0.0})
    return out


def plot(rows: Sequence[dict], path: Path, title: str) -> None:
    """Mean accuracy per strategy with a min-max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        per[r["strategy"]][int(r["labels"])].append(float(r["accuracy"]))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for strategy, curve in per.items():
        xs = sorted(curve)
        mean = [sum(curve[x]) / len(curve[x]) for x in xs]
        ax.plot(xs, mean, label=strategy, linewidth=1.6)
        ax.fill_between(xs, [min(curve[x]) for x in xs], [max(curve[x]) for x in xs], alpha=0.15)
    ax.set_xlabel("labelled items")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_csv(rows: Sequence[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["strategy", "seed", "labels", "accuracy", "macro_f1"])
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]) for k in writer.fieldnames})


def print_summary(summary: list[dict], budget: int, out=sys.stdout) -> None:
    print(f"\nlabels to reach random's accuracy at {budget} labels ({summary[0]['target']:.4f}):", file=out)
    for s in summary:
        reached = s["labels_to_target"]
        ratio = f"{s['ratio']:.2f}x" if s["ratio"] else "not reached"
        print(f"  {s['strategy']:<40} final {s['final_accuracy']:.4f}  labels {reached or '-':>5}  "
              f"ratio {ratio:>11}  worst gap to random {s['worst_gap_points']:+.2f} pts", file=out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m backend.al.simulate", description=__doc__.split("\n")[0])
    p.add_argument("--pool", required=True, help="text<TAB>label TSV: the pool the simulated annotator labels")
    p.add_argument("--test", required=True, help="text<TAB>label TSV: held-out evaluation set")
    p.add_argument("--strategy", default="margin,random,default",
                   help="comma list: default, " + ", ".join(STRATEGIES) + ", or name/key=value variants")
    p.add_argument("--seed-size", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--budget", type=int, default=500)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", required=True, help="output folder for curves.csv and curves.png")
    p.add_argument("--encoder", default=EngineConfig.encoder, help="Hugging Face name or local path")
    p.add_argument("--mc-samples", type=int, default=EngineConfig.mc_samples)
    p.add_argument("--cache-dir", default="data/embeddings", help="embedding cache folder (shared with the service)")
    p.add_argument("--limit-pool", type=int, default=0, help="use only the first N pool rows (0 = all)")
    p.add_argument("--limit-test", type=int, default=0, help="use only the first N test rows (0 = all)")
    args = p.parse_args(argv)
    for name in ("seed_size", "batch_size", "budget", "seeds", "mc_samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.budget < args.seed_size:
        p.error("--budget must be >= --seed-size")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        pool = load_tsv(args.pool)
        test = load_tsv(args.test)
        base = EngineConfig(encoder=args.encoder, mc_samples=args.mc_samples)
        specs = [s.strip() for s in args.strategy.split(",") if s.strip()]
        configs = {spec: strategy_config(spec, base) for spec in specs}
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.limit_pool:
        pool = (pool[0][:args.limit_pool], pool[1][:args.limit_pool])
    if args.limit_test:
        test = (test[0][:args.limit_test], test[1][:args.limit_test])
    classes = sorted(set(pool[1]) | set(test[1]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    start = time.time()
    embedder = ActiveLearner(base, cache_dir=Path(args.cache_dir))
    print(f"embedding {len(pool[0])} pool + {len(test[0])} test texts with {args.encoder} (cached after the first run)")
    embedder.embed(pool[0] + test[0], progress=_bar("embed"))
    print(f"  done in {time.time() - start:.1f}s")

    rows: list[dict] = []
    runs = [(spec, seed) for spec in specs for seed in range(args.seeds)]
    for done, (spec, seed) in enumerate(runs, 1):
        t0 = time.time()
        learner = ActiveLearner(configs[spec], cache_dir=Path(args.cache_dir))
        curve = run_one(learner, pool, test, classes, seed, args.seed_size, args.batch_size, args.budget)
        rows += [{"strategy": spec, "seed": seed, **r} for r in curve]
        eta = (time.time() - start) / done * (len(runs) - done)
        print(f"[{done}/{len(runs)}] {spec} seed {seed}: accuracy {curve[-1]['accuracy']:.4f} at "
              f"{curve[-1]['labels']} labels ({time.time() - t0:.1f}s, eta {eta:.0f}s)", flush=True)

    write_csv(rows, out / "curves.csv")
    plot(rows, out / "curves.png", f"{Path(args.pool).parent.name or 'pool'}: {len(pool[0])} pool, "
         f"{len(test[0])} test, {args.seeds} seeds")
    print(f"wrote {out / 'curves.csv'} and {out / 'curves.png'}")
    if "random" in configs:
        print_summary(summarize(rows, args.seed_size), args.budget)
    return 0


def _bar(label: str):
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.time()
        if now - last[0] > 2 or done == total:
            last[0] = now
            print(f"  {label}: {done}/{total}", flush=True)

    return progress


if __name__ == "__main__":
    sys.exit(main())
