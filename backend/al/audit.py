"""Unbiased live accuracy from the exploration share of the ranking.

The exploration share of every ranking (``Ranking.explored``) is a uniformly random sample of
the pool, so when annotators label one of those tasks, the label against the prediction that
the live model made when it ranked the task is a fair test of that model. Actively chosen
tasks are not (they are the hard ones) and must be left out.

An :class:`AuditItem` is one such comparison; :func:`audit_report` turns them into accuracy
with a 95% Wilson score interval (Wilson 1927), per model version and overall, and macro-F1
once there are enough items to make it more than noise (:data:`F1_MIN_ITEMS`,
:data:`F1_MIN_PER_CLASS`).

The estimate is agreement with the annotators: where they are wrong, so is the audit (the
simulation's ``--label-noise`` shows by how much). Pure Python: no torch, no I/O, so the web
process's status page can import it cheaply.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Hashable, Sequence

Z95 = 1.959963984540054
"""The normal quantile of a two-sided 95% interval."""

F1_MIN_ITEMS = 50
F1_MIN_PER_CLASS = 5
"""Macro-F1 is reported from 50 audit items and 5 per class seen in the labels, on average.

Below that most classes have one or two items, and a class's F1 jumps between 0 and 1 with
each item, so the average says more about the sample than the model."""


@dataclass(frozen=True)
class AuditItem:
    """One audit comparison: an explored task's label vs the live model's prediction at ranking time.

    ``version`` is the model version that ranked the task (whose prediction was kept);
    ``predicted`` and ``label`` are class names (for multi-label, one canonical form
    each, such as a sorted tuple: the audit counts exact matches).
    """

    task_id: int
    version: str
    predicted: Hashable
    label: Hashable

    @property
    def correct(self) -> bool:
        return self.predicted == self.label


@dataclass(frozen=True)
class AuditEstimate:
    """Accuracy of a set of audit items: ``accuracy`` (None without items) in [low, high] (95%
    Wilson interval; (0, 1) without items), ``items`` and ``correct`` counts, ``macro_f1``
    (None below the F1 thresholds)."""

    items: int
    correct: int
    accuracy: float | None
    low: float
    high: float
    macro_f1: float | None


@dataclass(frozen=True)
class AuditReport:
    """The audit of a project: ``overall`` (all items) and ``versions`` (per model version, in
    the order the versions first appear in the items)."""

    overall: AuditEstimate
    versions: dict[str, AuditEstimate]


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``correct / n``; (0, 1) when n = 0.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or n
    successes (Wilson 1927; recommended by Brown, Cai & DasGupta 2001 for small n).
    """
    if n < 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 and n successes the exact bound is 0 or 1; keep it so despite rounding.
    return (0.0 if correct == 0 else centre - half), (1.0 if correct == n else centre + half)


def difference_interval(correct_a: int, n_a: int, correct_b: int, n_b: int,
                        z: float = Z95) -> tuple[float, float, float]:
    """Difference of two independent proportions, b - a, with Newcombe's hybrid score interval.

    -> (difference, low, high). Newcombe 1998, "Interval estimation for the difference between
    independent proportions", method 10: built from each proportion's Wilson interval, so it
    behaves at small n and at 0 or n successes. Both n must be >= 1.
    """
    if n_a < 1 or n_b < 1:
        raise ValueError(f"need at least one item on each side, got {n_a} and {n_b}")
    pa, pb = correct_a / n_a, correct_b / n_b
    la, ua = wilson_interval(correct_a, n_a, z)
    lb, ub = wilson_interval(correct_b, n_b, z)
    diff = pb - pa
    low = diff - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2)
    high = diff + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2)
    return diff, low, high


def macro_f1(predicted: Sequence[Hashable], gold: Sequence[Hashable]) -> float:
    """Macro-averaged F1 over the classes present in gold or predicted; 0.0 for no items."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions for {len(gold)} labels")
    hits = Counter(p for p, g in zip(predicted, gold, strict=True) if p == g)
    said, truth = Counter(predicted), Counter(gold)
    classes = set(said) | set(truth)
    if not classes:
        return 0.0
    # F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (predicted as c + labelled c)
    return sum(2 * hits[c] / (said[c] + truth[c]) for c in classes) / len(classes)


def estimate(items: Sequence[AuditItem]) -> AuditEstimate:
    """Accuracy with its 95% Wilson interval, and macro-F1 when there are enough items."""
    n = len(items)
    correct = sum(item.correct for item in items)
    low, high = wilson_interval(correct, n)
    labels = [item.label for item in items]
    f1_ready = n >= F1_MIN_ITEMS and n >= F1_MIN_PER_CLASS * len(set(labels))
    f1 = macro_f1([item.predicted for item in items], labels) if f1_ready else None
    return AuditEstimate(n, correct, correct / n if n else None, low, high, f1)


def audit_report(items: Sequence[AuditItem]) -> AuditReport:
    """Per model version and overall estimates of a project's audit items.

    Pass only items whose task was in the exploration share of the ranking that the
    version published; actively chosen tasks would bias the estimate downwards.
    """
    by_version: dict[str, list[AuditItem]] = {}
    for item in items:
        by_version.setdefault(item.version, []).append(item)
    return AuditReport(estimate(items), {v: estimate(group) for v, group in by_version.items()})
