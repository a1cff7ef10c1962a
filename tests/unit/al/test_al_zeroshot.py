"""The zero-shot cold start: pure scoring and ordering, the flat-names fallback, shards, real data."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.al.config import EngineConfig
from backend.al.learner import ActiveLearner, TaskScores
from backend.al.ranking import COLD_START, cold_start_order, order_pool
from backend.al.zeroshot import MIN_SPREAD, label_prompt, meaningful, zero_shot_order, zero_shot_scores
from tests.unit.al.conftest import DATA


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


def _clustered(n_per: int, c: int, d: int = 16, noise: float = 0.3, seed: int = 0):
    """Texts around c orthogonal-ish name vectors: (texts (n_per*c, D), names (c, D), gold (n_per*c,))."""
    g = torch.Generator().manual_seed(seed)
    names = _unit(torch.randn(c, d, generator=g))
    gold = torch.arange(c).repeat_interleave(n_per)
    texts = _unit(names[gold] + noise * torch.randn(len(gold), d, generator=g))
    return texts, names, gold


@pytest.mark.parametrize(("name", "prompt"), [
    ("book_flight", "book flight"), ("Sci/Tech", "Sci Tech"), ("SciTech", "Sci Tech"),
    ("credit-limit_change", "credit limit change"), ("ABBR", "ABBR"), ("__", "__"), ("  Sports ", "Sports"),
])
def test_label_prompt_spells_names_out(name, prompt):
    assert label_prompt(name) == prompt


def test_zero_shot_scores_shapes_and_argmax_is_the_nearest_name():
    texts, names, gold = _clustered(10, 4)
    probs, spread = zero_shot_scores(texts, names)
    assert probs.shape == (40, 4) and spread.shape == (40,)
    assert torch.allclose(probs.sum(dim=1), torch.ones(40))
    assert torch.equal(probs.argmax(dim=1), (texts @ names.T).argmax(dim=1))
    assert (probs.argmax(dim=1) == gold).float().mean() > 0.9
    # A lower temperature sharpens without changing the argmax.
    sharp, _ = zero_shot_scores(texts, names, temperature=0.01)
    assert torch.equal(sharp.argmax(dim=1), probs.argmax(dim=1))
    assert sharp.max(dim=1).values.mean() > probs.max(dim=1).values.mean()


@pytest.mark.parametrize(("texts", "names", "kwargs", "message"), [
    (torch.ones(3, 4), torch.ones(2, 5), {}, "need"),
    (torch.ones(3, 4), torch.ones(1, 4), {}, "at least two"),
    (torch.ones(3, 4), torch.ones(2, 4), {"temperature": 0.0}, "temperature"),
])
def test_zero_shot_scores_refuse_bad_input(texts, names, kwargs, message):
    with pytest.raises(ValueError, match=message):
        zero_shot_scores(texts, names, **kwargs)


def test_flat_similarities_are_not_meaningful():
    texts, names, _ = _clustered(10, 4)
    assert meaningful(zero_shot_scores(texts, names)[1])
    flat = _unit(names.mean(dim=0, keepdim=True) + 1e-3 * torch.randn(4, names.shape[1]))  # names all alike
    assert not meaningful(zero_shot_scores(texts, flat)[1])
    assert not meaningful(torch.zeros(0))
    assert meaningful(torch.full((5,), MIN_SPREAD * 1.01)) and not meaningful(torch.full((5,), MIN_SPREAD * 0.99))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), c=st.integers(2, 12), k=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_zero_shot_order_is_a_permutation_that_covers_every_class_first(n, c, k, seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(3 * torch.randn(n, c, generator=g), dim=1)
    clusters = torch.randint(k, (n,), generator=g)
    order = zero_shot_order(probs, clusters, torch.rand(n, generator=g))
    assert sorted(order.tolist()) == list(range(n))
    # Round one: each class's most likely item among those not yet taken, min(n, C) of them.
    taken: set[int] = set()
    firsts = order[:min(n, c)].tolist()
    for pos, item in enumerate(firsts):
        k_class = [kk for kk in range(c) if max((float(probs[i, kk]), -i) for i in range(n) if i not in taken)
                   == (float(probs[item, kk]), -item)]
        assert k_class, f"position {pos}: item {item} is no class's best remaining item"
        taken.add(item)


def test_zero_shot_order_alternates_classes_and_clusters_after_coverage():
    probs = torch.tensor([[0.9, 0.1]] * 6 + [[0.2, 0.8]] * 6)
    clusters = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 4])
    distances = torch.arange(12, dtype=torch.float32) / 10
    order = zero_shot_order(probs, clusters, distances).tolist()
    assert {order[0], order[1]} == {0, 6}  # one per class: the surest (ties: the first)
    rest = order[2:]
    predicted = probs.argmax(dim=1)
    assert [int(predicted[i]) for i in rest[:8]] == [0, 1] * 4  # classes take turns
    lane0 = [i for i in rest if predicted[i] == 0]
    assert lane0 == [1, 3, 5, 2, 4]  # cluster 0 (biggest left) then 1 then 2, nearest first inside


def test_order_pool_uses_zero_shot_only_when_names_mean_something():
    x, names, gold = _clustered(15, 6, seed=3)
    ids = torch.arange(100, 190)
    probs, spread = zero_shot_scores(x, names)
    scored = TaskScores(ids, spread, probs, COLD_START)
    ranked = order_pool(scored, x, cold_start_clusters=4, zero_shot_order=True, seed=5)
    assert ranked.probs is not None and torch.equal(ranked.probs, probs)
    assert len({int(gold[i]) for i in ranked.order[:6]}) == 6  # the first C cover every class
    # The default order stays k-means; the zero-shot probabilities still come along (pre-annotations).
    labelled = order_pool(scored, x, cold_start_clusters=4, seed=5)
    assert torch.equal(labelled.probs, probs) and not torch.equal(labelled.order, ranked.order)
    # Flat names: today's diversity order exactly, and no pre-annotations.
    flat = order_pool(TaskScores(ids, torch.full((90,), MIN_SPREAD / 2), probs, COLD_START), x,
                      cold_start_clusters=4, seed=5)
    plain = order_pool(TaskScores(ids, torch.zeros(90), None, COLD_START), x, cold_start_clusters=4, seed=5)
    assert flat.probs is None and torch.equal(flat.order, plain.order) and torch.equal(flat.values, plain.values)
    assert torch.equal(labelled.order, plain.order)
    assert torch.equal(cold_start_order(x, 4, 5)[0], cold_start_order(x, 4, 5, zero_shot=None)[0])


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> ActiveLearner:
    return ActiveLearner(EngineConfig(mc_samples=4, cold_start="zero-shot"), cache_dir=tmp_path_factory.mktemp("cache"))


WORDS = ["stocks", "fell", "team", "won", "chip", "battery", "election", "profits", "striker", "rain",
         "court", "vaccine", "market", "orbit", "goal", "merger", "storm", "senate", "robot", "final"]
POOL = [f"{WORDS[i % 20]} {WORDS[(i * 7) % 20]} {WORDS[(i * 3 + 1) % 20]} news {i}" for i in range(40)]
IDS = [500 + 7 * i for i in range(40)]


@pytest.mark.parametrize("names", [["Business news", "Sports", "World politics", "Science and technology"],
                                   ["A", "B", "C", "D"]])
@pytest.mark.parametrize(("cut", "cold_start"), [(1, "zero-shot"), (13, "clusters"), (39, "zero-shot")])
def test_zero_shot_cold_start_is_shard_exact(minilm, names, cut, cold_start):
    minilm = ActiveLearner(replace(minilm.config, cold_start=cold_start), cache_dir=minilm.cache.dir.parent)
    whole = minilm.rank(None, POOL, IDS, seed=3, label_names=names)
    parts = [minilm.score(None, POOL[cut:], IDS[cut:], seed=3, label_names=names),
             minilm.score(None, POOL[:cut], IDS[:cut], seed=3, label_names=names)]
    rows = list(range(cut, 40)) + list(range(cut))
    sharded = minilm.order(TaskScores.concat(parts), minilm.embed([POOL[i] for i in rows]), seed=3)
    assert [IDS[rows[i]] for i in sharded.order.tolist()] == [IDS[i] for i in whole.order.tolist()]
    back = torch.tensor(rows)
    assert torch.equal(sharded.scores, whole.scores[back]) and torch.equal(sharded.values, whole.values[back])
    assert (whole.probs is None) == (names[0] == "A")  # letters are flat: no zero-shot, no labels
    if whole.probs is not None:
        assert torch.equal(sharded.probs, whole.probs[back])


def _clinc_subset(intents: int = 20, pool_per: int = 8, test_per: int = 5):
    """Every 7th CLINC150 intent: pool_per pool and test_per test utterances of each."""
    from backend.al.datasets import load_tsv

    def grouped(name: str) -> dict[str, list[str]]:
        path = DATA / "clinc150" / f"{name}.tsv"
        if not path.exists():
            pytest.fail(f"benchmark data missing: {path}")
        by: dict[str, list[str]] = defaultdict(list)
        for text, label in zip(*load_tsv(path), strict=True):
            by[label].append(text)
        return by

    pool, test = grouped("pool"), grouped("test")
    chosen = sorted(pool)[::7][:intents]
    return (chosen, [(t, y) for y in chosen for t in pool[y][:pool_per]],
            [(t, y) for y in chosen for t in test[y][:test_per]])


@pytest.mark.slow
def test_zero_shot_beats_a_random_cold_start_on_real_intents(minilm):
    """CLINC150, 20 intents: the zero-shot seed set covers more intents and trains a better first model."""
    intents, pool, test = _clinc_subset()
    texts = [t for t, _ in pool]
    ranking = minilm.rank(None, texts, label_names=intents)
    assert ranking.probs is not None  # real intent names are meaningful
    agreement = (ranking.probs.argmax(dim=1) == torch.tensor([intents.index(y) for _, y in pool])).float().mean()
    assert agreement > 0.5  # chance is 0.05
    letters = minilm.rank(None, texts, label_names=[f"L{i}" for i in range(len(intents))])
    assert letters.probs is None  # meaningless names fall back, without labels

    gold = torch.tensor([intents.index(y) for _, y in test])

    def first_model(seed_set: list[int]) -> tuple[float, int]:
        model = minilm.fit([texts[i] for i in seed_set], [pool[i][1] for i in seed_set], intents)
        accuracy = float((minilm.predict_proba(model, [t for t, _ in test]).argmax(dim=1) == gold).float().mean())
        return accuracy, len({pool[i][1] for i in seed_set})

    zero_shot, covered = first_model(ranking.order[:20].tolist())
    randoms = [first_model(random.Random(s).sample(range(len(pool)), 20)) for s in range(3)]
    assert covered >= max(c for _, c in randoms)
    assert zero_shot > sum(a for a, _ in randoms) / len(randoms)


def test_simulation_seed_sets_come_from_the_cold_start_order(minilm):
    from backend.al.simulate import seed_set

    names = ["Business news", "Sports", "World politics", "Science and technology"]
    for cold_start in ("random", "clusters", "zero-shot"):
        chosen = seed_set(minilm, POOL, names, seed=2, size=6, cold_start=cold_start)
        assert len(set(chosen)) == 6 and all(0 <= i < len(POOL) for i in chosen)
    expected = minilm.rank(None, POOL, seed=2, label_names=names).order[:6].tolist()
    assert seed_set(minilm, POOL, names, 2, 6, "zero-shot") == expected
    with pytest.raises(ValueError, match="unknown cold start"):
        seed_set(minilm, POOL, names, 2, 6, "names")
