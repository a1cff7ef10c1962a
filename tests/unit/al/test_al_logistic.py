"""The logistic fit's design rows (backend.al.logistic.Design): dense columns beside sparse n-gram
rows that are never made dense, and the same fit as on their dense concatenation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.al import lexical
from backend.al.logistic import Design, fit_logistic

WORDS = st.text(alphabet=st.sampled_from("abcd ef"), max_size=30)


@settings(max_examples=40, deadline=None)
@given(a=st.lists(WORDS, max_size=8), b=st.lists(WORDS, max_size=8), bits=st.integers(2, 6), seed=st.integers(0, 99))
def test_rows_concatenate_take_and_transpose_like_their_dense_form(a, b, bits, seed):
    ra, rb = lexical.features(a, bits), lexical.features(b, bits)
    both = ra.cat(rb)
    assert torch.equal(both.dense(), torch.cat([ra.dense(), rb.dense()]))
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, max(len(both), 1), (5,), generator=g) if len(both) else torch.zeros(0, dtype=torch.int64)
    assert torch.equal(both.take(rows).dense(), both.dense()[rows])
    assert torch.equal(both.csr(torch.float64, 0.5).to_dense(), 0.5 * both.dense().double())
    assert torch.equal(both.csr_transposed(torch.float64, 0.5).to_dense(), 0.5 * both.dense().double().T)
    with pytest.raises(ValueError, match="columns"):
        ra.cat(lexical.features(b, bits + 1))


def _problem(n: int, c: int, seed: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(n, 6, generator=g), dim=1)
    y = torch.randint(0, c, (n,), generator=g)
    y[:c] = torch.arange(c)
    vocab = ["red", "green", "blue", "cat", "dog", "fish", "one", "two"]
    texts = [" ".join(vocab[int(k)] for k in torch.randint(0, len(vocab), (4,), generator=g)) + f" c{int(y[i])}"
             for i in range(n)]
    return emb, texts, F.one_hot(y, c).float()


@settings(max_examples=20, deadline=None)
@given(n=st.integers(4, 50), c=st.integers(2, 5), seed=st.integers(0, 10**6), scale=st.floats(0.05, 2.0),
       multilabel=st.booleans())
def test_the_sparse_design_fits_what_its_dense_concatenation_fits(n, c, seed, scale, multilabel):
    emb, texts, targets = _problem(max(n, c), c, seed)
    if multilabel:  # a second label on every third item
        targets[::3, 0] = 1
    design = Design(emb, lexical.features(texts, 5), scale)
    assert design.width == 6 + 32 and design.to_dense().shape == (len(texts), 38)
    items = None if multilabel else torch.rand(len(texts), generator=torch.Generator().manual_seed(seed)) + 0.5
    sparse = fit_logistic(design, targets, multilabel, 0.3, items=items)
    dense = fit_logistic(design.to_dense(), targets, multilabel, 0.3, items=items)
    x = design.to_dense().double()

    def probs(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x @ w + b) if multilabel else torch.softmax(x @ w + b, dim=1)
    assert (probs(*sparse[:2]) - probs(*dense[:2])).abs().max() < 1e-4  # the same optimum
    again = fit_logistic(design, targets, multilabel, 0.3, items=items)
    assert torch.equal(again[0], sparse[0]) and torch.equal(again[1], sparse[1])  # deterministic


def test_the_multilabel_gradient_is_the_objectives():
    emb, texts, targets = _problem(30, 3, 7)
    targets[::2, 1] = 1
    pos = torch.tensor([1.0, 2.5, 0.7])
    w, b, _ = fit_logistic(Design(emb, lexical.features(texts, 4), 0.8), targets, True, 0.5, pos)
    x = Design(emb, lexical.features(texts, 4), 0.8).to_dense().double()
    w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
    loss = F.binary_cross_entropy_with_logits(x @ w + b, targets.double(), pos_weight=pos.double(),
                                              reduction="sum") + 0.25 * (w * w).sum()
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert max(gw.abs().max(), gb.abs().max()) < 1e-4 * len(x)  # stationary: the convex optimum


def test_designs_that_do_not_line_up_are_refused():
    emb, texts, targets = _problem(10, 2, 0)
    with pytest.raises(ValueError, match="sparse ones"):
        Design(emb, lexical.features(texts[:5], 4), 1.0)
    with pytest.raises(ValueError, match="scales"):
        Design(emb, lexical.features(texts, 4), 1.0).cat(Design(emb, lexical.features(texts, 4), 0.5))
    with pytest.raises(ValueError, match="targets"):
        fit_logistic(Design(emb), targets[:5], False, 1.0)


def test_a_fit_on_more_threads_is_the_same_optimum_and_repeats_its_own_bits():
    g = torch.Generator().manual_seed(3)
    n, c = 3000, 4  # big enough for BLAS to split the products between threads
    emb = F.normalize(torch.randn(n, 64, generator=g), dim=1)
    targets = F.one_hot(torch.randint(0, c, (n,), generator=g), c).float()
    texts = [f"w{int(k)} w{int(k) % 7}" for k in torch.randint(0, 500, (n,), generator=g)]
    design = Design(emb, lexical.features(texts, 8), 0.5)
    before = torch.get_num_threads()
    one = fit_logistic(design, targets, False, 0.1)
    two = fit_logistic(design, targets, False, 0.1, threads=2)
    again = fit_logistic(design, targets, False, 0.1, threads=2)
    assert torch.get_num_threads() == before  # the thread count is restored
    # Sums in another order can send L-BFGS down another path to the optimum (on one CPU 1e-14 apart in
    # the weights, on another 405 against 218 steps on these random labels): the same optimum means
    # the same objective and the same probabilities, to the convergence tolerance.
    assert abs(one[2]["train_loss"] - two[2]["train_loss"]) < 1e-8
    x = design.to_dense().double()
    assert (torch.softmax(x @ one[0] + one[1], 1) - torch.softmax(x @ two[0] + two[1], 1)).abs().max() < 1e-3
    assert torch.equal(two[0], again[0]) and torch.equal(two[1], again[1])
