"""The embedding cache's memory-mapped segments: warm pools read exactly what cold ones wrote."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.al import embeddings
from backend.al.config import EngineConfig
from backend.al.embeddings import EmbeddingCache, atomic_write, read_segment, text_digests, text_key
from backend.al.learner import ActiveLearner

POOL = [f"{w} news item {i}" for i, w in enumerate(["stocks", "team", "chip", "vote", "storm"] * 8)]


def _learner(tiny_bert, cache) -> ActiveLearner:
    return ActiveLearner(EngineConfig(encoder=str(tiny_bert)), cache_dir=cache)


def _count_encoded(learner: ActiveLearner) -> list[str]:
    """Record the texts the learner's (real) encoder is asked to encode."""
    seen: list[str] = []
    encode = learner.encoder.encode

    def counting(texts, progress=None):
        seen.extend(texts)
        return encode(texts, progress)

    learner.encoder.encode = counting
    return seen


def _trailing_zero_text() -> str:
    """A text whose SHA-1 ends in a zero byte (numpy's S20 drops those when it hands out bytes)."""
    return next(f"zero {i}" for i in range(20000) if hashlib.sha1(f"zero {i}".encode()).digest()[-1] == 0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=20))
def test_digests_are_the_hex_keys_in_bytes(texts):
    got = text_digests(texts)
    assert got.dtype == np.dtype("S20") and got.shape == (len(texts),)
    assert got.tobytes() == b"".join(bytes.fromhex(text_key(t)) for t in texts)


def test_a_warm_pool_is_read_exactly_as_it_was_encoded(tiny_bert, tmp_path):
    pool = POOL + [_trailing_zero_text(), POOL[3]]  # a repeated text, and a digest ending in 0
    cold = _learner(tiny_bert, tmp_path)
    seen = _count_encoded(cold)
    x = cold.embed(pool)
    assert len(seen) == len(set(pool))  # each distinct text encoded once
    warm = _learner(tiny_bert, tmp_path)
    seen = _count_encoded(warm)
    assert torch.equal(warm.embed(pool), x) and seen == []
    assert torch.equal(warm.embed(pool[::-3]), x.flip(0)[::3])  # any subset, any order
    assert warm.embed([]).shape[0] == 0


def test_a_changed_text_misses_and_only_it_is_encoded(tiny_bert, tmp_path):
    _learner(tiny_bert, tmp_path).embed(POOL)
    changed = list(POOL)
    changed[7] = POOL[7] + " "  # one character
    changed[9] = POOL[9].upper()
    learner = _learner(tiny_bert, tmp_path)
    seen = _count_encoded(learner)
    x = learner.embed(changed)
    assert seen == [changed[7], changed[9]]
    assert torch.equal(x, _learner(tiny_bert, tmp_path / "fresh").embed(changed))


def test_contains_says_what_lookup_finds_across_segments(tmp_path):
    cache = EmbeddingCache(tmp_path, "enc")
    texts = [f"t{i}" for i in range(30)]
    for start in range(0, 20, 5):  # four segments
        cache.store(text_digests(texts[start:start + 5]), torch.ones(5, 2))
    asked = text_digests(texts[::-1])
    held = EmbeddingCache(tmp_path, "enc").contains(asked)
    assert held.tolist() == EmbeddingCache(tmp_path, "enc").lookup(asked)[0].tolist() == [False] * 10 + [True] * 20
    assert EmbeddingCache(tmp_path, "other").contains(asked).sum() == 0


def test_encoder_work_counts_the_distinct_texts_to_encode_and_every_text_for_full_mode(tiny_bert, tmp_path):
    from backend.al.kinds.base import Model

    learner = _learner(tiny_bert, tmp_path)
    pool = POOL + [POOL[0], "new one", "new two", "new one"]
    assert learner.encoder_work(None, pool) == len(set(pool))  # cold: every distinct text once
    learner.embed(POOL)
    assert learner.encoder_work(None, pool) == 2  # warm: the two new texts
    head = Model(["a", "b"], False, learner.identity, "head", {}, 0)
    full = Model(["a", "b"], False, learner.identity, "full", {}, 0)
    assert learner.encoder_work(head, pool) == 2
    assert learner.encoder_work(full, pool) == len(pool)  # MC dropout runs the encoder on each text
    nocache = ActiveLearner(EngineConfig(encoder=str(tiny_bert)))
    nocache.embed(POOL[:10])
    assert nocache.encoder_work(None, POOL) == len(POOL) - 10


def test_another_encoder_sees_nothing(tmp_path):
    EmbeddingCache(tmp_path, "enc-a").store(text_digests(["x"]), torch.ones(1, 3))
    found, vectors = EmbeddingCache(tmp_path, "enc-b").lookup(text_digests(["x"]))
    assert not found.any() and vectors is None


def test_segments_are_merged_and_keep_every_key(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path, "enc")
    texts = [f"t{i}" for i in range(60)]
    for start in range(0, 60, 5):  # 12 stores, overlapping by one text, > MAX_SEGMENTS
        part = texts[max(0, start - 1):start + 5]
        cache.store(text_digests(part), torch.tensor([[float(t[1:]), 1.0] for t in part]))
    assert len(list(cache.segments_dir.glob("*.seg"))) <= embeddings.MAX_SEGMENTS
    found, vectors = EmbeddingCache(tmp_path, "enc").lookup(text_digests(texts + ["absent"]))
    assert found.tolist() == [True] * 60 + [False]
    assert vectors[:60, 0].tolist() == list(range(60)) and vectors[60].tolist() == [0.0, 0.0]
    retired = {p.name for p in cache.segments_dir.glob("retired/*.seg")}
    assert retired  # merged segments wait before deletion: readers elsewhere may map them
    monkeypatch.setattr(embeddings, "_STALE_S", -1)
    for i in range(embeddings.MAX_SEGMENTS):
        cache.store(text_digests([f"more {i}"]), torch.ones(1, 2))
    assert not retired & {p.name for p in cache.segments_dir.glob("retired/*.seg")}
    assert EmbeddingCache(tmp_path, "enc").lookup(text_digests(texts))[0].all()


