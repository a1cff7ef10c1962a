"""Simulate active learning on a labelled pool: the engine's proof, with the service's code.

    python -m backend.al.simulate --pool FILE --test FILE \\
        --strategy bald,entropy,margin,random,default --seed-size 20 --batch-size 20 \\
        --budget 500 --seeds 5 --out DIR

The pool's labels play the annotator. Every seed starts from the same random seed set
for every strategy; each round retrains (as the service does), evaluates on the test
file and labels the top ``--batch-size`` items of the strategy's ranking. ``default`` is
exactly the service's default ranking (``EngineConfig()``); a plain name (``margin``)
is that acquisition function alone, greedy, with no diversity or exploration. ``reference``
is the plain loop the engine must beat: frozen embeddings + logistic regression (scikit-learn's
defaults, ``MODEL_MODE=reference``) + margin, top-k. A variant overrides engine settings:
``margin/power_beta=1/exploration=0.1``, ``entropy/ambiguity=on``, ``default/mode=linear``.

``--cold-start`` picks the seed set: ``random`` (the default), or the top of the service's
cold-start order without a model: ``clusters`` (k-means representatives) or ``zero-shot``
(class coverage of the label names, the pool's class names; ``backend.al.zeroshot``).

``--label-noise P`` makes the simulated annotator flip a share P of its answers to another
class (uniformly, seeded: every strategy of a seed gets the same wrong answers on the same
items; the test set stays clean). ``--stopping`` follows the stopping rule
(``backend.al.stopping``) after every retrain: kappa of consecutive models on a fixed stop
set of ``--stop-set`` pool items, and the audit items (explored tasks' answers against the
ranking model's prediction); it writes DIR/stopping.csv and prints, per strategy and seed,
where the rule says stop and how far that is from the accuracy at the full budget.

Writes DIR/curves.csv (strategy,seed,labels,accuracy,macro_f1,ambiguous (the share of the
pool marked ambiguous, with ambiguity routing on), and with --stopping
kappa,audit_items,audit_correct,state,pool_accuracy) and DIR/curves.png, and prints, per
strategy, the labels needed to reach random's full-budget accuracy.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import torch

from backend.al.acquisition import STRATEGIES
from backend.al.audit import AuditItem, macro_f1
from backend.al.datasets import load_tsv
from backend.al.learner import ActiveLearner, EngineConfig, Model, Ranking, check_made
from backend.al.stopping import STOP, StoppingRule, cohens_kappa, stop_set, stopping_signal

PLAIN = {"power_beta": 0.0, "diversity_clusters": 0, "exploration": 0.0}
REFERENCE = "reference"  # the plain loop to beat: logistic regression (kinds.reference) + margin, top-k
_BOOLS = {"1": True, "true": True, "on": True, "yes": True, "0": False, "false": False, "off": False, "no": False}
COLUMNS = ["strategy", "seed", "labels", "accuracy", "macro_f1", "ambiguous"]
STOP_COLUMNS = ["kappa", "audit_items", "audit_correct", "state", "pool_accuracy"]


def _bool(raw: str) -> bool:
    if raw.lower() not in _BOOLS:
        raise ValueError(f"expected on/off, true/false, yes/no or 1/0, got {raw!r}")
    return _BOOLS[raw.lower()]


def strategy_config(spec: str, base: EngineConfig) -> EngineConfig:
    """EngineConfig for a strategy spec: 'default', a name, or 'name/key=value/...'."""
    name, *overrides = spec.split("/")
    if name == "default":
        config = base
    elif name == REFERENCE:
        config = dataclasses.replace(base, mode="reference", strategy="margin", **PLAIN)
    elif name in STRATEGIES:
        config = dataclasses.replace(base, strategy=name, **PLAIN)
    else:
        raise ValueError(f"unknown strategy {name!r}; choose from default, {REFERENCE}, {', '.join(STRATEGIES)}")
    return with_options(config, overrides, "strategy option", f" in {spec!r}")


def with_options(config, items: Sequence[str], option: str = "option", context: str = ""):
    """A dataclass ``config`` with the fields its ``key=value`` items name replaced, each value cast to
    the field's type (int, float, bool as on/off, true/false, ...; str otherwise). An item that names
    no field: ValueError "bad <option> <item><context>"."""
    types = {f.name: f.type for f in dataclasses.fields(config)}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or key not in types:
            raise ValueError(f"bad {option} {item!r}{context}")
        cast = {"int": int, "float": float, "bool": _bool}.get(str(types[key]), str)
        config = dataclasses.replace(config, **{key: cast(raw)})
    return config


def noisy_answers(labels: Sequence[str], classes: Sequence[str], rate: float, seed: int) -> list[str]:
    """The simulated annotator's answers: each label, with probability ``rate``, swapped for another
    class drawn uniformly. Seeded, so every strategy of a seed gets the same answers."""
    if not 0 <= rate < 1:
        raise ValueError(f"label noise must be in [0, 1), got {rate}")
    generator = torch.Generator().manual_seed(1_000_003 + seed)
    flip = (torch.rand(len(labels), generator=generator) < rate).tolist()
    shift = torch.randint(1, max(len(classes), 2), (len(labels),), generator=generator).tolist()
    index = {c: i for i, c in enumerate(classes)}
    return [classes[(index[y] + s) % len(classes)] if f else y for y, f, s in zip(labels, flip, shift, strict=True)]


class StoppingTrace:
    """The stopping rule's inputs over one simulated run: kappas on the stop set and audit items.

    ``pool`` holds the true labels, ``answers`` the annotator's (what the audit compares with).
    """

    def __init__(self, pool: tuple[list[str], list[str]], answers: Sequence[str], classes: Sequence[str],
                 size: int, seed: int, rule: StoppingRule | None = None) -> None:
        self.stop_texts = [pool[0][i] for i in stop_set(range(len(pool[0])), size, seed)]
        self.gold, self.answers, self.classes = pool[1], answers, classes
        self.rule = rule or StoppingRule()
        self.kappas: list[float] = []
        self.audit: list[AuditItem] = []
        self._previous: list[int] | None = None

    def after_fit(self, learner: ActiveLearner, model: Model) -> dict:
        """Kappa against the previous model and the rule's state: the round's extra columns."""
        current = learner.predict_proba(model, self.stop_texts).argmax(dim=1).tolist()
        if self._previous is not None:
            self.kappas.append(cohens_kappa(self._previous, current))
        self._previous = current
        signal = stopping_signal(self.kappas, self.audit, self.rule)
        return {"kappa": self.kappas[-1] if self.kappas else None, "audit_items": len(self.audit),
                "audit_correct": sum(item.correct for item in self.audit), "state": signal.state}

    def after_labelling(self, ranking: Ranking, take: list[int], ids: list[int], version: str) -> dict:
        """Audit the explored tasks among those just labelled against the ranking model's prediction.

        -> {"pool_accuracy"}: the ranking model's true accuracy on the unlabelled pool, which is
        what an audit item estimates (with clean answers), to check the audit against.
        """
        predicted = [self.classes[c] for c in ranking.probs.argmax(dim=1).tolist()]
        for i in take:
            if ranking.explored[i]:
                self.audit.append(AuditItem(ids[i], version, predicted[i], self.answers[ids[i]]))
        right = sum(p == self.gold[task] for p, task in zip(predicted, ids, strict=True))
        return {"pool_accuracy": right / len(ids)}


COLD_STARTS = ("random", "clusters", "zero-shot")


def seed_set(learner: ActiveLearner, texts: list[str], classes: list[str], seed: int, size: int,
             cold_start: str = "random") -> list[int]:
    """The first ``size`` items to label: a seeded random sample, or the top of the cold-start order."""
    if cold_start not in COLD_STARTS:
        raise ValueError(f"unknown cold start {cold_start!r}; choose from {', '.join(COLD_STARTS)}")
    if cold_start == "random":
        return torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))[:size].tolist()
    names = classes if cold_start == "zero-shot" else None
    return learner.rank(None, texts, seed=seed, label_names=names).order[:size].tolist()


def run_one(learner: ActiveLearner, pool: tuple[list[str], list[str]], test: tuple[list[str], list[str]],
            classes: list[str], seed: int, seed_size: int, batch_size: int, budget: int,
            answers: Sequence[str] | None = None, trace: StoppingTrace | None = None,
            cold_start: str = "random", into: list[dict] | None = None) -> list[dict]:
    """One learning curve: rows {labels, accuracy, macro_f1} after each retrain (and the trace's columns).

    ``answers`` are what the annotator says for each pool item (default: the pool's labels).
    ``into``: the list the rows are appended to as they come (a caller stopped mid-curve keeps them).
    """
    texts, labels = pool
    answers = labels if answers is None else answers
    test_gold = torch.tensor([classes.index(y) for y in test[1]])
    labelled = seed_set(learner, texts, classes, seed, seed_size, cold_start)
    unlabelled = sorted(set(range(len(texts))) - set(labelled))
    rows = [] if into is None else into
    model, round_, check = None, 0, None
    while True:
        model = learner.fit([texts[i] for i in labelled], [answers[i] for i in labelled], classes, previous=model,
                            pool=[texts[i] for i in unlabelled], check=check)
        pred = learner.predict_proba(model, test[0]).argmax(dim=1)
        rows.append({"labels": len(labelled), "accuracy": float((pred == test_gold).float().mean()),
                     "macro_f1": macro_f1(pred.tolist(), test_gold.tolist()),
                     **(trace.after_fit(learner, model) if trace else {})})
        if len(labelled) >= budget or not unlabelled:
            return rows
        # As the service does after a retrain: this round's labels decide the next fit's pseudo-labels (the
        # check the fit ran itself when it had none, else the check job's).
        check = None
        if learner.defers_check(model):
            check = check_made(model) or learner.check_propagation(
                [texts[i] for i in labelled], [answers[i] for i in labelled], classes,
                pool=[texts[i] for i in unlabelled])
        ranking = learner.rank(model, [texts[i] for i in unlabelled], ids=unlabelled, seed=seed * 1000 + round_)
        take = ranking.order[:min(batch_size, budget - len(labelled))].tolist()
        if learner.config.ambiguity:
            rows[-1]["ambiguous"] = float(ranking.ambiguous.float().mean())  # share of the pool set aside
        if trace:
            rows[-1].update(trace.after_labelling(ranking, take, unlabelled, f"round-{round_}"))
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


def stopping_points(rows: Sequence[dict], rule: StoppingRule | None = None) -> list[dict]:
    """Per strategy and seed: where the rule first says stop, against the full budget.

    Also where it first says "returns are diminishing" (or stop), and where stability alone
    (the last ``rule.rounds`` kappas >= ``rule.stop_kappa``, no audit) would have stopped.
    """
    rule = rule or StoppingRule()
    runs: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in rows:
        runs[(r["strategy"], int(r["seed"]))].append(r)
    out = []
    for (strategy, seed), curve in runs.items():
        curve = sorted(curve, key=lambda r: int(r["labels"]))
        kappas = [float(r["kappa"]) for r in curve if r.get("kappa") not in (None, "")]
        final = curve[-1]
        stop = next((r for r in curve if r["state"] == STOP), None)
        slowing = next((r for r in curve if r["state"] != "keep labelling"), None)
        stable = next((curve[i + 1] for i in range(rule.rounds - 1, len(kappas))
                       if min(kappas[i - rule.rounds + 1:i + 1]) >= rule.stop_kappa), None)
        out.append({"strategy": strategy, "seed": seed, "final_labels": int(final["labels"]),
                    "final_accuracy": float(final["accuracy"]),
                    **_point("stop", stop, final), **_point("diminishing", slowing, final),
                    **_point("stable", stable, final)})
    return out


def _point(name: str, row: dict | None, final: dict) -> dict:
    """Labels, test accuracy, gap to the final accuracy and audit accuracy at a stopping point."""
    if row is None:
        return {f"{name}_labels": None, f"{name}_accuracy": None, f"{name}_gap_points": None,
                f"{name}_audit": None}
    items = int(row["audit_items"])
    return {f"{name}_labels": int(row["labels"]), f"{name}_accuracy": float(row["accuracy"]),
            f"{name}_gap_points": 100 * (float(final["accuracy"]) - float(row["accuracy"])),
            f"{name}_audit": int(row["audit_correct"]) / items if items else None}


def print_stopping(points: list[dict], out=sys.stdout) -> None:
    """The --stopping report: one line per strategy and seed."""
    print("\nstopping rule (stop = kappa >= 0.99 for 3 rounds + audit; stable = kappa alone):", file=out)
    print(f"  {'strategy':<28} seed {'stop at':>8} {'acc there':>9} {'audit':>6} {'final':>6} {'gap pts':>7}"
          f" {'diminishing at':>14} {'stable at':>9}", file=out)
    for p in points:
        def fmt(v, spec):
            return "-" if v is None else format(v, spec)
        print(f"  {p['strategy']:<28} {p['seed']:>4} {fmt(p['stop_labels'], 'd'):>8} "
              f"{fmt(p['stop_accuracy'], '.4f'):>9} {fmt(p['stop_audit'], '.3f'):>6} {p['final_accuracy']:.4f} "
              f"{fmt(p['stop_gap_points'], '+.2f'):>7} {fmt(p['diminishing_labels'], 'd'):>14} "
              f"{fmt(p['stable_labels'], 'd'):>9}", file=out)


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


def write_csv(rows: Sequence[dict], path: Path, columns: Sequence[str] = COLUMNS) -> None:
    """Rows as CSV with the given columns; floats to 4 decimals, None as empty."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _cell(r.get(k)) for k in columns})


def _cell(value):
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else value


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
                   help="comma list: default, reference, " + ", ".join(STRATEGIES) + ", or name/key=value variants")
    p.add_argument("--seed-size", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--budget", type=int, default=500)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds run are first-seed .. first-seed + seeds - 1 (more seeds for a run made before)")
    p.add_argument("--out", required=True, help="output folder for curves.csv and curves.png")
    p.add_argument("--encoder", default=EngineConfig.encoder, help="Hugging Face name or local path")
    p.add_argument("--mc-samples", type=int, default=EngineConfig.mc_samples)
    p.add_argument("--cache-dir", default="data/embeddings", help="embedding cache folder (shared with the service)")
    p.add_argument("--limit-pool", type=int, default=0, help="use only the first N pool rows (0 = all)")
    p.add_argument("--limit-test", type=int, default=0, help="use only the first N test rows (0 = all)")
    p.add_argument("--cold-start", choices=COLD_STARTS, default="random",
                   help="how the seed set is chosen: at random, or by the cold-start order (clusters, zero-shot)")
    p.add_argument("--label-noise", type=float, default=0.0,
                   help="share of the simulated annotator's answers flipped to another class (seeded)")
    p.add_argument("--stopping", action="store_true",
                   help="follow the stopping rule every round; write stopping.csv and print where it stops")
    p.add_argument("--stop-set", type=int, default=1000,
                   help="pool items in the stopping rule's stop set (larger = less noisy kappa)")
    args = p.parse_args(argv)
    if not 0 <= args.label_noise < 1:
        p.error("--label-noise must be in [0, 1)")
    if args.stop_set < 1:
        p.error("--stop-set must be >= 1")
    for name in ("seed_size", "batch_size", "budget", "seeds", "mc_samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.budget < args.seed_size:
        p.error("--budget must be >= --seed-size")
    return args


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """The CLI. A run stopped (SIGTERM, Ctrl-C) writes the rows measured so far to curves.csv and exits 130."""
    args = parse_args(argv)
    try:
        pool = load_tsv(args.pool)
        test = load_tsv(args.test)
        base = EngineConfig(encoder=args.encoder, mc_samples=args.mc_samples,
                            cold_start="zero-shot" if args.cold_start == "zero-shot" else "clusters")
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
    runs = [(spec, seed) for spec in specs for seed in range(args.first_seed, args.first_seed + args.seeds)]
    columns = COLUMNS + STOP_COLUMNS if args.stopping else COLUMNS
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `timeout` and a stopped worker: keep what was measured
    try:
        for done, (spec, seed) in enumerate(runs, 1):
            t0, curve = time.time(), []
            learner = ActiveLearner(configs[spec], cache_dir=Path(args.cache_dir))
            answers = noisy_answers(pool[1], classes, args.label_noise, seed) if args.label_noise else pool[1]
            trace = StoppingTrace(pool, answers, classes, args.stop_set, seed) if args.stopping else None
            try:
                run_one(learner, pool, test, classes, seed, args.seed_size, args.batch_size, args.budget,
                        answers, trace, args.cold_start, into=curve)
            finally:
                rows += [{"strategy": spec, "seed": seed, **r} for r in curve]
            eta = (time.time() - start) / done * (len(runs) - done)
            print(f"[{done}/{len(runs)}] {spec} seed {seed}: accuracy {curve[-1]['accuracy']:.4f} at "
                  f"{curve[-1]['labels']} labels ({time.time() - t0:.1f}s, eta {eta:.0f}s)", flush=True)
    except KeyboardInterrupt:
        write_csv(rows, out / "curves.csv", columns)
        last = f"{rows[-1]['strategy']} seed {rows[-1]['seed']} at {rows[-1]['labels']} labels" if rows else "nothing"
        print(f"stopped: wrote the {len(rows)} rows measured so far (last: {last}) to {out / 'curves.csv'}",
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)

    write_csv(rows, out / "curves.csv", columns)
    noise = f", {args.label_noise:.0%} label noise" if args.label_noise else ""
    plot(rows, out / "curves.png", f"{Path(args.pool).parent.name or 'pool'}: {len(pool[0])} pool, "
         f"{len(test[0])} test, {args.seeds} seeds{noise}")
    print(f"wrote {out / 'curves.csv'} and {out / 'curves.png'}")
    if "random" in configs:
        print_summary(summarize(rows, args.seed_size), args.budget)
    if args.stopping:
        points = stopping_points(rows)
        write_csv(points, out / "stopping.csv", list(points[0]))
        print_stopping(points)
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
