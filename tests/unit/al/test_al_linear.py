"""The ``linear`` kind: a convex fit that reaches its optimum, Laplace samples, shard-exact scoring,
checkpoints; and old ``head`` checkpoints still scored by their own kind under the new default."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.al.config import EngineConfig
from backend.al.kinds.linear import default_l2, posterior_for, scores
from backend.al.learner import ActiveLearner
from backend.al.logistic import bootstrap_samples, fit_logistic, laplace_samples
from backend.al.store import ModelStore

TEXTS = ["stocks fell sharply today", "the team won the cup final", "new chip doubles battery life",
         "election results are in", "quarterly profits beat forecasts", "striker scores twice",
         "senate passes the budget", "a phone with a faster chip"]
LABELS = ["Business", "Sports", "Sci/Tech", "World", "Business", "Sports", "World", "Sci/Tech"]
CLASSES = ["Business", "Sci/Tech", "Sports", "World"]


def _problem(n: int, d: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g), dim=1)
    y = torch.randint(0, c, (n,), generator=g)
    y[:c] = torch.arange(c)  # every class present
    return x, F.one_hot(y, c).float()


def _objective(x, t, w, b, l2, weights=None):
    item = torch.ones(len(x), dtype=torch.float64) if weights is None else t.double() @ weights.double()
    logits = x.double() @ w + b
    return (item * F.cross_entropy(logits, t.argmax(1), reduction="none")).sum() + 0.5 * l2 * (w * w).sum()


@settings(max_examples=20, deadline=None)
@given(n=st.integers(4, 60), d=st.integers(2, 24), c=st.integers(2, 5), seed=st.integers(0, 10**6),
       l2=st.floats(0.01, 10), weighted=st.booleans())
def test_the_fit_is_the_optimum_of_its_objective(n, d, c, seed, l2, weighted):
    x, t = _problem(max(n, c), d, c, seed)
    weights = torch.rand(c, generator=torch.Generator().manual_seed(seed)) + 0.5 if weighted else None
    w, b, _ = fit_logistic(x, t, False, l2, weights)
    w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
    loss = _objective(x, t, w, b, l2, weights)
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert max(gw.abs().max(), gb.abs().max()) < 1e-4 * max(1.0, len(x))  # stationary: the convex optimum
    again = fit_logistic(x, t, False, l2, weights)
    assert torch.equal(again[0], w.detach()) and torch.equal(again[1], b.detach())  # deterministic


def test_the_fit_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, t = _problem(120, 16, 3, 0)
    w, b, _ = fit_logistic(x, t, False, 1.0)
    ours = torch.softmax(x.double() @ w + b, dim=1)
    theirs = sklearn.LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(x.numpy(), t.argmax(1).numpy())
    assert (ours - torch.as_tensor(theirs.predict_proba(x.numpy()))).abs().max() < 1e-3


@settings(max_examples=15, deadline=None)
@given(n=st.integers(3, 40), d=st.integers(2, 16), c=st.integers(2, 4), seed=st.integers(0, 10**6))
def test_laplace_samples_centre_on_the_fit_and_shrink_with_data(n, d, c, seed):
    x, t = _problem(max(n, c), d, c, seed)
    w, b, _ = fit_logistic(x, t, False, 1.0)
    draw = laplace_samples(x, w, b, False, 1.0, 4000, torch.Generator().manual_seed(seed))
    assert draw.shape == (4000, d, c)
    assert (draw.double().mean(0) - w).abs().max() < 0.15  # prior std 1: mean of 4000 within ~5 s.e.
    assert draw.double().std(0).max() <= 1.05  # never wider than the prior
    same = laplace_samples(x, w, b, False, 1.0, 4000, torch.Generator().manual_seed(seed))
    assert torch.equal(draw, same)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(4, 40), d=st.integers(3, 12), c=st.integers(2, 4), seed=st.integers(0, 10**6),
       l2=st.floats(0.05, 5))
def test_a_fit_started_elsewhere_reaches_the_same_optimum(n, d, c, seed, l2):
    x, t = _problem(max(n, c), d, c, seed)
    w, b, _ = fit_logistic(x, t, False, l2)
    g = torch.Generator().manual_seed(seed + 1)
    start = (torch.randn(d, c, generator=g, dtype=torch.float64), torch.randn(c, generator=g, dtype=torch.float64))
    w2, b2, _ = fit_logistic(x, t, False, l2, init=start)
    same = torch.softmax(x.double() @ w + b, 1) - torch.softmax(x.double() @ w2 + b2, 1)
    assert same.abs().max() < 1e-5 and (w2 - w).abs().max() < 1e-4  # convex: the same optimum (bias up to a shift)
    with pytest.raises(ValueError, match="init of shapes"):
        fit_logistic(x, t, False, l2, init=(start[0][1:], start[1]))


@pytest.mark.parametrize("multilabel", [False, True])
def test_whole_item_weights_fit_as_repeated_rows(multilabel):
    x, t = _problem(30, 6, 3, 4)
    if multilabel:
        t[::3, 0] = 1.0  # some items carry two labels
    counts = torch.tensor([1, 2, 3] * 10)
    w, b, _ = fit_logistic(x, t, multilabel, 0.5, items=counts.double())
    repeated = torch.repeat_interleave(torch.arange(30), counts)
    w2, b2, _ = fit_logistic(x[repeated], t[repeated], multilabel, 0.5)
    assert (w - w2).abs().max() < 1e-4 and (b - b2).abs().max() < 1e-4


def test_bootstrap_samples_spread_only_where_labels_are():
    x, t = _problem(40, 8, 3, 5)
    x = torch.cat([x, torch.zeros(40, 4)], dim=1)  # 4 directions no labelled item covers
    w, b, _ = fit_logistic(x, t, False, 0.5)
    weights, biases, stats = bootstrap_samples(x, t, False, 0.5, w, b, 50, torch.Generator().manual_seed(0))
    assert weights.shape == (50, 12, 3) and biases.shape == (50, 3) and stats["bootstrap_iterations"] > 0
    assert (weights.double().mean(0) - w).abs().max() < 1e-5 and (biases.double().mean(0) - b).abs().max() < 1e-5
    assert weights[:, :8].std(0).min() > 1e-3  # the labels disagree about every covered direction ...
    assert weights[:, 8:].abs().max() < 1e-6  # ... and say nothing about the others: no spread there
    laplace = laplace_samples(x, w, b, False, 0.5, 50, torch.Generator().manual_seed(0))
    assert laplace[:, 8:].std(0).min() > 0.5  # where the Laplace samples keep the prior's
    again = bootstrap_samples(x, t, False, 0.5, w, b, 50, torch.Generator().manual_seed(0))
    assert torch.equal(weights, again[0]) and torch.equal(biases, again[1])


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10**6), c=st.integers(2, 4))
def test_bootstrap_samples_narrow_with_more_of_the_same_evidence(seed, c):
    x, t = _problem(30, 6, c, seed)
    w, b, _ = fit_logistic(x, t, False, 0.2)
    few, _, _ = bootstrap_samples(x, t, False, 0.2, w, b, 200, torch.Generator().manual_seed(seed))
    many = torch.arange(30).repeat(8)  # every item 8 times, the prior 8 times as strong: the same optimum
    w8, b8, _ = fit_logistic(x[many], t[many], False, 1.6)
    more, _, _ = bootstrap_samples(x[many], t[many], False, 1.6, w8, b8, 200, torch.Generator().manual_seed(seed))
    assert more.std(0).mean() < 0.6 * few.std(0).mean()  # ~1 / sqrt(8) of the spread


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 40), start=st.integers(0, 40), length=st.integers(0, 40), t=st.integers(1, 5),
       seed=st.integers(0, 10**6))
def test_a_rows_scores_do_not_depend_on_the_other_rows(n, start, length, t, seed):
    g = torch.Generator().manual_seed(seed)
    x, weights, bias = torch.randn(n, 12, generator=g), torch.randn(t, 12, 3, generator=g), torch.randn(3, generator=g)
    whole = scores(x, weights, bias, block=8)
    assert whole.shape == (n, t, 3)
    part = scores(x[start:start + length], weights, bias, block=8)
    assert torch.equal(part, whole[start:start + length])


def test_auto_posterior_bootstraps_from_five_labels_a_class():
    assert posterior_for("auto", 20, 4) == "bootstrap" and posterior_for("auto", 19, 4) == "laplace"
    assert posterior_for("auto", 500, 150) == "laplace" and posterior_for("auto", 750, 150) == "bootstrap"
    assert posterior_for("laplace", 10_000, 2) == "laplace" and posterior_for("bootstrap", 2, 2) == "bootstrap"


def test_default_l2_follows_labels_per_class():
    assert default_l2(500, 4) == pytest.approx(1.25)
    assert default_l2(500, 150) == pytest.approx(0.01 * 500 / 150)
    assert default_l2(0, 3) > 0


@pytest.mark.parametrize("strategy,samples,posterior", [("margin", 1, "laplace"), ("bald", 6, "laplace"),
                                                        ("bald", 6, "bootstrap")])
def test_the_linear_kind_trains_saves_and_scores(tiny_bert, tmp_path, strategy, samples, posterior):
    learner = ActiveLearner(EngineConfig(encoder=str(tiny_bert), mode="linear", strategy=strategy,
                                         mc_samples=6, posterior=posterior), tmp_path)
    model = learner.fit(TEXTS, LABELS, CLASSES)
    assert model.kind == "linear" and model.state["weights"].shape[0] == samples
    store = ModelStore(tmp_path / "models")
    loaded = store.load(1, store.save(1, model))
    probs = learner.mc_probs(loaded, TEXTS)
    assert probs.shape == (8, samples, 4)
    assert torch.allclose(probs.sum(-1), torch.ones(8, samples), atol=1e-5)
    assert (learner.predict_proba(loaded, TEXTS).argmax(1) == torch.tensor([CLASSES.index(y) for y in LABELS])).all()
    if samples > 1:
        assert probs.std(dim=1).max() > 0  # the samples disagree somewhere: BALD has something to read


@pytest.mark.parametrize("posterior", ["laplace", "bootstrap"])
def test_multi_label_linear(tiny_bert, tmp_path, posterior):
    learner = ActiveLearner(EngineConfig(encoder=str(tiny_bert), mode="linear", strategy="bald", mc_samples=3,
                                         posterior=posterior), tmp_path)
    labels = [[y] if i % 2 else [y, "World"] for i, y in enumerate(LABELS)]
    model = learner.fit(TEXTS, labels, CLASSES, multilabel=True)
    probs = learner.mc_probs(model, TEXTS)
    assert probs.shape == (8, 3, 4) and ((probs >= 0) & (probs <= 1)).all()


def test_a_head_checkpoint_is_scored_by_the_head_under_the_new_default(tiny_bert, tmp_path):
    head = ActiveLearner(EngineConfig(encoder=str(tiny_bert), mode="head", mc_samples=5), tmp_path)
    store = ModelStore(tmp_path / "models")
    saved = store.load(1, store.save(1, head.fit(TEXTS, LABELS, CLASSES)))
    default = ActiveLearner(EngineConfig(encoder=str(tiny_bert), mc_samples=5), tmp_path)
    assert saved.kind == "head"
    assert torch.equal(default.mc_probs(saved, TEXTS), head.mc_probs(saved, TEXTS))