def test_a_reader_survives_a_merge_by_another_process(tmp_path):
    cache = EmbeddingCache(tmp_path, "enc")
    for i in range(3):
        cache.store(text_digests([f"a{i}"]), torch.full((1, 4), float(i)))
    reader = EmbeddingCache(tmp_path, "enc")
    assert reader.lookup(text_digests(["a0", "a1", "a2"]))[0].all()  # segments now open in the reader
    cache.merge(sorted(cache.segments_dir.glob("*.seg")))  # unlinks what the reader has mapped
    assert len(list(cache.segments_dir.glob("*.seg"))) == 1
    found, vectors = reader.lookup(text_digests(["a2", "a0", "a1"]))
    assert found.all() and vectors[:, 0].tolist() == [2.0, 0.0, 1.0]


def _store_many(root, start, count):
    cache = EmbeddingCache(root, "shared")
    for i in range(start, start + count, 4):
        cache.store(text_digests([f"text {j}" for j in range(i, i + 4)]),
                    torch.arange(i, i + 4, dtype=torch.float32).unsqueeze(1).repeat(1, 3))


def test_concurrent_writers_and_merges_lose_nothing(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_store_many, args=(tmp_path, k * 400, 400)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    found, vectors = EmbeddingCache(tmp_path, "shared").lookup(text_digests([f"text {i}" for i in range(1200)]))
    assert found.all() and vectors[:, 2].tolist() == list(range(1200))
    assert not list((tmp_path).rglob("*.tmp"))


def test_an_unreadable_segment_is_skipped_and_its_texts_encoded_again(tiny_bert, tmp_path, caplog):
    x = _learner(tiny_bert, tmp_path).embed(POOL[:4])
    learner = _learner(tiny_bert, tmp_path)
    (segment,) = learner.cache.segments_dir.glob("*.seg")
    segment.write_bytes(segment.read_bytes()[:-10])  # truncated (a writer never publishes this)
    with pytest.raises(ValueError, match="truncated"):
        read_segment(segment)
    seen = _count_encoded(learner)
    with caplog.at_level(logging.WARNING):
        assert torch.equal(learner.embed(POOL[:4]), x)
    assert seen == POOL[:4] and "unreadable segment" in caplog.text


def test_a_cache_of_the_old_shard_format_is_read_and_moved_into_segments(tiny_bert, tmp_path):
    pool = POOL[:6] + [_trailing_zero_text()]
    x = _learner(tiny_bert, tmp_path / "reference").embed(pool)
    old = _learner(tiny_bert, tmp_path / "old").cache.dir
    by_shard: dict[str, dict] = {}
    for text, vec in zip(pool, x, strict=True):
        shard = by_shard.setdefault(text_key(text)[:2], {"keys": [], "vectors": []})
        shard["keys"].append(text_key(text))
        shard["vectors"].append(vec)
    for prefix, shard in by_shard.items():  # the pre-segment layout: <dir>/<xx>.pt
        atomic_write(old / f"{prefix}.pt", {"keys": shard["keys"], "vectors": torch.stack(shard["vectors"])})
    shards = sorted(p.name for p in old.glob("??.pt"))
    learner = _learner(tiny_bert, tmp_path / "old")
    seen = _count_encoded(learner)
    assert torch.equal(learner.embed(pool), x) and seen == []
    assert not list(old.glob("??.pt")) and sorted(p.name for p in (old / "legacy").glob("*.pt")) == shards
    learner = _learner(tiny_bert, tmp_path / "old")
    seen = _count_encoded(learner)
    assert torch.equal(learner.embed(pool), x) and seen == []  # now read from the segments


def test_store_refuses_mismatched_shapes(tmp_path):
    cache = EmbeddingCache(tmp_path, "enc")
    with pytest.raises(ValueError, match="one vector"):
        cache.store(text_digests(["a", "b"]), torch.ones(3, 2))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=12, max_size=12), min_size=1, max_size=30, unique=True),
       st.lists(st.binary(min_size=8, max_size=8), min_size=1, max_size=3), st.integers(0, 2 ** 31))
def test_find_by_prefix_is_exact_also_where_digests_share_their_first_8_bytes(tails, heads, seed):
    # few distinct 8-byte heads for many digests: most share a prefix with others
    keys = np.array(sorted({heads[i % len(heads)] + tail for i, tail in enumerate(tails)}), dtype=embeddings.KEY)
    segment = embeddings.Segment(None, keys, np.arange(len(keys), dtype=np.float32)[:, None])
    assert np.array_equal(segment.prefixes, np.sort(segment.prefixes))
    rng = np.random.default_rng(seed)
    absent = np.array([h + bytes(rng.integers(0, 256, 12, dtype=np.uint8)) for h in heads], dtype=embeddings.KEY)
    absent = absent[~np.isin(absent, keys)]
    wanted = rng.permutation(np.concatenate([keys, absent]))
    hit, rows = segment.find(wanted)
    assert np.array_equal(hit, np.isin(wanted, keys))
    assert np.array_equal(keys[rows], wanted[hit])
