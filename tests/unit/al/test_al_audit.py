"""Audit accuracy: Wilson and Newcombe intervals pinned to published values, edge cases, invariants."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.al.audit import (
    F1_MIN_ITEMS,
    AuditItem,
    audit_report,
    difference_interval,
    estimate,
    macro_f1,
    wilson_interval,
)


@pytest.mark.parametrize(("correct", "n", "low", "high"), [
    # Newcombe 1998, "Two-sided confidence intervals for the single proportion", method 3.
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (10, 10, 0.7225, 1.0),
    (8, 10, 0.4902, 0.9433),
])
def test_wilson_interval_known_values(correct, n, low, high):
    assert wilson_interval(correct, n) == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no items: nothing known
    assert wilson_interval(0, 7)[0] == 0.0 and wilson_interval(7, 7)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(-1, 2)


@given(st.integers(0, 500), st.integers(0, 500))
def test_wilson_interval_holds_the_proportion_and_narrows_with_n(a, b):
    correct, n = min(a, b), max(a, b)
    low, high = wilson_interval(correct, n)
    assert 0 <= low <= high <= 1
    if n:
        assert low <= correct / n <= high
        low4, high4 = wilson_interval(4 * correct, 4 * n)
        assert high4 - low4 < high - low


@pytest.mark.parametrize(("a", "b", "expected"), [
    # Newcombe 1998, "Interval estimation for the difference between independent proportions", method 10.
    ((48, 80), (56, 70), (0.2, 0.0524, 0.3339)),
    ((5, 56), (9, 48), (0.0982, -0.0359, 0.2395)),
])
def test_difference_interval_known_values(a, b, expected):
    assert difference_interval(*a, *b) == pytest.approx(expected, abs=5e-5)


def test_difference_interval_needs_items_on_both_sides():
    with pytest.raises(ValueError):
        difference_interval(0, 0, 1, 2)


def _items(pairs, version="v1"):
    return [AuditItem(i, version, p, y) for i, (p, y) in enumerate(pairs)]


def test_estimate_without_items():
    e = estimate([])
    assert (e.items, e.correct, e.accuracy, e.low, e.high, e.macro_f1) == (0, 0, None, 0.0, 1.0, None)


def test_estimate_all_correct_and_none_correct():
    right = estimate(_items([("a", "a")] * 12))
    assert right.accuracy == 1.0 and right.high == 1.0 and 0.7 < right.low < 0.8
    wrong = estimate(_items([("a", "b")] * 12))
    assert wrong.accuracy == 0.0 and wrong.low == 0.0 and 0.2 < wrong.high < 0.3


def test_macro_f1_appears_only_with_enough_items_per_class():
    few = estimate(_items([("a", "a"), ("b", "b")] * (F1_MIN_ITEMS // 2 - 1)))
    assert few.macro_f1 is None
    enough = estimate(_items([("a", "a"), ("b", "a")] * (F1_MIN_ITEMS // 2)))
    # class a: tp 25, 50 labelled, 25 predicted -> 2/3; class b: never right -> 0
    assert enough.macro_f1 == pytest.approx(1 / 3)
    many_classes = estimate(_items([(c, c) for c in range(20)] * 3))  # 60 items, 3 per class
    assert many_classes.macro_f1 is None


def test_macro_f1_known_value_and_empty():
    assert macro_f1(["a", "a", "b", "c"], ["a", "b", "b", "c"]) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert macro_f1([], []) == 0.0
    with pytest.raises(ValueError):
        macro_f1(["a"], [])


def test_report_per_version_and_overall():
    items = _items([("a", "a"), ("a", "b")], "v1") + _items([("b", "b")] * 3, "v2")
    report = audit_report(items)
    assert list(report.versions) == ["v1", "v2"]
    assert (report.versions["v1"].items, report.versions["v1"].accuracy) == (2, 0.5)
    assert (report.versions["v2"].items, report.versions["v2"].accuracy) == (3, 1.0)
    assert (report.overall.items, report.overall.correct) == (5, 4)
    assert audit_report([]).versions == {} and audit_report([]).overall.items == 0


@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("abc"), st.sampled_from(["v1", "v2", "v3"]))))
def test_versions_add_up_to_the_overall_estimate(rows):
    report = audit_report([AuditItem(i, v, p, y) for i, (p, y, v) in enumerate(rows)])
    assert sum(e.items for e in report.versions.values()) == report.overall.items == len(rows)
    assert sum(e.correct for e in report.versions.values()) == report.overall.correct
    for e in [report.overall, *report.versions.values()]:
        assert e.accuracy is None or e.low <= e.accuracy <= e.high
