"""Priority ranking: permutations, lower score = earlier, power sampling, diversity, exploration, cold start."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.al import ranking as rk


def is_permutation(order: torch.Tensor, n: int) -> bool:
    return order.shape == (n,) and torch.equal(torch.sort(order).values, torch.arange(n))


@st.composite
def pools(draw):
    n = draw(st.integers(1, 60))
    seed = draw(st.integers(0, 10_000))
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(n, generator=g, dtype=torch.float64)
    if draw(st.booleans()):
        values = values.round(decimals=1)  # ties
    return values, torch.randn(n, 8, generator=g), seed


@settings(max_examples=150, deadline=None)
@given(pools(), st.sampled_from([0.0, 1.0, 4.0]), st.sampled_from([0, 2, 5]), st.sampled_from([0.0, 0.1, 0.5]))
def test_order_is_a_permutation_and_scores_follow_it(pool, beta, clusters, exploration):
    values, emb, seed = pool
    order, explored = rk.priority_order(values, emb, power_beta=beta, clusters=clusters,
                                        exploration=exploration, seed=seed)
    n = values.numel()
    assert is_permutation(order, n)
    scores = rk.scores_from_order(order)
    assert scores.min() >= 0 and scores.max() <= 1
    assert torch.all(scores[order][1:] > scores[order][:-1])  # lower score = earlier in the order
    assert explored.dtype == torch.bool and int(explored.sum()) == round(exploration * n)


def test_greedy_order_is_descending_with_index_tiebreak():
    values = torch.tensor([0.2, 0.9, 0.5, 0.9])
    assert rk.greedy_order(values).tolist() == [1, 3, 2, 0]


def test_scores_from_order_pinned():
    assert rk.scores_from_order(torch.tensor([2, 0, 1])).tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert rk.scores_from_order(torch.tensor([0])).tolist() == [0.0]


def test_power_order_is_seeded_and_follows_value_mass():
    values = torch.tensor([1.0, 0.01, 0.01, 0.01])
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    assert torch.equal(rk.power_order(values, 1.0, g(3)), rk.power_order(values, 1.0, g(3)))
    firsts = [int(rk.power_order(values, 1.0, g(s))[0]) for s in range(300)]
    share = firsts.count(0) / len(firsts)
    assert 0.9 < share < 0.99  # P(first = 0) = 1 / 1.03 = 0.971
    # a large beta is (almost) greedy
    assert all(int(rk.power_order(values, 50.0, g(s))[0]) == 0 for s in range(50))


def test_power_order_rejects_bad_input():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="beta"):
        rk.power_order(torch.ones(3), 0.0, g)
    with pytest.raises(ValueError, match="non-negative"):
        rk.power_order(torch.tensor([0.5, -0.1]), 1.0, g)


def test_interleave_spreads_near_duplicates():
    # Top 6 items: four from cluster 0 (near-duplicates), two from cluster 1.
    order = torch.tensor([0, 1, 2, 3, 4, 5])
    clusters = torch.tensor([0, 0, 0, 1, 0, 1])
    assert rk.interleave_clusters(order, clusters, window=6).tolist() == [0, 3, 1, 5, 2, 4]


def test_diversity_breaks_up_a_duplicate_run_at_the_top():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 10
    emb = torch.cat([centres[i] + 0.01 * torch.randn(25, 16, generator=g) for i in range(4)])
    values = torch.cat([torch.linspace(1.0, 0.9, 25), torch.linspace(0.5, 0.4, 75)])  # cluster 0 most uncertain
    plain, _ = rk.priority_order(values, emb)
    assert set((plain[:8] // 25).tolist()) == {0}
    # The candidate window must be longer than the run: then every cluster in it takes turns.
    diverse, _ = rk.priority_order(values, emb, clusters=4, window=100)
    assert sorted((diverse[:4] // 25).tolist()) == [0, 1, 2, 3]
    assert int(diverse[0]) == 0  # the most informative item stays first
    # A window of 50 holds clusters 0 and 1 only (items 25-49 are the next most uncertain).
    half, _ = rk.priority_order(values, emb, clusters=4, window=50)
    assert (half[:4] // 25).tolist() == [0, 1, 0, 1]
    # A window inside the run cannot help: the run stays.
    narrow, _ = rk.priority_order(values, emb, clusters=4, window=20)
    assert set((narrow[:8] // 25).tolist()) == {0}


def test_exploration_positions_are_evenly_spread_and_marked():
    order = torch.arange(100)
    new, explored = rk.mix_exploration(order, 0.1, torch.Generator().manual_seed(1))
    assert is_permutation(new, 100) and int(explored.sum()) == 10
    positions = torch.nonzero(explored[new]).flatten().tolist()
    assert positions == [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]
    # the non-explored items keep their relative order
    rest = [int(i) for i in new if not explored[i]]
    assert rest == sorted(rest)


def test_priority_order_validates():
    with pytest.raises(ValueError, match="NaN"):
        rk.priority_order(torch.tensor([0.1, float("nan")]))
    with pytest.raises(ValueError, match="exploration"):
        rk.priority_order(torch.ones(3), exploration=1.0)
    with pytest.raises(ValueError, match="embedding"):
        rk.priority_order(torch.ones(3), None, clusters=2)


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(30, 2, generator=g) for c in centres])
    assign, found = rk.kmeans(x, 3, torch.Generator().manual_seed(1))
    groups = [set(assign[i * 30:(i + 1) * 30].tolist()) for i in range(3)]
    assert all(len(grp) == 1 for grp in groups) and len(set.union(*groups)) == 3


def test_cold_start_puts_one_representative_per_cluster_first():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=g) * 10
    sizes = [40, 30, 20, 10, 5]
    emb = torch.cat([centres[i] + 0.05 * torch.randn(s, 16, generator=g) for i, s in enumerate(sizes)])
    truth = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    order, values = rk.cold_start_order(emb, clusters=5, seed=0)
    assert is_permutation(order, sum(sizes))
    assert truth[order[:5]].tolist() == [0, 1, 2, 3, 4]  # largest cluster first
    first = order[0]
    assert values[first] >= values[truth == 0].max() - 1e-6  # closest to its centroid


def test_cold_start_empty_pool():
    order, values = rk.cold_start_order(torch.zeros(0, 4), clusters=3)
    assert order.numel() == 0 and values.numel() == 0


@given(st.lists(st.booleans(), min_size=1, max_size=40), st.integers(0, 1000))
def test_demote_puts_flagged_last_and_keeps_each_groups_order(flags, seed):
    n = len(flags)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    flagged = torch.tensor(flags)
    new = rk.demote(order, flagged)
    assert is_permutation(new, n)
    late = flagged[new].tolist()
    assert late == sorted(late)  # all unflagged, then all flagged
    assert [i for i in new.tolist() if not flags[i]] == [i for i in order.tolist() if not flags[i]]
    assert [i for i in new.tolist() if flags[i]] == [i for i in order.tolist() if flags[i]]


@settings(max_examples=80, deadline=None)
@given(pools(), st.sampled_from([0.0, 1.0]), st.sampled_from([0, 3]), st.sampled_from([0.0, 0.1, 0.3]),
       st.integers(0, 2**31 - 1))
def test_routing_never_changes_which_items_are_explored(pool, beta, clusters, exploration, flag_seed):
    values, emb, seed = pool
    flags = torch.rand(values.numel(), generator=torch.Generator().manual_seed(flag_seed)) < 0.3
    kwargs = dict(power_beta=beta, clusters=clusters, exploration=exploration, seed=seed)
    plain_order, plain_explored = rk.priority_order(values, emb, **kwargs)
    routed_order, routed_explored = rk.priority_order(values, emb, ambiguous=flags, **kwargs)
    assert torch.equal(plain_explored, routed_explored)  # the audit sample stays uniform
    assert is_permutation(routed_order, values.numel())
    if clusters == 0:
        # outside the exploration slots, every unflagged item comes before every flagged one
        active = [int(i) for i in routed_order if not routed_explored[i]]
        late = [bool(flags[i]) for i in active]
        assert late == sorted(late)


def test_order_pool_carries_the_flags_indexed_like_its_input():
    scored = rk.TaskScores(torch.tensor([30, 10, 20]), torch.tensor([0.9, 0.5, 0.1]), None, "margin",
                           torch.tensor([True, False, False]))
    ranking = rk.order_pool(scored)
    assert ranking.ambiguous.tolist() == [True, False, False]
    assert ranking.order.tolist() == [1, 2, 0]  # task 30 is the most uncertain but ambiguous: last
    assert rk.order_pool(rk.TaskScores(scored.ids, scored.values, None, "margin")).order.tolist() == [0, 1, 2]


def test_task_scores_flags_default_to_false_merge_and_validate():
    a = rk.TaskScores(torch.tensor([1, 2]), torch.zeros(2), None, "margin", torch.tensor([True, False]))
    b = rk.TaskScores(torch.tensor([3]), torch.zeros(1), None, "margin")
    assert b.ambiguous.tolist() == [False]
    assert rk.TaskScores.concat([a, b]).ambiguous.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="ambiguous"):
        rk.TaskScores(torch.tensor([1, 2]), torch.zeros(2), None, "margin", torch.tensor([1, 0]))


def test_routed_tells_routing_off_from_nothing_marked_through_merge_order_and_replace():
    off = rk.TaskScores(torch.tensor([2, 1]), torch.tensor([0.3, 0.7]), None, "margin")
    none_marked = rk.TaskScores(torch.tensor([4, 3]), torch.tensor([0.2, 0.1]), None, "margin",
                                torch.zeros(2, dtype=torch.bool))
    assert not off.routed and none_marked.routed
    assert not rk.order_pool(off).routed and rk.order_pool(none_marked).routed
    assert rk.TaskScores.concat([none_marked, rk.TaskScores(torch.tensor([5]), torch.zeros(1), None, "margin",
                                                            torch.zeros(1, dtype=torch.bool))]).routed
    assert not rk.TaskScores.concat([off, rk.TaskScores(torch.tensor([5]), torch.zeros(1), None, "margin")]).routed
    assert not dataclasses.replace(off, probs=None).routed  # flags made at init do not turn routing on
    assert rk.TaskScores(off.ids, off.values, None, "margin", off.ambiguous, routed=False).routed is False


def test_the_audited_slot_draws_from_the_whole_pool_top_included():
    """The explored item in the first exploration slot (the one a round of labelling reaches: the
    audit item) is uniform over the whole pool, the most informative items included, over the
    seeds the simulation uses (seed * 1000 + round), through the same call as the service."""
    n, counts = 20, torch.zeros(20)
    values = torch.linspace(1, 0, n)  # item 0 is the most informative
    for seed in range(60):
        for round_ in range(25):
            ranking = rk.order_pool(rk.TaskScores(torch.arange(n), values, None, "margin"), exploration=0.1,
                                    seed=seed * 1000 + round_)
            slot = next(i for i in ranking.order.tolist() if ranking.explored[i])
            counts[slot] += 1
    expected = counts.sum() / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 43.8  # chi-square, 19 degrees of freedom, p = 0.001
    assert abs(float(counts[:5].sum() / counts.sum()) - 0.25) < 0.03  # the top quarter as often as any
