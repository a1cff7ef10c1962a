"""Label propagation (backend.al.propagation) and the ``linear`` kind's pseudo-labels from the pool.

The graph, spreading and the k-fold check are tested on synthetic clusters whose answer is known;
the kind is tested on a backbone whose embeddings are those clusters (the encoder is not what is
under test here), with the setting ``auto``, ``on`` and ``off``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.al import lexical, propagation
from backend.al.config import EngineConfig
from backend.al.embeddings import text_digests
from backend.al.kinds import kind_class


def clusters(per: int, c: int, d: int, spread_: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """c well-separated clusters of ``per`` unit vectors each: (c * per, d) and their classes."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(d)[:c]
    x = centres.repeat_interleave(per, 0) + spread_ * torch.randn(c * per, d, generator=g)
    return F.normalize(x, dim=1), torch.arange(c).repeat_interleave(per)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(3, 300), d=st.integers(2, 16), k=st.integers(1, 12), seed=st.integers(0, 10**6))
def test_the_graph_is_symmetric_normalised_and_loop_free(n, d, k, seed):
    x = F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)
    graph = propagation.graph_of(*propagation.nearest(x, k)).to_dense()
    assert torch.allclose(graph, graph.T, atol=1e-6)
    assert torch.all(graph.diagonal() == 0)
    assert torch.all(graph >= 0)
    # D^-1/2 W D^-1/2: its largest eigenvalue is 1 when every node has an edge of positive weight
    assert torch.linalg.eigvalsh(graph.double()).max() <= 1 + 1e-5


def test_the_graph_links_each_text_to_its_nearest():
    x, y = clusters(20, 3, 8, 0.05, 0)
    graph = propagation.graph_of(*propagation.nearest(x, 5)).to_dense()
    linked = graph > 0
    assert torch.all(linked.sum(dim=1) >= 5)
    assert not torch.any(linked & (y[:, None] != y[None, :]))  # tight, far-apart clusters: no edge across
    with pytest.raises(ValueError, match="at least 2"):
        propagation.nearest(x[:1])


def test_spreading_labels_each_cluster_from_one_seed():
    x, y = clusters(30, 4, 8, 0.05, 1)
    graph = propagation.graph_of(*propagation.nearest(x))
    seeds = torch.tensor([0, 30, 60, 90])
    f = propagation.spread(graph, seeds, y[seeds], 4)
    assert torch.equal(f.argmax(dim=1), y)
    pseudo = propagation.pseudo_labels(f, torch.arange(120))
    assert torch.equal(pseudo.classes, y[pseudo.rows]) and pseudo.rows.numel() == 120
    assert torch.all(pseudo.confidence >= propagation.MIN_CONFIDENCE)
    strict = propagation.pseudo_labels(f, torch.arange(120), min_confidence=1.01)
    assert strict.rows.numel() == 0
    with pytest.raises(ValueError, match="seed rows"):
        propagation.spread(graph, seeds, y[:3], 4)


def test_a_class_with_a_single_label_gives_no_pseudo_labels():
    x, y = clusters(30, 3, 8, 0.05, 4)
    graph = propagation.graph_of(*propagation.nearest(x))
    seeds = torch.tensor([0, 1, 30, 31, 60])  # the third class has one label
    f = propagation.spread(graph, seeds, y[seeds], 3)
    every = propagation.pseudo_labels(f, torch.arange(90), seed_classes=y[seeds], min_labels=1)
    assert set(every.classes.tolist()) == {0, 1, 2}
    kept = propagation.pseudo_labels(f, torch.arange(90), seed_classes=y[seeds])
    assert set(kept.classes.tolist()) == {0, 1}  # the same rows, less the single label's class
    assert torch.equal(kept.rows, every.rows[every.classes != 2])


def test_a_component_without_labels_gets_no_pseudo_label():
    x, y = clusters(15, 2, 8, 0.02, 2)
    graph = propagation.graph_of(*propagation.nearest(x, 3))  # the two clusters are not linked
    f = propagation.spread(graph, torch.tensor([0]), torch.tensor([0]), 2)
    assert torch.all(f[15:] == 0)
    assert set(propagation.pseudo_labels(f, torch.arange(30)).rows.tolist()) <= set(range(15))


