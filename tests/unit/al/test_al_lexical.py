"""Hashed word n-grams (backend.al.lexical) and the ``linear`` kind that puts them beside the embedding.

The features are tested for what the kind relies on: the same row for a text in any process and in
any batch, unit length, and rows built a block at a time equal to the whole. The kind is tested on a
backbone whose embeddings carry no class at all (the encoder is not under test here): only the
words can tell the classes apart."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import zlib

import numpy
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.al import lexical, propagation
from backend.al.config import EngineConfig
from backend.al.datasets import load_tsv
from backend.al.kinds import kind_class
from backend.al.kinds.base import Model
from backend.al.kinds.linear import LEXICAL_PRIOR, lexical_scale, scores
from backend.al.learner import ActiveLearner
from tests.unit.al.conftest import DATA

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
WORDS = st.text(alphabet=st.sampled_from("abc dé.,?\n1"), max_size=40)


def test_grams_are_words_pairs_and_the_opening():
    assert lexical.grams("How many people live in Paris?") == [
        "how", "many", "people", "live", "in", "paris",
        "how many", "many people", "people live", "live in", "in paris", "^how", "^how many"]
    assert lexical.grams(" ?! ") == []
    assert lexical.features(["", "?!"]).dense().abs().sum() == 0  # no word: an all-zero row


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(WORDS, max_size=12), bits=st.integers(2, 12))
def test_rows_are_unit_length_in_range_and_independent_of_the_batch(texts, bits):
    rows = lexical.features(texts, bits)
    dense = rows.dense()
    assert dense.shape == (len(texts), 2 ** bits) and rows.width == 2 ** bits
    norms = dense.norm(dim=1)
    has_words = torch.tensor([bool(lexical.grams(t)) for t in texts], dtype=torch.bool)
    # a text whose n-grams all cancel in their buckets (signed hashing) may come out empty too
    assert torch.all((norms - 1).abs()[norms > 0] < 1e-5) and torch.all(norms[~has_words] == 0)
    for i, text in enumerate(texts):  # one text alone gives its row in the batch
        assert torch.equal(lexical.features([text], bits).dense()[0], dense[i])
    for start in range(len(texts) + 1):
        assert torch.equal(rows.dense(start, start + 3), dense[start:start + 3])
    order = list(reversed(range(len(texts))))
    assert torch.equal(rows.take(order).dense(), dense[order])


def by_the_definition(texts: list[str], bits: int, opening: bool) -> list[dict[int, float]]:
    """Each text's row the slow, obvious way: CRC-32 of every gram string, signed bucket sums, damped, unit length."""
    out = []
    for text in texts:
        sums: dict[int, int] = {}
        for gram in lexical.grams(text, opening):
            h = zlib.crc32(gram.encode("utf-8"))
            sums[h % 2 ** bits] = sums.get(h % 2 ** bits, 0) + (-1 if h >= 2 ** 31 else 1)
        damped = {j: math.copysign(math.log1p(abs(v)), v) for j, v in sums.items() if v}
        norm = math.sqrt(sum(v * v for v in damped.values()))
        out.append({j: v / norm for j, v in damped.items()})
    return out


def assert_rows_by_the_definition(texts: list[str], bits: int, opening: bool) -> None:
    rows = lexical.features(texts, bits, opening)
    for i, want in enumerate(by_the_definition(texts, bits, opening)):
        lo, hi = int(rows.indptr[i]), int(rows.indptr[i + 1])
        got = dict(zip(rows.indices[lo:hi].tolist(), rows.values[lo:hi].tolist(), strict=True))
        assert got.keys() == want.keys() and rows.indices[lo:hi].tolist() == sorted(want), texts[i]
        assert all(abs(got[j] - want[j]) < 1e-6 for j in want), texts[i]


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(alphabet=st.sampled_from("ab dé.?\nßx日"), max_size=30), max_size=10),
       bits=st.integers(1, 16), opening=st.booleans())
def test_rows_are_what_the_grams_definition_gives(texts, bits, opening):
    """features() derives pairs' checksums from their words' (CRC-32 is linear) without building a
    gram string: the buckets and values are the definition's, one-word texts and non-ASCII included."""
    assert_rows_by_the_definition(texts, bits, opening)


def test_rows_are_what_the_grams_definition_gives_on_real_text():
    for name in ("agnews", "clinc150"):
        texts, _ = load_tsv(DATA / name / "pool.tsv")
        assert_rows_by_the_definition(texts[:300] + ["x" * 500 + " y", "Été"], lexical.BITS, True)


