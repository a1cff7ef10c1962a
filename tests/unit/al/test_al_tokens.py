"""Token ids tokenized once: cache keys, invalidation, persistence, and token-budget batches."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoTokenizer

from backend.al.embeddings import text_key
from backend.al.encoder import TextEncoder
from backend.al.tokens import (
    TEXTS_PER_THREAD,
    TokenCache,
    budget_batches,
    encode_ids,
    from_lists,
    tokenize,
    tokenizer_identity,
    tokenizing_threads,
)

TEXTS = ["stocks fell sharply today", "the team won the cup final after a long and tiring season", "a",
         "stocks fell sharply today", "new chip doubles battery life"]


class CountingTokenizer:
    """The real fast tokenizer, counting the texts it is asked to tokenize."""

    def __init__(self, path) -> None:
        self.inner = AutoTokenizer.from_pretrained(path)
        self.texts = 0

    def __call__(self, texts, **kwargs):
        self.texts += len(texts)
        return self.inner(texts, **kwargs)


def test_cached_ids_are_the_tokenizers_own_and_each_text_is_tokenized_once(tiny_bert, tmp_path):
    tok = CountingTokenizer(tiny_bert)
    cache = TokenCache(tmp_path, tokenizer_identity(str(tiny_bert), 8))
    tokens = tokenize(tok, TEXTS, 8, cache)
    expected = tok.inner(TEXTS, truncation=True, max_length=8)["input_ids"]
    assert [tokens.ids[tokens.offsets[i]:tokens.offsets[i + 1]].tolist() for i in range(5)] == expected
    assert tokens.lengths == [len(x) for x in expected] and max(tokens.lengths) == 8
    assert tok.texts == 4  # the repeated text once
    tokenize(tok, TEXTS[::-1], 8, cache)
    assert tok.texts == 4
    # Keys are the embedding cache's: the text's SHA-1, read back by a new process from disk.
    fresh = TokenCache(tmp_path, tokenizer_identity(str(tiny_bert), 8))
    got = fresh.get([text_key(TEXTS[1]), text_key("never seen")])
    assert list(got) == [text_key(TEXTS[1])] and got[text_key(TEXTS[1])].tolist() == expected[1]


def test_a_new_max_length_or_tokenizer_file_invalidates_the_ids(tiny_bert, tmp_path):
    base = tokenizer_identity(str(tiny_bert), 8)
    assert tokenizer_identity(str(tiny_bert), 16) != base
    other = tmp_path / "other-tokenizer"
    shutil.copytree(tiny_bert, other)
    assert tokenizer_identity(str(other), 8) == base  # same files, same ids: same identity
    (other / "tokenizer_config.json").write_text((other / "tokenizer_config.json").read_text() + " ")
    assert tokenizer_identity(str(other), 8) != base
    tok = CountingTokenizer(tiny_bert)
    tokenize(tok, TEXTS, 8, TokenCache(tmp_path / "cache", base))
    tokenize(tok, TEXTS, 16, TokenCache(tmp_path / "cache", tokenizer_identity(str(tiny_bert), 16)))
    assert tok.texts == 8  # nothing read from the other length's folder
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 2


def test_budget_batches_cover_every_row_once_longest_first_within_budget():
    lengths = [5, 40, 12, 40, 1, 7, 33, 128, 9, 9]
    for budget, copies in ((100, 1), (400, 4), (10, 3), (1 << 18, 20)):
        batches = budget_batches(lengths, budget, copies)
        rows = torch.cat(batches).tolist()
        assert sorted(rows) == list(range(len(lengths)))
        assert [lengths[i] for i in rows] == sorted(lengths, reverse=True)
        for batch in batches:
            assert len(batch) == 1 or len(batch) * copies * max(lengths[i] for i in batch) <= budget
    with pytest.raises(ValueError, match="budget >= 1"):
        budget_batches(lengths, 0)


def test_padded_batches_gather_the_right_rows():
    tokens = from_lists([[101, 7, 102], [101, 102], [101, 5, 6, 7, 102]])
    ids, mask = tokens.batch(torch.tensor([2, 1]), pad_id=0)
    assert ids.tolist() == [[101, 5, 6, 7, 102], [101, 102, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]


def test_the_sorted_budget_pass_gives_the_per_text_embeddings(tiny_bert):
    encoder = TextEncoder(str(tiny_bert), max_length=16)
    together = encoder.encode(TEXTS)
    alone = torch.cat([encoder.encode([t]) for t in TEXTS])
    assert together.shape == (5, 32) and torch.allclose(together, alone, atol=1e-5)
    assert torch.equal(together[0], together[3])


@pytest.mark.parametrize("threads", [1, 3, 7])
@pytest.mark.parametrize("side", ["right", "left"])
def test_threaded_ids_equal_the_wrappers_in_order_and_leave_it_untouched(tiny_bert, threads, side):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    tok.truncation_side = side
    texts = [f"{t} {i} " * (i % 4 + 1) for i, t in enumerate(TEXTS * 4)]
    for max_length in (6, 64):
        expected = tok(texts, truncation=True, max_length=max_length)["input_ids"]
        assert encode_ids(tok, texts, max_length, threads=threads) == expected
    # The wrapper's own backend keeps its settings: padding asked of it still pads.
    padded = tok(TEXTS[:3], padding="max_length", truncation=True, max_length=12)["input_ids"]
    assert [len(x) for x in padded] == [12, 12, 12]
    assert encode_ids(tok, TEXTS[:3], 64, threads=threads) == tok(TEXTS[:3])["input_ids"]
    # the side read at each call: turning it after a first call truncates on the new side
    tok.truncation_side = "left" if side == "right" else "right"
    assert encode_ids(tok, texts, 6, threads=threads) == tok(texts, truncation=True, max_length=6)["input_ids"]


def test_tokenizing_threads_are_one_per_core_with_enough_texts_each(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(16)))
    assert tokenizing_threads(0) == 1 and tokenizing_threads(TEXTS_PER_THREAD - 1) == 1
    assert tokenizing_threads(3 * TEXTS_PER_THREAD) == 3
    assert tokenizing_threads(1_000_000) == 16
