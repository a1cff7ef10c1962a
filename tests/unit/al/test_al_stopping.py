"""The stopping rule: Cohen's kappa, the stop set, and the three states with the numbers behind them."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.al.audit import AuditItem
from backend.al.stopping import (
    DIMINISHING,
    KEEP_LABELLING,
    STOP,
    StoppingRule,
    audit_gain,
    cohens_kappa,
    stability,
    stop_set,
    stopping_signal,
)


def test_cohens_kappa_known_values():
    # 50 items: 20 yes/yes, 15 no/no, 5 yes/no, 10 no/yes -> p_o 0.7, p_e 0.5, kappa 0.4
    a = ["y"] * 20 + ["n"] * 15 + ["y"] * 5 + ["n"] * 10
    b = ["y"] * 20 + ["n"] * 15 + ["n"] * 5 + ["y"] * 10
    assert cohens_kappa(a, b) == pytest.approx(0.4)
    assert cohens_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    assert cohens_kappa(["a"] * 5, ["a"] * 5) == 1.0  # p_e = 1: complete agreement


def test_cohens_kappa_refuses_bad_input():
    with pytest.raises(ValueError):
        cohens_kappa([], [])
    with pytest.raises(ValueError):
        cohens_kappa(["a"], ["a", "b"])


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("abcd")), min_size=1, max_size=60))
def test_kappa_is_symmetric_bounded_and_one_on_identical(pairs):
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    k = cohens_kappa(a, b)
    assert -1 - 1e-12 <= k <= 1 + 1e-12
    assert k == pytest.approx(cohens_kappa(b, a))
    assert cohens_kappa(a, a) == 1.0


def test_stability_uses_the_tasks_both_versions_scored():
    assert stability({1: "a", 2: "b", 3: "a"}, {2: "b", 3: "a", 4: "b"}) == 1.0
    with pytest.raises(ValueError):
        stability({1: "a"}, {2: "a"})


def test_stop_set_is_fixed_by_id_and_stays_put_as_the_pool_grows():
    first = stop_set(range(1000), 100, seed=3)
    assert len(first) == len(set(first)) == 100 and first == stop_set(reversed(range(1000)), 100, seed=3)
    grown = stop_set(range(1100), 100, seed=3)
    assert len(set(first) & set(grown)) >= 85  # only new ids hashing lower replace members
    assert stop_set(range(1000), 100, seed=4) != first
    assert stop_set(range(5), 10) and len(stop_set(range(5), 10)) == 5


def _audit(outcomes):
    return [AuditItem(i, "v", "a", "a" if ok else "b") for i, ok in enumerate(outcomes)]


FLAT = _audit([True, True, False, True, True] * 6)  # 30 items, 80%, no trend


def test_keep_labelling_until_enough_rounds_and_while_predictions_change():
    assert stopping_signal([0.999, 0.999], FLAT).state == KEEP_LABELLING
    signal = stopping_signal([0.9, 0.93, 0.91], FLAT)
    assert signal.state == KEEP_LABELLING and "0.910" in signal.reason
    assert stopping_signal([0.999, 0.999, 0.9], FLAT).state == KEEP_LABELLING  # all k rounds must pass


def test_stop_needs_stable_predictions_and_a_flat_audit():
    signal = stopping_signal([0.8, 0.991, 0.995, 0.999], FLAT)
    assert signal.state == STOP
    assert signal.kappas == (0.991, 0.995, 0.999)
    assert signal.audit.items == 30 and signal.audit.accuracy == pytest.approx(0.8)
    assert "80.0%" in signal.reason and signal.gain is not None


def test_returns_diminish_when_nearly_stable_or_the_audit_is_too_small_or_rising():
    assert stopping_signal([0.96, 0.97, 0.98], FLAT).state == DIMINISHING
    small = stopping_signal([0.995] * 3, FLAT[:5])
    assert small.state == DIMINISHING and "only 5 audit items" in small.reason
    rising = _audit([False] * 20 + [True] * 20)
    signal = stopping_signal([0.995] * 3, rising)
    assert signal.state == DIMINISHING and "still rising" in signal.reason
    assert signal.gain[0] == pytest.approx(1.0) and signal.gain[1] > 0


def test_no_audit_items_can_never_stop():
    assert stopping_signal([1.0] * 10, []).state == DIMINISHING


def test_audit_gain_halves_the_recent_window():
    assert audit_gain(_audit([True] * 3), window=40) is None  # fewer than two a half
    gain, low, high = audit_gain(_audit([False] * 100 + [True] * 10 + [False] * 10), window=20)
    assert gain == pytest.approx(-1.0) and low <= gain < high


def test_rule_validates_its_thresholds():
    with pytest.raises(ValueError):
        StoppingRule(stop_kappa=0.9, diminishing_kappa=0.95)
    with pytest.raises(ValueError):
        StoppingRule(rounds=0)
