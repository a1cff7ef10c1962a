"""Acquisition functions: invariants (hypothesis), pinned hand-computed values, input checks."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.al import acquisition as acq

LOG2 = math.log(2)


@st.composite
def mc_probs(draw, multilabel=False):
    """Random (N, T, C) probabilities from random logits, sometimes very peaked."""
    n = draw(st.integers(1, 6))
    t = draw(st.integers(1, 8))
    c = draw(st.integers(1 if multilabel else 2, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 30.0]))
    logits = torch.randn(n, t, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)


@settings(max_examples=200, deadline=None)
@given(mc_probs())
def test_bald_between_zero_and_entropy_and_log_c(probs):
    c = probs.shape[-1]
    b, h = acq.bald(probs), acq.predictive_entropy(probs)
    assert (b >= 0).all()
    assert (b <= h + 1e-9).all()
    assert (h <= math.log(c) + 1e-9).all()


@settings(max_examples=100, deadline=None)
@given(mc_probs(multilabel=True))
def test_multilabel_bald_between_zero_and_entropy_and_l_log_2(probs):
    labels = probs.shape[-1]
    b, h = acq.bald(probs, multilabel=True), acq.predictive_entropy(probs, multilabel=True)
    assert (b >= 0).all() and (b <= h + 1e-9).all()
    assert (h <= labels * LOG2 + 1e-9).all()


@settings(max_examples=100, deadline=None)
@given(mc_probs(), st.integers(1, 10))
def test_bald_is_zero_when_all_samples_agree(probs, t):
    agreeing = probs[:, :1, :].expand(-1, t, -1).contiguous()
    assert torch.allclose(acq.bald(agreeing), torch.zeros(probs.shape[0], dtype=probs.dtype), atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(mc_probs(), st.integers(0, 2**31 - 1), st.sampled_from(sorted(set(acq.STRATEGIES) - {"random"})))
def test_permuting_mc_axis_changes_nothing(probs, seed, name):
    perm = torch.randperm(probs.shape[1], generator=torch.Generator().manual_seed(seed))
    assert torch.allclose(acq.acquire(name, probs), acq.acquire(name, probs[:, perm, :]), atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(mc_probs(), st.sampled_from(sorted(acq.STRATEGIES)))
def test_every_strategy_gives_one_finite_value_per_item(probs, name):
    values = acq.acquire(name, probs, seed=0)
    assert values.shape == (probs.shape[0],)
    assert torch.isfinite(values).all()


def test_pinned_values_two_classes_two_samples():
    # Item 0: samples [0.9, 0.1] and [0.1, 0.9]: mean [0.5, 0.5].
    # Item 1: both samples [0.5, 0.5].
    probs = torch.tensor([[[0.9, 0.1], [0.1, 0.9]], [[0.5, 0.5], [0.5, 0.5]]], dtype=torch.float64)
    h_sample = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))  # 0.325083...
    assert acq.predictive_entropy(probs).tolist() == pytest.approx([LOG2, LOG2])
    assert acq.expected_entropy(probs).tolist() == pytest.approx([h_sample, LOG2])
    assert acq.bald(probs).tolist() == pytest.approx([LOG2 - h_sample, 0.0])  # 0.368064...
    assert acq.margin(probs).tolist() == pytest.approx([1.0, 1.0])
    assert acq.least_confidence(probs).tolist() == pytest.approx([0.5, 0.5])
    # item 0's samples vote 0 and 1; item 1's tied samples both vote class 0 (argmax takes the first)
    assert acq.variation_ratios(probs).tolist() == pytest.approx([0.5, 0.0])


def test_pinned_values_three_classes():
    probs = torch.tensor([[[0.7, 0.2, 0.1]], [[0.4, 0.35, 0.25]]], dtype=torch.float64)
    expected_h = [-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)),
                  -(0.4 * math.log(0.4) + 0.35 * math.log(0.35) + 0.25 * math.log(0.25))]
    assert acq.predictive_entropy(probs).tolist() == pytest.approx(expected_h)
    assert acq.margin(probs).tolist() == pytest.approx([1 - 0.5, 1 - 0.05])
    assert acq.least_confidence(probs).tolist() == pytest.approx([0.3, 0.6])
    assert acq.bald(probs).tolist() == pytest.approx([0.0, 0.0])  # one sample: no disagreement


def test_variation_ratio_counts_votes():
    # 3 samples vote class 0, 1 votes class 1 -> 1 - 3/4.
    probs = torch.tensor([[[0.8, 0.2], [0.6, 0.4], [0.7, 0.3], [0.3, 0.7]]])
    assert acq.variation_ratios(probs).item() == pytest.approx(0.25)


def test_multilabel_pinned_entropy_sums_over_labels():
    probs = torch.tensor([[[0.5, 1.0]], [[0.5, 0.5]]], dtype=torch.float64)
    assert acq.predictive_entropy(probs, multilabel=True).tolist() == pytest.approx([LOG2, 2 * LOG2])
    assert acq.margin(probs, multilabel=True).tolist() == pytest.approx([0.5, 1.0])


def test_more_uncertain_items_rank_higher_for_every_uncertainty_strategy():
    confident = torch.tensor([[[0.98, 0.01, 0.01]] * 4])
    unsure = torch.tensor([[[0.4, 0.35, 0.25], [0.3, 0.45, 0.25], [0.45, 0.3, 0.25], [0.35, 0.4, 0.25]]])
    probs = torch.cat([confident, unsure])
    for name in ("entropy", "bald", "margin", "least_confidence", "variation_ratios"):
        values = acq.acquire(name, probs)
        assert values[1] > values[0], name


@pytest.mark.parametrize("bad, reason", [
    (torch.tensor([[[0.5, float("nan")]]]), "NaN"),
    (torch.tensor([[[2.0, -1.0]]]), "logits"),
    (torch.tensor([[[0.7, 0.7]]]), "sum to 1"),
    (torch.tensor([[0.5, 0.5]]), "shaped"),
    (torch.tensor([[[1.0]]]), "C >= 2"),
    (torch.tensor([[[1, 0]]]), "floating"),
])
def test_bad_input_raises_value_error(bad, reason):
    for fn in acq.STRATEGIES.values():
        with pytest.raises(ValueError, match=reason):
            fn(bad)


def test_unknown_strategy_is_rejected():
    with pytest.raises(ValueError, match="unknown strategy 'coreset'"):
        acq.acquire("coreset", torch.full((1, 1, 2), 0.5))


def test_empty_pool_gives_empty_values():
    assert acq.bald(torch.zeros(0, 5, 3)).shape == (0,)


# -- ambiguity: high entropy, low BALD -------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(mc_probs(), st.floats(0.05, 1.0), st.floats(0.0, 1.0))
def test_ambiguous_is_exactly_the_thresholds_relative_to_log_c(probs, min_entropy, max_bald):
    log_c = math.log(probs.shape[-1])
    flags = acq.ambiguous(probs, min_entropy=min_entropy, max_bald=max_bald)
    h, b = acq.predictive_entropy(probs), acq.bald(probs)
    assert flags.dtype == torch.bool and flags.shape == (probs.shape[0],)
    clear = ((h - min_entropy * log_c).abs() > 1e-9) & ((b - max_bald * log_c).abs() > 1e-9)  # off the edges
    expected = (h >= min_entropy * log_c) & (b <= max_bald * log_c)
    assert torch.equal(flags[clear], expected[clear])


@settings(max_examples=100, deadline=None)
@given(mc_probs(), st.integers(0, 2**31 - 1))
def test_ambiguous_ignores_the_mc_order_and_grows_with_looser_thresholds(probs, seed):
    perm = torch.randperm(probs.shape[1], generator=torch.Generator().manual_seed(seed))
    assert torch.equal(acq.ambiguous(probs), acq.ambiguous(probs[:, perm, :]))
    strict = acq.ambiguous(probs, min_entropy=0.8, max_bald=0.01)
    loose = acq.ambiguous(probs, min_entropy=0.5, max_bald=0.05)
    assert not (strict & ~loose).any()


def test_ambiguous_pinned_aleatoric_epistemic_and_confident():
    probs = torch.tensor([
        [[0.5, 0.5], [0.5, 0.5]],  # every sample unsure: aleatoric, BALD 0
        [[1.0, 0.0], [0.0, 1.0]],  # samples disagree: BALD = H = log 2, epistemic
        [[0.99, 0.01], [0.99, 0.01]],  # confident: low entropy
    ], dtype=torch.float64)
    assert acq.ambiguous(probs).tolist() == [True, False, False]
    assert acq.ambiguous(probs, max_bald=1.0).tolist() == [True, True, False]


def test_ambiguous_never_flags_multilabel_and_validates_input():
    assert not acq.ambiguous(torch.full((3, 2, 4), 0.5), multilabel=True).any()
    with pytest.raises(ValueError, match="logits"):
        acq.ambiguous(torch.tensor([[[2.0, -1.0]]]))