def test_a_text_gets_the_same_row_in_another_process():
    texts = ["Who invented the telephone?", "Stocks fell sharply on Monday", "book a table for two"]
    code = ("import json, sys; from backend.al import lexical; "
            "print(json.dumps([sorted(lexical.row(t).items()) for t in json.loads(sys.argv[1])]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(texts)], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    theirs = [[(j, v) for j, v in row] for row in json.loads(out)]
    assert theirs == [sorted(lexical.row(t).items()) for t in texts]
    # and the bucket is CRC-32's, which is fixed by its standard, not by this interpreter
    assert set(lexical.row("paris", 10)) == {zlib.crc32(g.encode()) & 1023 for g in ("paris", "^paris")}


def test_the_ngram_scale_follows_labels_per_class_up_to_its_cap():
    assert lexical_scale(0.04, 0.5) == pytest.approx(0.2)  # 4 labels a class: the prior floor holds
    assert lexical_scale(0.25 * LEXICAL_PRIOR, 0.5) == pytest.approx(0.5)
    assert lexical_scale(5.0, 0.5) == 0.5  # capped: then the n-grams' prior is l2 / cap^2, like the embedding's
    assert lexical_scale(5.0, 0.0) == 0.0
    scales = [lexical_scale(l2, 0.5) for l2 in (0.001, 0.01, 0.1, 0.2, 1, 10)]
    assert scales == sorted(scales)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 30), start=st.integers(0, 30), length=st.integers(0, 30), seed=st.integers(0, 10**6))
def test_scores_with_ngrams_do_not_depend_on_the_other_rows(n, start, length, seed):
    g = torch.Generator().manual_seed(seed)
    texts = [f"w{int(a)} w{int(b)}" for a, b in torch.randint(0, 50, (n, 2), generator=g)]
    x = torch.randn(n, 6, generator=g)
    weights, bias = torch.randn(2, 6 + 16, 3, generator=g), torch.randn(3, generator=g)
    whole = scores(x, weights, bias, lexical.features(texts, 4), 0.5, block=8)
    part = scores(x[start:start + length], weights, bias, lexical.features(texts[start:start + length], 4), 0.5,
                  block=8)
    assert torch.equal(part, whole[start:start + length])
    dense = torch.cat([x, 0.5 * lexical.features(texts, 4).dense()], dim=1)
    assert torch.allclose(whole, scores(dense, weights, bias, block=8), atol=1e-5)


class NoSignalBackbone:
    """A backbone whose embeddings are random unit vectors, one per text: no class in them."""

    def __init__(self, config: EngineConfig) -> None:
        self.config, self.encoder_path, self.identity = config, "random", "random"

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def embed(self, texts, progress=None, digests=None) -> torch.Tensor:
        rows = [torch.randn(16, generator=torch.Generator().manual_seed(zlib.crc32(t.encode()))) for t in texts]
        return F.normalize(torch.stack(rows), dim=1) if rows else torch.zeros(0, 16)

    def grams(self, texts, bits, digests=None) -> lexical.Rows:
        return lexical.features(texts, bits)

    def rows(self, texts, bits=0, progress=None, digests=None, snapshot=True):
        return self.embed(texts), self.grams(texts, bits) if bits else None

    def neighbours(self, x, digests, k):
        return propagation.nearest(x, k)


