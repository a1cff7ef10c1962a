"""Score and order apart: a pool scored in any split into shards, ordered once, ranks as one call."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.al.acquisition import ambiguous
from backend.al.config import EngineConfig
from backend.al.learner import ActiveLearner, TaskScores

WORDS = ["stocks", "fell", "team", "won", "chip", "battery", "election", "profits", "striker", "rain",
         "court", "vaccine", "market", "orbit", "goal", "merger", "storm", "senate", "robot", "final"]
POOL = [f"{WORDS[i % 20]} {WORDS[(i * 7) % 20]} {WORDS[(i * 3 + 1) % 20]} item {i}" for i in range(60)]
IDS = [1000 + 3 * i for i in range(60)]  # task ids are not positions
LABELLED = {"Business": [0, 7, 14], "Sports": [2, 8, 18], "World": [6, 17, 11]}
CONFIGS = {
    "default": {},
    "random": {"strategy": "random"},
    "bald-power-diversity": {"strategy": "bald", "power_beta": 1.0, "diversity_clusters": 4},
    # thresholds loose enough for the tiny test model to flag part of the pool
    "entropy-ambiguity": {"strategy": "entropy", "ambiguity": True, "ambiguity_entropy": 0.8, "ambiguity_bald": 0.005},
}


def _learner(tiny_bert, cache, **overrides) -> ActiveLearner:
    return ActiveLearner(EngineConfig(encoder=str(tiny_bert), mc_samples=8, **overrides), cache_dir=cache)


@pytest.fixture(scope="module")
def trained(tiny_bert, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    learner = _learner(tiny_bert, cache)
    learner.embed(POOL)  # the pool's embeddings are cached once, as the service's index does
    texts = [POOL[i] for idxs in LABELLED.values() for i in idxs]
    labels = [c for c, idxs in LABELLED.items() for _ in idxs]
    return cache, learner.fit(texts, labels, sorted(LABELLED))


def _splits(draw_sizes: list[int], n: int) -> list[list[int]]:
    cuts = sorted({min(n, s) for s in draw_sizes})
    bounds = [0, *[c for c in cuts if 0 < c < n], n]
    return [list(range(a, b)) for a, b in itertools.pairwise(bounds)]


def _sharded(learner, model, shards, perm, seed):
    parts = []
    for shard in shards:
        rows = [perm[i] for i in shard]
        parts.append(learner.score(model, [POOL[i] for i in rows], [IDS[i] for i in rows], seed=seed))
    merged = TaskScores.concat(parts[::-1])  # merged in another order than scored
    rows = [perm[i] for shard in shards[::-1] for i in shard]
    embeddings = learner.embed([POOL[i] for i in rows]) if learner.needs_embeddings(merged) else None
    return rows, learner.order(merged, embeddings, seed=seed)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 59), max_size=6), shuffle=st.integers(0, 2**31 - 1),
       name=st.sampled_from(sorted(CONFIGS)), cold=st.booleans())
def test_shards_in_any_split_give_the_single_call_ranking(tiny_bert, trained, sizes, shuffle, name, cold):
    cache, model = trained
    learner = _learner(tiny_bert, cache, **CONFIGS[name])
    model = None if cold else model
    whole = learner.rank(model, POOL, IDS, seed=11)
    perm = torch.randperm(len(POOL), generator=torch.Generator().manual_seed(shuffle)).tolist()
    rows, sharded = _sharded(learner, model, _splits(sizes, len(POOL)), perm, seed=11)
    # Compare by task id: the i-th task to label and every task's score, value and probabilities.
    assert [IDS[rows[i]] for i in sharded.order.tolist()] == [IDS[i] for i in whole.order.tolist()]
    back = torch.tensor(rows)
    assert torch.equal(sharded.scores, whole.scores[back])
    assert torch.equal(sharded.values, whole.values[back])
    assert torch.equal(sharded.explored, whole.explored[back])
    assert torch.equal(sharded.ambiguous, whole.ambiguous[back])
    assert (sharded.probs is None and whole.probs is None) or torch.equal(sharded.probs, whole.probs[back])


def test_random_values_are_keyed_by_task_id_and_seed(tiny_bert, trained):
    cache, model = trained
    learner = _learner(tiny_bert, cache, strategy="random")
    a = learner.score(model, POOL[:5], IDS[:5], seed=3).values
    assert torch.equal(learner.score(model, POOL[3:5], IDS[3:5], seed=3).values, a[3:5])
    assert not torch.equal(learner.score(model, POOL[:5], IDS[:5], seed=4).values, a)


def test_full_mode_scores_a_text_the_same_in_any_batch(tiny_bert, tmp_path):
    learner = ActiveLearner(EngineConfig(encoder=str(tiny_bert), mode="full", mc_samples=4, batch_size=8),
                            cache_dir=tmp_path)
    model = learner.fit(POOL[:9], ["a", "b", "c"] * 3, ["a", "b", "c"])
    whole = learner.mc_probs(model, POOL[:20], seed=5)
    alone = torch.cat([learner.mc_probs(model, [POOL[i]], seed=5) for i in (0, 7, 19)])
    # Same masks per sample whatever the batch; only padding changes the float sums' last bits.
    assert torch.allclose(alone, whole[[0, 7, 19]], atol=1e-5)
    assert whole.std(dim=1).max() > 0


def test_ambiguity_marks_tasks_only_when_on_and_routes_them_behind(tiny_bert, trained):
    cache, model = trained
    assert not _learner(tiny_bert, cache, strategy="entropy").score(model, POOL, IDS, seed=11).ambiguous.any()
    learner = _learner(tiny_bert, cache, **CONFIGS["entropy-ambiguity"])
    scored = learner.score(model, POOL, IDS, seed=11)
    expected = ambiguous(learner.mc_probs(model, POOL, seed=11), False, 0.8, 0.005)
    assert torch.equal(scored.ambiguous, expected) and 0 < int(expected.sum()) < len(POOL)
    ranking = learner.order(scored, seed=11)
    active = [i for i in ranking.order.tolist() if not ranking.explored[i]]
    late = [bool(ranking.ambiguous[i]) for i in active]
    assert late == sorted(late)


def test_merging_refuses_repeated_ids_and_mixed_strategies():
    a = TaskScores(torch.tensor([1, 2]), torch.zeros(2), None, "margin")
    with pytest.raises(ValueError, match="unique"):
        _learner_free_order(TaskScores.concat([a, a]))
    with pytest.raises(ValueError, match="different strategies"):
        TaskScores.concat([a, TaskScores(torch.tensor([3]), torch.zeros(1), None, "bald")])


def _learner_free_order(scored):
    from backend.al.ranking import order_pool

    return order_pool(scored)