def test_the_check_uses_pseudo_labels_only_when_the_fit_labels_held_out_labels_better_with_them():
    x, y = clusters(25, 3, 8, 0.05, 3)
    graph = propagation.graph_of(*propagation.nearest(x))
    seeds = torch.arange(0, 75, 3)  # 25 labels across the three clusters
    pool = torch.tensor([i for i in range(75) if i % 3])
    seen = []

    def better_with(train, held, pseudo):
        seen.append(pseudo)
        return y[seeds[held]] if pseudo is not None else (y[seeds[held]] + 1) % 3

    check = propagation.helps(graph, seeds, y[seeds], 3, better_with, seed=0, pool_rows=pool)
    assert check.helps and (check.spread_correct, check.plain_correct, check.held_out) == (25, 0, 25)
    given = [p for p in seen if p is not None]
    assert len(given) == len(seen) / 2 == propagation.FOLDS
    for pseudo in given:  # pool rows only, labelled as their cluster
        assert set(pseudo.rows.tolist()) <= set(pool.tolist()) and torch.equal(pseudo.classes, y[pseudo.rows])
    capped = []
    propagation.helps(graph, seeds, y[seeds], 3, lambda t, h, p: capped.append(p) or y[seeds[h]], seed=0,
                      pool_rows=pool, check_pseudo=7)
    assert all(p.rows.numel() == 7 for p in capped if p is not None)

    tie = propagation.helps(graph, seeds, y[seeds], 3, lambda t, h, p: y[seeds[h]], seed=0, pool_rows=pool)
    assert not tie.helps and tie.spread_correct == tie.plain_correct == 25  # a tie is not enough
    worse = propagation.helps(graph, seeds, y[seeds], 3, lambda t, h, p: better_with(t, h, None if p else 1),
                              seed=0, pool_rows=pool)
    assert not worse.helps
    few = propagation.helps(graph, seeds[:4], y[seeds[:4]], 3, better_with, seed=0, pool_rows=pool)
    assert (few.held_out, few.helps) == (0, False)


def test_the_sample_is_the_smallest_digests_in_pool_order_and_barely_moves():
    digests = text_digests([f"text {i}" for i in range(1000)])
    assert torch.equal(propagation.sample_by_digest(digests[:5], 10), torch.arange(5))
    a = propagation.sample_by_digest(digests, 100)
    assert a.numel() == 100 and torch.equal(a, a.sort().values)
    assert set(digests[a.numpy()]) == set(np.sort(digests)[:100])
    shuffled = np.random.default_rng(0).permutation(1000)  # the same texts in another order: the same sample
    again = propagation.sample_by_digest(digests[shuffled], 100).numpy()
    assert set(digests[shuffled][again]) == set(digests[a.numpy()])
    gone = np.delete(digests, a[:3].numpy())  # three sampled texts labelled: three others come in
    assert len(set(gone[propagation.sample_by_digest(gone, 100).numpy()]) & set(digests[a.numpy()])) == 97


class ClusterBackbone:
    """A backbone whose embedding of text "i" is row i of fixed cluster vectors."""

    def __init__(self, config: EngineConfig, x: torch.Tensor) -> None:
        self.config, self.x = config, x
        self.encoder_path, self.identity = "clusters", "clusters"
        self.embedded: list[int] = []

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def embed(self, texts, progress=None, digests=None) -> torch.Tensor:
        self.embedded.append(len(texts))
        return self.x[[int(t) for t in texts]]

    def grams(self, texts, bits, digests=None) -> lexical.Rows:
        return lexical.features(texts, bits)

    def rows(self, texts, bits=0, progress=None, digests=None, snapshot=True):
        return self.embed(texts), self.grams(texts, bits) if bits else None

    def neighbours(self, x, digests, k):
        return propagation.nearest(x, k)