def keyword_texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Texts of random filler words around one keyword that decides the class."""
    g = torch.Generator().manual_seed(seed)
    filler = [f"word{i}" for i in range(60)]
    texts, labels = [], []
    for i in range(n):
        label = ["refund", "parcel"][i % 2]
        words = [filler[int(j)] for j in torch.randint(0, 60, (6,), generator=g)]
        words.insert(int(torch.randint(0, 7, (1,), generator=g)), label)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


@pytest.mark.parametrize("mode", ["linear", "reference"])
def test_the_linear_kind_learns_what_only_the_words_say(mode):
    train, train_labels = keyword_texts(200, 0)
    test, test_labels = keyword_texts(200, 1)
    classes = ["parcel", "refund"]
    targets = F.one_hot(torch.tensor([classes.index(y) for y in train_labels]), 2).float()
    gold = torch.tensor([classes.index(y) for y in test_labels])

    def accuracy(config: EngineConfig) -> tuple[float, Model]:
        kind = kind_class(mode)(NoSignalBackbone(config))
        model = kind.fit(train, targets, classes, False, None, None)
        return float((kind.mc_probs(model, test, 0, None).mean(dim=1).argmax(dim=1) == gold).float().mean()), model

    base = EngineConfig(mode=mode)
    with_words, model = accuracy(base)
    without, plain = accuracy(dataclasses.replace(base, lexical=0.0))
    assert without < 0.7  # the embeddings alone: about chance
    assert plain.state["weights"].shape[1] == 16 and plain.arch["lexical"] == 0
    if mode == "reference":  # the plain baseline stays plain
        assert with_words == without and model.arch["lexical"] == 0
        return
    assert with_words >= 0.9
    # 100 labels a class: l2 = 1, so the scale is at its cap and every bucket is a weight row
    assert model.arch["lexical"] == pytest.approx(0.5) and model.arch["lexical_bits"] == lexical.BITS
    assert model.state["weights"].shape[1] == 16 + 2 ** lexical.BITS
    # what the model saved is all scoring needs: a round trip scores the same
    again = kind_class(mode)(NoSignalBackbone(base))
    reloaded = Model.from_dict(model.to_dict())
    assert torch.equal(again.mc_probs(reloaded, test, 0, None),
                       kind_class(mode)(NoSignalBackbone(base)).mc_probs(model, test, 0, None))


def test_samples_can_keep_the_ngram_weights_at_the_fit():
    train, train_labels = keyword_texts(60, 0)
    classes = ["parcel", "refund"]
    targets = F.one_hot(torch.tensor([classes.index(y) for y in train_labels]), 2).float()
    # posterior_lexical is a choice within the Laplace samples (the bootstrap refits every weight)
    base = EngineConfig(mode="linear", strategy="bald", mc_samples=8, propagation="off", posterior="laplace")
    spread, kept = (kind_class("linear")(NoSignalBackbone(dataclasses.replace(base, posterior_lexical=p))).fit(
        train, targets, classes, False, None, None).state["weights"] for p in (True, False))
    assert spread.shape == kept.shape == (8, 16 + 2 ** lexical.BITS, 2)
    assert torch.equal(spread[:, 16:].mean(dim=0) * 0, kept[:, 16:].std(dim=0))  # n-gram rows: the fit, 8 times
    assert spread[:, 16:].std(dim=0).min() > 0 and kept[:, :16].std(dim=0).min() > 0
    fit = kind_class("linear")(NoSignalBackbone(dataclasses.replace(base, strategy="margin"))).fit(
        train, targets, classes, False, None, None).state["weights"]  # margin: the fit itself, T = 1
    assert fit.shape[0] == 1 and torch.equal(kept[0, 16:], fit[0, 16:])


def test_a_lexical_weight_out_of_range_is_refused():
    with pytest.raises(ValueError, match="lexical"):
        EngineConfig(lexical=-0.1)


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(WORDS, max_size=10), bits=st.integers(1, 16), width=st.sampled_from([1, 3, 64]))
def test_packed_rows_read_back_exactly_and_rows_that_do_not_fit_are_left_out(texts, bits, width):
    rows = lexical.features(texts, bits)
    packed, fits = lexical.pack(rows, width)
    assert packed.shape == (len(texts), 2 * width)
    assert fits.tolist() == (rows.indptr.diff() <= width).tolist()
    assert not packed[~fits].any()
    kept = numpy.flatnonzero(fits)
    assert_same_rows(lexical.unpack(packed[fits], bits), rows.take(torch.from_numpy(kept)))
    # texts read from two widths and a fresh part, put back in order
    wide, _ = lexical.pack(rows, 1024)
    parts = [(kept, lexical.unpack(packed[fits], bits)), (numpy.flatnonzero(~fits)[::2],
             lexical.unpack(wide[~fits][::2], bits)), (numpy.flatnonzero(~fits)[1::2], rows.take(
             torch.from_numpy(numpy.flatnonzero(~fits)[1::2])))]
    assert_same_rows(lexical.merge([p for p in parts if len(p[0])], len(texts), bits), rows)
    with pytest.raises(ValueError, match="once each"):  # text 0 given, text 1 not
        lexical.merge([(numpy.zeros(1, dtype=numpy.int64), lexical.features(["a"], bits))], 2, bits)


def test_the_learner_caches_rows_beside_the_embeddings_and_reads_them_back_bit_for_bit(tiny_bert, tmp_path,
                                                                                       monkeypatch):
    texts, _ = load_tsv(DATA / "agnews" / "pool.tsv")
    many = " ".join(f"w{i}" for i in range(400))  # > 256 buckets: packed 1,024 wide
    texts = texts[:200] + [many, "", texts[0], "Été"]
    for bits in (10, 12):
        want = lexical.features(texts, bits)
        got = ActiveLearner(EngineConfig(encoder=str(tiny_bert)), cache_dir=tmp_path).grams(texts, bits)
        assert_same_rows(got, want)
        hashed: list[int] = []
        real = lexical.counts
        monkeypatch.setattr(lexical, "counts", lambda t, b, seen=hashed, real=real: seen.append(len(t)) or real(t, b))
        again = ActiveLearner(EngineConfig(encoder=str(tiny_bert)), cache_dir=tmp_path).grams(texts[::-1], bits)
        monkeypatch.setattr(lexical, "counts", real)
        assert_same_rows(again, lexical.features(texts[::-1], bits))
        assert hashed == []  # a warm pool is read, not hashed
    # more buckets than the widest packed row: hashed again every time, the same rows
    wide = [" ".join(f"x{i}" for i in range(3000))]
    learner = ActiveLearner(EngineConfig(encoder=str(tiny_bert)), cache_dir=tmp_path)
    assert_same_rows(learner.grams(wide, 14), lexical.features(wide, 14))
    assert_same_rows(learner.grams(wide, 14), lexical.features(wide, 14))


def assert_same_rows(a: lexical.Rows, b: lexical.Rows) -> None:
    assert a.width == b.width
    for name in ("indptr", "indices", "values"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
