"""When to stop labelling: stabilizing predictions, checked against the audit accuracy.

The rule (ours, after Bloodgood & Vijay-Shanker 2009, "A Method for Stopping Active Learning
Based on Stabilizing Predictions and the Need for User-Adjustable Stopping"):

1. **Stability.** Keep a fixed *stop set*, a random sample of the pool that needs no labels
   (:func:`stop_set`). After every retrain, compare the new model's predicted classes on it
   with the previous model's: Cohen's kappa (:func:`cohens_kappa`). A model whose predictions
   no longer change is learning little from the labels it gets.
2. **Audit plateau.** The audit items (:mod:`backend.al.audit`) are the unbiased accuracy.
   Split the most recent ``audit_window`` of them into an earlier and a recent half: the
   accuracy is *rising* when the recent half beats the earlier one with 95% confidence
   (Newcombe's interval for the difference, lower bound > 0).
3. The state (:func:`stopping_signal`):

   - **stop**: the last ``rounds`` kappas are all >= ``stop_kappa`` (0.99), there are at least
     ``min_audit_items`` audit items, and the audit accuracy is not rising;
   - **returns are diminishing**: the last ``rounds`` kappas are all >= ``diminishing_kappa``,
     or they pass ``stop_kappa`` but the audit is too small or still rising;
   - **keep labelling**: otherwise, and always before ``rounds`` kappas exist.

The audit sample is small by design (the exploration share, 10% of the labels), so it cannot
prove a plateau; it can only veto a stop while the accuracy visibly climbs, and it makes sure
a stop comes with a measured accuracy. Stability does the main work, as in the paper.

The thresholds assume one kappa per retrain at the service's cadence (10 labels) and a stop set
of 1,000 tasks or more: with 500, a kappa of 0.99 is 3 or 4 disagreements and the rule turns
erratic. Validated in ``docs/BENCHMARKS.md`` (section 4): on AG News it stops at 420-530 labels,
-0.3 to +2.0 points from the accuracy at 600; on TREC-6 and CLINC150, still climbing at 600, it
does not stop. Pure Python, no I/O.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Mapping, Sequence

from backend.al.audit import AuditEstimate, AuditItem, difference_interval, estimate

KEEP_LABELLING = "keep labelling"
DIMINISHING = "returns are diminishing"
STOP = "stop"


@dataclass(frozen=True)
class StoppingRule:
    """The thresholds of :func:`stopping_signal` (see the module docstring)."""

    stop_kappa: float = 0.99  # Bloodgood & Vijay-Shanker's threshold
    diminishing_kappa: float = 0.95
    rounds: int = 3  # consecutive kappas that must pass (the paper's window of three)
    min_audit_items: int = 20  # a stop needs a measured accuracy: at 85%, +-0.15 at 20 items
    audit_window: int = 40  # the most recent items, halved for the plateau test

    def __post_init__(self) -> None:
        if not -1 <= self.diminishing_kappa <= self.stop_kappa <= 1:
            raise ValueError(f"need -1 <= diminishing_kappa <= stop_kappa <= 1, got "
                             f"{self.diminishing_kappa} and {self.stop_kappa}")
        if self.rounds < 1 or self.min_audit_items < 0 or self.audit_window < 2:
            raise ValueError("need rounds >= 1, min_audit_items >= 0 and audit_window >= 2")


@dataclass(frozen=True)
class StoppingSignal:
    """The state and the numbers behind it.

    ``kappas``: the last ``rule.rounds`` kappas (oldest first); ``audit``: the estimate over
    all audit items; ``recent``: over the recent half of the window; ``gain``: the recent
    half's accuracy minus the earlier half's, with its 95% interval, as (gain, low, high), or
    None below two items a half; ``reason``: one sentence with those numbers.
    """

    state: str
    reason: str
    kappas: tuple[float, ...]
    audit: AuditEstimate
    recent: AuditEstimate
    gain: tuple[float, float, float] | None
    rule: StoppingRule = field(default_factory=StoppingRule)


def stop_set(ids: Iterable[int], size: int, seed: int = 0) -> list[int]:
    """A random sample of ``size`` task ids, fixed by (seed, id): the ids with the smallest hash.

    A task's membership depends only on its id, so the set stays put as the pool grows
    (a new task joins only if it hashes below the current members). Sorted by hash.
    """
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")

    def key(task_id: int) -> bytes:
        return hashlib.blake2b(f"{seed}:{task_id}".encode(), digest_size=8).digest()

    return sorted(set(ids), key=key)[:size]


def cohens_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two labellings of the same items: (p_o - p_e) / (1 - p_e), in [-1, 1].

    p_o is the share of items where they agree, p_e the agreement expected by chance from
    each one's class frequencies (Cohen 1960). When both give every item the same single
    class, p_e = 1 and they agree completely: 1.0.
    """
    if len(a) != len(b):
        raise ValueError(f"need two labellings of the same items, got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        raise ValueError("kappa needs at least one item")
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    count_a, count_b = Counter(a), Counter(b)
    expected = sum(count_a[c] * count_b[c] for c in count_a) / (n * n)
    if expected >= 1:
        return 1.0
    return (observed - expected) / (1 - expected)


def stability(previous: Mapping[int, Hashable], current: Mapping[int, Hashable]) -> float:
    """Kappa of two model versions' predictions {task id: class} on the stop-set tasks both have."""
    common = sorted(previous.keys() & current.keys())
    if not common:
        raise ValueError("the two versions share no stop-set task")
    return cohens_kappa([previous[i] for i in common], [current[i] for i in common])


def audit_gain(items: Sequence[AuditItem], window: int) -> tuple[float, float, float] | None:
    """Recent half minus earlier half of the last ``window`` items: (gain, low, high) or None."""
    last = list(items)[-window:]
    half = len(last) // 2
    if half < 2:
        return None
    earlier, recent = last[:len(last) - half], last[len(last) - half:]
    return difference_interval(sum(i.correct for i in earlier), len(earlier),
                               sum(i.correct for i in recent), len(recent))


def stopping_signal(kappas: Sequence[float], audit_items: Sequence[AuditItem],
                    rule: StoppingRule | None = None) -> StoppingSignal:
    """The state of a project: keep labelling, returns are diminishing, or stop.

    ``kappas``: one per retrain after the first, oldest first: :func:`stability` of each
    version against the one before. ``audit_items``: in the order they were labelled,
    oldest first. See the module docstring for the rule.
    """
    rule = rule or StoppingRule()
    last = tuple(kappas[-rule.rounds:])
    whole = estimate(audit_items)
    window = list(audit_items)[-rule.audit_window:]
    recent = estimate(window[len(window) - len(window) // 2:])
    gain = audit_gain(audit_items, rule.audit_window)
    state, reason = _decide(rule, last, whole, gain)
    return StoppingSignal(state, reason, last, whole, recent, gain, rule)


def _decide(rule: StoppingRule, last: tuple[float, ...], audit: AuditEstimate,
            gain: tuple[float, float, float] | None) -> tuple[str, str]:
    if len(last) < rule.rounds:
        return KEEP_LABELLING, f"{len(last)} of the {rule.rounds} rounds needed to judge stability so far"
    kappas = ", ".join(f"{k:.3f}" for k in last)
    rising = gain is not None and gain[1] > 0
    stable = min(last) >= rule.stop_kappa
    if stable and audit.items >= rule.min_audit_items and not rising:
        accuracy = f"{audit.accuracy:.1%} [{audit.low:.1%}, {audit.high:.1%}] over {audit.items} items"
        return STOP, (f"predictions stable (kappa {kappas} >= {rule.stop_kappa}) and audit accuracy "
                      f"{accuracy} not rising")
    if stable and rising:
        return DIMINISHING, (f"predictions stable (kappa {kappas}) but audit accuracy still rising "
                             f"({gain[0]:+.1%}, 95% interval [{gain[1]:+.1%}, {gain[2]:+.1%}])")
    if stable:
        return DIMINISHING, (f"predictions stable (kappa {kappas}) but only {audit.items} audit items, "
                             f"{rule.min_audit_items} needed to confirm")
    if min(last) >= rule.diminishing_kappa:
        return DIMINISHING, f"predictions nearly stable (kappa {kappas} >= {rule.diminishing_kappa})"
    return KEEP_LABELLING, f"predictions still changing (kappa {kappas}, stop at >= {rule.stop_kappa})"
