"""Pool snapshots (backend/al/snapshots.py): the rows a pool's snapshot gives are the caches' rows to
the bit, for the same pool, a subset in order, scattered or repeated texts; bounded; damage is
never trusted; and a learner ranks the same with or without them."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from backend.al import lexical, snapshots
from backend.al.config import EngineConfig
from backend.al.embeddings import text_digests
from backend.al.learner import ActiveLearner
from backend.al.snapshots import Snapshots


@pytest.fixture(autouse=True)
def small_pools(monkeypatch):
    monkeypatch.setattr(snapshots, "MIN_ROWS", 20)


def pool(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, torch.Tensor, lexical.Rows]:
    rng = np.random.default_rng(seed)
    words = ["market", "team", "vote", "chip", "rally", "goal", "bank", "launch", "storm", "court"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 12)))) + f" {seed}-{i}" for i in range(n)]
    x = torch.from_numpy(rng.standard_normal((n, 6)).astype(np.float32))
    return texts, text_digests(texts), x, lexical.features(texts, 8)


def same_rows(got: snapshots.Found, x: torch.Tensor, grams: lexical.Rows | None) -> None:
    assert got.found.all()
    assert torch.equal(got.dense, x)
    if grams is None:
        assert got.grams is None
        return
    assert got.grams.width == grams.width
    for a, b in ((got.grams.indptr, grams.indptr), (got.grams.indices, grams.indices),
                 (got.grams.values, grams.values)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("pick", ["same", "first removed", "every 7th removed", "shuffled", "repeats"])
def test_any_subset_of_a_snapshot_gives_the_same_rows_as_the_caches(tmp_path, pick):
    texts, d, x, grams = pool(300)
    cache = Snapshots(tmp_path, "e")
    cache.put(d, x, grams)
    rows = {"same": np.arange(300), "first removed": np.arange(1, 300),
            "every 7th removed": np.array([i for i in range(300) if i % 7]),
            "shuffled": np.random.default_rng(1).permutation(300),
            "repeats": np.random.default_rng(2).integers(0, 300, size=400)}[pick]
    got = Snapshots(tmp_path, "e").get(d[rows], 8)  # a new process
    same_rows(got, x[torch.from_numpy(rows)], grams.take(torch.from_numpy(rows)))
    same_rows(Snapshots(tmp_path, "e").get(d[rows], 0), x[torch.from_numpy(rows)], None)  # embeddings only


@pytest.mark.parametrize("new_at", ["end", "start", "scattered"])
def test_a_pool_with_new_texts_gets_what_a_snapshot_holds_of_it(tmp_path, new_at):
    texts, d, x, grams = pool(120)
    old = {"end": np.arange(100), "start": np.arange(20, 120),
           "scattered": np.flatnonzero(np.arange(120) % 7 > 0)}[new_at]
    cache = Snapshots(tmp_path, "e")
    cache.put(d[old], x[old], grams.take(torch.from_numpy(old)))
    got = cache.get(d, 8)
    held = np.isin(np.arange(120), old)
    assert np.array_equal(got.found, held)
    kept = torch.from_numpy(np.flatnonzero(held))
    assert torch.equal(got.dense, x[kept])
    taken = grams.take(kept)
    assert torch.equal(got.grams.indptr, taken.indptr) and torch.equal(got.grams.indices, taken.indices)
    assert Snapshots.stale(got) == (held.mean() < snapshots.REWRITE)


def test_a_pool_no_snapshot_holds_most_of_is_not_served(tmp_path):
    texts, d, x, grams = pool(100)
    cache = Snapshots(tmp_path, "e")
    cache.put(d[:40], x[:40], grams.take(torch.arange(40)))
    assert cache.get(d, 8) is None and Snapshots.stale(None)  # 60 texts are new
    assert cache.get(d[:19], 8) is None  # below MIN_ROWS: never read
    assert cache.get(d[:40], 9) is None  # n-grams of other bits
    cache.put(d[:19], x[:19], grams.take(torch.arange(19)))  # below MIN_ROWS: never written
    assert len(list(cache.dir.glob("*.snap"))) == 1


def test_the_folder_keeps_the_most_recently_used_snapshots(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshots, "KEEP", 3)
    cache = Snapshots(tmp_path, "e")
    pools = [pool(30, seed) for seed in range(4)]
    for at, (_, d, x, grams) in enumerate(pools[:3]):
        seen = set(cache.dir.glob("*.snap"))
        cache.put(d, x, grams)
        (new,) = set(cache.dir.glob("*.snap")) - seen
        os.utime(new, (at, at))  # written in this order, also on a coarse clock
    assert cache.get(pools[0][1], 8) is not None  # the oldest is read: now the most recently used
    _, d, x, grams = pools[3]
    cache.put(d, x, grams)
    assert len(list(cache.dir.glob("*.snap"))) == 3
    assert cache.get(pools[0][1], 8) is not None  # kept: it was used
    assert cache.get(pools[1][1], 8) is None  # the least recently used went


def test_a_damaged_snapshot_is_removed_and_the_pool_read_from_the_caches(tmp_path, caplog):
    texts, d, x, grams = pool(100)
    cache = Snapshots(tmp_path, "e")
    cache.put(d, x, grams)
    (path,) = cache.dir.glob("*.snap")
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 8)
    assert cache.get(d, 8) is None
    assert not path.exists() and "unreadable" in caplog.text


@pytest.fixture
def learner_config(tiny_bert):
    return dataclasses.replace(EngineConfig(), encoder=str(tiny_bert), mode="linear", propagation="off",
                               diversity_clusters=4)


def test_a_learner_ranks_the_same_from_a_snapshot_as_from_the_caches(agnews_pool, learner_config, tmp_path):
    texts, labels = agnews_pool
    texts, labels = texts[:260], labels[:260]
    classes = sorted(set(labels))
    learner = ActiveLearner(learner_config, tmp_path)
    model = learner.fit(texts[:60], labels[:60], classes)
    pool_texts = texts[60:]
    first = ActiveLearner(learner_config, tmp_path).rank(model, pool_texts)  # assembled, then written
    (path,) = learner.snapshots.dir.glob("*.snap")  # the pool's: the labelled set grows, it has none
    assert ActiveLearner(learner_config, tmp_path).snapshots.get(text_digests(pool_texts), lexical.BITS) is not None
    again = ActiveLearner(learner_config, tmp_path).rank(model, pool_texts)
    assert torch.equal(again.order, first.order) and torch.equal(again.scores, first.scores)
    fewer = pool_texts[::3] + pool_texts[1::3]  # a subset, in another order
    from_snapshot = ActiveLearner(learner_config, tmp_path).rank(model, fewer)
    assert len(list(learner.snapshots.dir.glob("*.snap"))) == 1  # a subset: nothing written
    more = pool_texts[5:] + texts[:60:3]  # 20 labelled texts back in the pool: 195 of 215 held (91%)
    partly = ActiveLearner(learner_config, tmp_path).rank(model, more)
    assert len(list(learner.snapshots.dir.glob("*.snap"))) == 1  # most held: not written again
    path.unlink()
    without = ActiveLearner(learner_config, tmp_path).rank(model, fewer)  # from the caches (and written again)
    assert torch.equal(from_snapshot.order, without.order)
    assert torch.equal(from_snapshot.scores, without.scores)
    for file in learner.snapshots.dir.glob("*.snap"):
        file.unlink()
    partly_without = ActiveLearner(learner_config, tmp_path).rank(model, more)
    assert torch.equal(partly.order, partly_without.order) and torch.equal(partly.scores, partly_without.scores)
