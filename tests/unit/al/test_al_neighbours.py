"""The k-NN lists kept between retrains (backend/al/neighbours.py): order-free, read back, bounded."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.al import neighbours, propagation
from backend.al.config import EngineConfig
from backend.al.datasets import load_tsv
from backend.al.embeddings import text_digests
from backend.al.learner import ActiveLearner
from backend.al.neighbours import NeighbourCache
from tests.unit.al.conftest import DATA


def points(n: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    x = F.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(seed)), dim=1)
    return x, text_digests([f"text {seed} {i}" for i in range(n)])


def as_digests(digests: np.ndarray, columns: torch.Tensor) -> list[list[bytes]]:
    return [[digests[j] for j in row] for row in columns.tolist()]


def test_the_lists_are_the_same_whatever_the_order_of_the_rows(tmp_path):
    x, d = points(300)
    sims, cols = NeighbourCache(None, "e").get(x, d, 5)
    direct_sims, direct_cols = propagation.nearest(x, 5)
    assert torch.allclose(sims, direct_sims, atol=1e-6)  # the same neighbours as computing them in place
    assert as_digests(d, cols) == as_digests(d, direct_cols)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(1))
    cache = NeighbourCache(tmp_path, "e")
    shuffled_sims, shuffled_cols = cache.get(x[perm], d[perm.numpy()], 5)
    assert torch.equal(shuffled_sims, sims[perm])  # bit for bit: always computed in the digests' order
    assert as_digests(d[perm.numpy()], shuffled_cols) == [as_digests(d, cols)[i] for i in perm.tolist()]


def test_a_set_seen_before_is_read_not_computed(tmp_path, monkeypatch):
    x, d = points(200)
    first = NeighbourCache(tmp_path, "e").get(x, d, 4)
    assert len(list(NeighbourCache(tmp_path, "e").dir.glob("*.pt"))) == 1

    def no_pass(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(propagation, "nearest", no_pass)
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(2))
    again = NeighbourCache(tmp_path, "e").get(x[perm], d[perm.numpy()], 4)  # a new process, another order
    assert torch.equal(again[0], first[0][perm])
    assert as_digests(d[perm.numpy()], again[1]) == [as_digests(d, first[1])[i] for i in perm.tolist()]
    for other in ((x[:-1], d[:-1], 4), (x, d, 3)):  # one text fewer, another k: not the same lists
        with pytest.raises(AssertionError, match="computed again"):
            NeighbourCache(tmp_path, "e").get(*other)
    with pytest.raises(AssertionError, match="computed again"):
        NeighbourCache(tmp_path, "another encoder").get(x, d, 4)


def test_a_damaged_file_is_computed_again_and_replaced(tmp_path, caplog):
    x, d = points(100)
    cache = NeighbourCache(tmp_path, "e")
    first = cache.get(x, d, 3)
    (path,) = cache.dir.glob("*.pt")
    path.write_bytes(b"not a tensor file")
    with caplog.at_level(logging.WARNING, logger="backend.al.neighbours"):
        again = NeighbourCache(tmp_path, "e").get(x, d, 3)
    assert "unreadable" in caplog.text
    assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
    torch.save({"sims": first[0][:10], "columns": first[1][:10]}, path)  # lists of another set's shape
    assert torch.equal(NeighbourCache(tmp_path, "e").get(x, d, 3)[1], first[1])


def test_the_folder_and_memory_keep_a_bounded_number_of_sets(tmp_path):
    cache, memory = NeighbourCache(tmp_path, "e"), NeighbourCache(None, "e")
    for seed in range(neighbours.KEEP + 3):
        cache.get(*points(20, seed), 3)
        memory.get(*points(20, seed), 3)
    assert len(list(cache.dir.glob("*.pt"))) == neighbours.KEEP
    assert len(memory._memory) == neighbours._MEMORY
    assert len(list(cache._recent(3))) == neighbours.BASES
    with pytest.raises(ValueError, match="20 embeddings but 19 digests"):
        cache.get(points(20)[0], points(20)[1][:19], 3)


def test_a_second_retrain_on_the_same_texts_reads_the_lists_and_fits_the_same_model(tiny_bert, tmp_path, monkeypatch):
    texts, labels = load_tsv(DATA / "agnews" / "pool.tsv")
    texts, labels = texts[:400], labels[:400]
    config = dataclasses.replace(EngineConfig(), encoder=str(tiny_bert), mode="linear", propagation="on")
    classes = sorted(set(labels))
    labelled = list(range(0, 400, 10))
    rest = [i for i in range(400) if i not in set(labelled)]
    passes = []
    nearest = propagation.nearest
    monkeypatch.setattr(propagation, "nearest", lambda *a: passes.append(1) or nearest(*a))
    # the tiny random encoder spreads no class far: every text the labels reach is a pseudo-label
    monkeypatch.setattr(propagation, "pseudo_labels", functools.partial(propagation.pseudo_labels, min_confidence=0.0))

    def fit():
        learner = ActiveLearner(config, tmp_path / "cache")
        return learner.fit([texts[i] for i in labelled], [labels[i] for i in labelled], classes,
                           pool=[texts[i] for i in rest])

    first, second = fit(), fit()
    assert passes == [1] and first.stats["pseudo_labels"] > 0
    assert first.stats == second.stats and torch.equal(first.state["weights"], second.state["weights"])
    moved = labelled[:5] + labelled[6:], [labelled[5], *rest]  # one annotation later: the same texts, another split
    ActiveLearner(config, tmp_path / "cache").fit([texts[i] for i in moved[0]], [labels[i] for i in moved[0]],
                                                  classes, pool=[texts[i] for i in moved[1]])
    assert passes == [1]


def _as_sets(digests: np.ndarray, sims: torch.Tensor, cols: torch.Tensor) -> dict[bytes, tuple]:
    """Each text's neighbours as digests, with their similarities, keyed by the text's digest."""
    return {digests[i]: (tuple(digests[j] for j in cols[i].tolist()), sims[i]) for i in range(len(digests))}


def _same_lists(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[t][0] == b[t][0] and torch.allclose(a[t][1], b[t][1], atol=1e-6) for t in a)


@pytest.mark.parametrize("added, removed", [(5, 0), (0, 5), (7, 4), (0, 0)])
def test_a_changed_set_is_updated_to_the_lists_of_the_new_set(tmp_path, monkeypatch, added, removed):
    monkeypatch.setattr(neighbours, "_BLOCK", 64)  # the merge with the new texts in several blocks
    x, d = points(400, seed=3)
    cache = NeighbourCache(tmp_path, "e")
    old_sims, old_cols = cache.get(x[:390], d[:390], 6)
    removed_rows = set(old_cols[0].tolist()[:removed])  # texts in row 0's list: its row must be recomputed
    keep = [i for i in range(390) if i not in removed_rows] + list(range(390, 390 + added))
    computed = []
    nearest = propagation.nearest
    monkeypatch.setattr(propagation, "nearest", lambda x, k, rows=None: computed.append(
        len(x) if rows is None else rows.numel()) or nearest(x, k, rows))
    got = cache.get(x[keep], d[keep], 6)
    monkeypatch.setattr(propagation, "nearest", nearest)
    fresh = propagation.nearest(x[keep], 6)
    assert _same_lists(_as_sets(d[keep], *got), _as_sets(d[keep], *fresh))
    if added or removed:
        assert computed and computed[0] < 60  # the new texts' rows and those that named a gone text only
    assert computed == [] or len(computed) == 1


def test_copies_of_a_text_are_matched_copy_for_copy():
    keys = np.array([b"a", b"b", b"b", b"b", b"c", b"c"], dtype="S20")
    assert neighbours._copy_rank(keys).tolist() == [0, 0, 1, 2, 0, 1]
    x, d = points(120, seed=5)
    x, d = torch.cat([x, x[:10]]), np.concatenate([d, d[:10]])  # ten texts twice
    cache = NeighbourCache(None, "e")
    cache.get(x[:125], d[:125], 5)  # five of the copies
    got = cache.get(x, d, 5)  # five more copies and ten of the others: an update
    fresh = propagation.nearest(x, 5)
    for i in range(130):  # the same neighbours up to which copy of a repeated text is named
        assert sorted(d[got[1][i]].tolist()) == sorted(d[fresh[1][i]].tolist())
        assert torch.allclose(got[0][i], fresh[0][i], atol=1e-6)


def test_an_update_falls_back_to_all_rows_when_much_changed(tmp_path, monkeypatch):
    x, d = points(200, seed=4)
    cache = NeighbourCache(tmp_path, "e")
    cache.get(x[:100], d[:100], 5)
    base = next(cache._recent(5))
    assert neighbours.update(base, np.sort(d[50:200]), x[50:200][np.argsort(d[50:200], kind="stable")], 5) is None
    fresh = propagation.nearest(x[50:200], 5)
    assert _same_lists(_as_sets(d[50:200], *cache.get(x[50:200], d[50:200], 5)), _as_sets(d[50:200], *fresh))


def test_a_changed_set_finds_its_own_lists_among_other_projects_newer_ones(tmp_path, monkeypatch):
    x, d = points(300, seed=6)
    cache = NeighbourCache(tmp_path, "e")
    cache.get(x[:200], d[:200], 5)  # project A
    other = points(150, seed=7)
    cache.get(other[0], other[1], 5)  # project B, newer
    computed = []
    nearest = propagation.nearest

    def counting(x, k, rows=None):
        computed.append(len(x) if rows is None else rows.numel())
        return nearest(x, k, rows)

    monkeypatch.setattr(propagation, "nearest", counting)
    got = cache.get(x[:205], d[:205], 5)  # project A, five tasks imported: updated from A's lists
    assert len(computed) == 1 and computed[0] < 50
    monkeypatch.setattr(propagation, "nearest", nearest)
    assert _same_lists(_as_sets(d[:205], *got), _as_sets(d[:205], *propagation.nearest(x[:205], 5)))


def test_only_a_read_set_counts_as_recently_used_not_a_base_that_was_tried(tmp_path):
    cache = NeighbourCache(tmp_path, "e")
    cache.get(*points(100, seed=8), 4)
    (tried,) = cache.dir.glob("*.pt")
    os.utime(tried, (1_000_000, 1_000_000))
    cache.get(*points(100, seed=9), 4)  # unrelated texts: the first set is tried as a base and not used
    assert tried.stat().st_mtime == 1_000_000
    cache.get(*points(100, seed=8), 4)  # read: now it is recent
    assert tried.stat().st_mtime > 1_000_000