def chains(per: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two parallel chains of texts, class A above class B, and 12 labels, most of A's at one end
    and most of B's at the other: a fit to the labels alone splits the chains by end, wrong for
    the lone labels at the far ends; the chains' pseudo-labels teach it above/below.
    Returns x (2 * per, 3) unit rows, classes (2 * per,) and the labelled rows (12,)."""
    t = torch.linspace(-2, 2, per)
    a = torch.stack([t, torch.full_like(t, 0.3), torch.ones_like(t)], dim=1)
    b = torch.stack([t, torch.full_like(t, -0.3), torch.ones_like(t)], dim=1)
    ends = [0, 1, 2, 3, 4, per - 1]  # A: five at the left end, one at the right; B mirrored
    labelled = torch.tensor(ends + [2 * per - 1 - i for i in ends])
    return F.normalize(torch.cat([a, b]), dim=1), torch.arange(2).repeat_interleave(per), labelled


def _problem(setting: str, data=None, kind: str = "linear", check_when: str = "inline"):
    """(the kind on a ClusterBackbone, labelled texts, their one-hot targets, the pool's texts, classes)."""
    x, y, labelled = data if data is not None else (*clusters(200, 4, 16, 0.25, 4), None)
    n, c, per = len(y), int(y.max()) + 1, len(y) // 4
    if labelled is None:
        labelled = torch.tensor([j * per + i for j in range(4) for i in (5, per // 2, per - 5)])  # 3 in each quarter
    pool = [str(i) for i in range(n) if i not in set(labelled.tolist())]
    config = dataclasses.replace(EngineConfig(), propagation=setting, propagation_pool=300,
                                 propagation_check=check_when)
    backbone = ClusterBackbone(config, x)
    return (kind_class(kind)(backbone), [str(i) for i in labelled.tolist()], F.one_hot(y[labelled], c).float(),
            pool, list("ABCD")[:c])


def _fit(setting: str, data=None, kind: str = "linear", multilabel: bool = False, check_when: str = "inline",
         check: propagation.Check | None = None):
    model_kind, texts, targets, pool, classes = _problem(setting, data, kind, check_when)
    model = model_kind.fit(texts, targets, classes, multilabel, None, None, pool=pool, check=check)
    return model, model_kind.backbone


def test_auto_adds_pseudo_labels_only_where_they_win_the_check():
    model, _ = _fit("auto", chains(100))
    with_pseudo, without, held = model.stats["propagation_check"]
    assert held == 12 and with_pseudo == 12 and without <= 10  # the lone far-end labels
    assert model.stats["propagation_pool"] == 188 and model.stats["pseudo_labels"] == 188
    x, y = clusters(100, 4, 16, 0.05, 5)  # tight clusters: the plain fit is right too, a tie is not a win
    five_each = torch.tensor([j * 100 + i for j in range(4) for i in (5, 25, 50, 75, 95)])
    model, _ = _fit("auto", (x, y, five_each))
    spread_correct, plain_correct, held = model.stats["propagation_check"]
    assert spread_correct == plain_correct == held == 20 and model.stats["pseudo_labels"] == 0


def test_auto_needs_as_many_labels_a_class_as_folds():
    assert propagation.checkable(10, 2) and not propagation.checkable(9, 2)
    assert not propagation.checkable(500, 150)  # CLINC150 at 500 labels: 3.3 a class
    model, backbone = _fit("auto")  # 12 labels over 4 classes
    assert model.stats["pseudo_labels"] == 0 and isinstance(model.stats["propagation_check"], str)
    assert backbone.embedded == [12]  # no check and no graph: the pool was never embedded


def test_on_adds_pseudo_labels_without_the_check():
    model, _ = _fit("on")
    assert model.stats["propagation_pool"] == 300  # the seeded sample, not all 788
    assert model.stats["pseudo_labels"] > 250 and "propagation_check" not in model.stats
    assert model.n_train == 12  # pseudo-labels are not labels


def test_off_the_reference_and_multi_label_fit_the_labels_alone():
    for model, backbone in (_fit("off"), _fit("on", kind="reference"), _fit("on", multilabel=True)):
        assert "pseudo_labels" not in model.stats
        assert backbone.embedded == [12]  # the pool was never embedded


def test_an_unknown_propagation_setting_is_refused():
    with pytest.raises(ValueError, match="propagation must be one of auto, on, off"):
        EngineConfig(propagation="sometimes")
    with pytest.raises(ValueError, match="propagation_pool must be >= 1"):
        EngineConfig(propagation_pool=0)


def test_the_check_fits_side_by_side_give_what_they_give_one_after_the_other():
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 4):  # 4: the ten fits run on a pool of 4 threads
            torch.set_num_threads(threads)
            results.append(_fit("auto", chains(100))[0])
    finally:
        torch.set_num_threads(before)
    one, four = results
    assert one.stats == four.stats and one.stats["propagation_check"][2] == 12
    assert torch.equal(one.state["weights"], four.state["weights"])


def test_a_deferred_check_is_the_inline_one_run_apart_and_the_fit_that_reads_it_runs_none(monkeypatch):
    inline, _ = _fit("auto", chains(100))
    model_kind, texts, targets, pool, classes = _problem("auto", chains(100), check_when="deferred")
    check = model_kind.check_propagation(texts, targets, False, pool)
    assert check.as_list() == inline.stats["propagation_check"] and check.helps

    def no_check(*args, **kwargs):
        raise AssertionError("a deferred fit ran the check")

    monkeypatch.setattr(propagation, "helps", no_check)
    deferred = model_kind.fit(texts, targets, classes, False, None, None, pool=pool, check=check)
    assert deferred.stats == {**inline.stats, "propagation_checked_here": False}
    assert deferred.stats["pseudo_labels"] == 188
    assert torch.equal(deferred.state["weights"], inline.state["weights"])


def test_a_deferred_fit_with_no_check_yet_checks_its_own_labels_and_with_a_failed_one_never_reads_the_pool():
    from backend.al.learner import check_made

    inline, _ = _fit("auto", chains(100))
    first, _ = _fit("auto", chains(100), check_when="deferred")  # no check made yet: as inline
    assert first.stats == {**inline.stats, "propagation_checked_here": True}
    assert torch.equal(first.state["weights"], inline.state["weights"])
    assert check_made(first).as_list() == inline.stats["propagation_check"] == [12, 10, 12]
    failed = propagation.Check(9, 10, 12)
    model, backbone = _fit("auto", chains(100), check_when="deferred", check=failed)
    kept = ("propagation_check", "propagation_checked_here", "pseudo_labels")
    assert [model.stats[k] for k in kept] == [[9, 10, 12], False, 0]
    assert backbone.embedded == [12]
    plain, _ = _fit("off", chains(100))
    assert torch.equal(model.state["weights"], plain.state["weights"])  # the labels alone
    model, _ = _fit("on", chains(100), check_when="deferred", check=failed)  # on: no check is read
    assert model.stats["pseudo_labels"] == 188 and "propagation_check" not in model.stats


def test_the_check_is_only_run_where_auto_would_use_it():
    for setting, kind, multilabel in (("on", "linear", False), ("off", "linear", False),
                                      ("auto", "reference", False), ("auto", "linear", True)):
        model_kind, texts, targets, pool, _ = _problem(setting, chains(100), kind, "deferred")
        assert model_kind.check_propagation(texts, targets, multilabel, pool) is None
        assert model_kind.backbone.embedded == []
    model_kind, texts, targets, pool, _ = _problem("auto", kind="linear", check_when="deferred")
    assert model_kind.check_propagation(texts, targets, False, pool) is None  # 3 labels a class
    assert model_kind.check_propagation(texts, targets, False, []) is None
    with pytest.raises(ValueError, match="propagation_check must be one of deferred, inline"):
        EngineConfig(propagation_check="later")


@pytest.mark.parametrize("check_when", ["deferred", "inline"])
def test_the_simulation_fits_each_round_with_the_previous_rounds_check(check_when, agnews_pool, tiny_bert, tmp_path):
    from backend.al.learner import ActiveLearner
    from backend.al.simulate import run_one

    texts, labels = agnews_pool
    config = dataclasses.replace(EngineConfig(), encoder=str(tiny_bert), mode="linear", propagation_check=check_when)
    learner = ActiveLearner(config, tmp_path / "cache")
    passed, checked = [], []
    fit, check_propagation = learner.fit, learner.check_propagation

    def recording_fit(*args, **kwargs):
        passed.append(kwargs["check"])
        return fit(*args, **kwargs)

    def recording_check(*args, **kwargs):
        checked.append((len(args[0]), check_propagation(*args, **kwargs)))
        return checked[-1][1]

    learner.fit, learner.check_propagation = recording_fit, recording_check
    rows_check = []
    fitted = learner.fit

    def fit_and_note(*args, **kwargs):
        model = fitted(*args, **kwargs)
        rows_check.append(model.stats.get("propagation_check"))
        return model

    learner.fit = fit_and_note
    rows = run_one(learner, (texts[:150], labels[:150]), (texts[6000:6040], labels[6000:6040]),
                   sorted(set(labels)), seed=1, seed_size=20, batch_size=20, budget=60)
    assert [r["labels"] for r in rows] == [20, 40, 60]
    if check_when == "inline":
        assert passed == [None, None, None] and checked == []
        return
    # after every fit but the last, on its labels: the first fit's own check, then the check "job"'s
    assert [n for n, _ in checked] == [40]
    assert passed[0] is None and passed[1].as_list() == rows_check[0] and passed[2] is checked[0][1]
    assert passed[1].held_out == 20 and checked[0][1].held_out == 40
