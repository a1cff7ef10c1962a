"""The ``linear`` kind: a frozen encoder's cached embeddings + logistic regression with a
Laplace or bootstrap posterior.

The model is convex: multinomial (or, multi-label, per-label binary) logistic regression
with an L2 prior whose strength follows the labelled set's shape (:func:`default_l2`), fitted to
convergence by full-batch L-BFGS, so its answer depends on the labelled set only (no initial
weights, no step count, no early stopping). Margin, entropy and least confidence read the fit
itself (T = 1). For BALD and variation ratios (and ambiguity routing, which reads BALD) the
model carries T weight matrices drawn from a Laplace approximation of the posterior around the
fit, Kronecker-factored as in K-FAC Laplace (Ritter, Botev & Barber 2018): class c's precision is
``max(l2, POSTERIOR_MIN_PRIOR) * I + a_c * G``, with
``G = sum_i v_i x_i x_i^T`` the labelled embeddings' second moment and ``a_c`` the mean of
``p_ic (1 - p_ic)`` at the fit; or, from 5 labels a class (``POSTERIOR=auto``, :func:`posterior_for`),
from the weighted likelihood bootstrap: T refits with the labelled items reweighted at random, each
with its own bias (:func:`backend.al.logistic.bootstrap_samples`). They are drawn once, at fit
time, and saved with the model: scoring is T small matrix products per text, the same whatever
else is scored with it (rows go through them in fixed-size blocks).

Against the MLP head (``head``): the head's fixed 200 Adam steps underfit many classes (CLINC150,
500 random labels: 0.65 accuracy against 0.76 for this fit) and its ratio of labels saved was lower
on AG News and CLINC150, higher on TREC-6; docs/BENCHMARKS.md, section 5, has the measurements.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from backend.al import lexical, propagation
from backend.al.blocks import by_blocks
from backend.al.embeddings import text_digests
from backend.al.kinds.base import Backbone, KindBase, Model, Progress, logits_to_probs, stats_of
from backend.al.logistic import POSTERIOR_MIN_PRIOR, Design, bootstrap_samples, fit_logistic, laplace_samples
from backend.al.training import class_weights

SAMPLED = ("bald", "variation_ratios")
"""Acquisition functions that read the disagreement of the T samples (the others read their mean)."""
# Rows per block of scoring: every block has exactly this many rows (see scores()).
_BLOCK = 1024

@dataclass(frozen=True)
class LinearArch:
    """The linear model's shape, saved with it: T posterior samples (0: the fit alone), and the weight
    of the hashed n-gram features (``lexical_bits`` bits) beside the embedding (0: embedding only).
    ``dim`` counts the embedding's columns; the weights have ``dim + 2 ** lexical_bits`` rows when
    ``lexical`` > 0."""

    dim: int
    l2: float
    samples: int
    lexical: float = 0.0
    lexical_bits: int = 0


@dataclass(frozen=True)
class _Graph:
    """Label spreading's graph over the labelled rows then ``pool_x``'s, which are its rows ``pool_rows``."""

    graph: torch.Tensor
    pool_x: Design
    pool_rows: torch.Tensor


LEXICAL_PRIOR = POSTERIOR_MIN_PRIOR
"""The n-gram weights' prior precision is at least this (see :func:`lexical_scale`)."""


def lexical_scale(l2: float, cap: float) -> float:
    """The n-gram block's scale beside the unit-length embedding: ``min(cap, sqrt(l2 / LEXICAL_PRIOR))``.

    Scaling a block of features by s fits as penalising its weights by l2 / s^2, so the n-gram
    weights' prior precision is ``max(LEXICAL_PRIOR, l2 / cap^2)`` while the embedding's is l2
    (0.01 x labels per class, :func:`default_l2`): with few labels per class n-grams are held at
    scikit-learn's C = 1, because single words seen once or twice a class memorise (CLINC150,
    100-500 random labels over 150 intents: -0.5 points at a fixed scale of 0.5, -4 at 1, 0 with
    this rule), and they count fully from 25 labels per class. ``cap`` <= 0: no n-grams.
    """
    return min(cap, math.sqrt(l2 / LEXICAL_PRIOR)) if cap > 0 else 0.0


def scores(x: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor, grams: lexical.Rows | None = None,
           scale: float = 0.0, block: int = _BLOCK) -> torch.Tensor:
    """Logits (N, T, C) of T weight matrices (T, D, C) and a bias (C,) or T of them (T, C) for embeddings x (N, D'),
    plus ``scale`` x their n-gram rows' products with the weights' last D - D' rows when given.

    Row i's logits depend on x[i], its n-gram row and the weights only: the embeddings go through
    the products in blocks of exactly ``block`` rows (the last one zero-padded), because BLAS picks
    its kernels, and so the last bits of a row's result, by the number of rows; the n-gram rows are
    sparse products (:func:`sparse_logits`), summed in each row's own order.
    """
    x = x.to(weights.dtype)
    d = x.shape[1]
    bias = bias if bias.dim() == 1 else bias[:, None, :]
    logits = by_blocks(x, lambda r: (torch.matmul(r, weights[:, :d]) + bias).permute(1, 0, 2), block)
    if grams is not None:
        logits += scale * sparse_logits(grams, weights[:, d:])
    return logits


def sparse_logits(rows: lexical.Rows, weights: torch.Tensor) -> torch.Tensor:
    """(N, T, C) products of sparse rows (N, K) with T weight matrices (T, K, C), as one compressed
    sparse row product (10k AG News rows, one thread: about 1 ms, against about 50 ms for the dense rows). Each
    row's result is the sum over its own entries, in their order, so it is the same whatever other
    rows are scored with it (tests/unit/al/test_al_lexical.py)."""
    t, k, c = weights.shape
    if k != rows.width:
        raise ValueError(f"weights for {k} n-gram columns, rows of {rows.width}")
    return torch.sparse.mm(rows.csr(weights.dtype), weights.permute(1, 0, 2).reshape(k, t * c)).view(len(rows), t, c)


def features(backbone: Backbone, texts: Sequence[str], scale: float, bits: int = lexical.BITS,
             progress: Progress | None = None, digests: np.ndarray | None = None, pool: bool = True) -> Design:
    """The rows of texts: their cached embeddings (N, E) beside ``scale`` x their cached hashed n-gram
    rows of ``bits`` bits (kept sparse) when scale > 0 (``Backbone.rows``: a pool's come from its
    snapshot unless ``pool`` is False; the texts are not hashed again when their ``digests`` are given)."""
    emb, grams = backbone.rows(texts, bits if scale > 0 else 0, progress, digests, snapshot=pool)
    return Design(emb.float().cpu(), grams, scale)


def pseudo_rows(pool: Design, pseudo: propagation.PseudoLabels, offset: int, n_labels: int,
                n_classes: int) -> tuple[Design, torch.Tensor, torch.Tensor]:
    """Pseudo-labels as training rows: the pool's rows ``graph row - offset``, one-hot targets (P, C)
    and weights (P,) that sum to PSEUDO_WEIGHT * n_labels."""
    weight = propagation.PSEUDO_WEIGHT * n_labels / pseudo.rows.numel()
    return (pool.take(pseudo.rows - offset), F.one_hot(pseudo.classes, n_classes).float(),
            torch.full((pseudo.rows.numel(),), weight))


BOOTSTRAP_LABELS_PER_CLASS = 5
"""``posterior=auto`` draws the bootstrap from this many labels a class on average, Laplace below."""


def posterior_for(setting: str, n_labels: int, n_classes: int) -> str:
    """The posterior the samples come from: ``setting``, or for ``auto`` by the labelled set's shape.

    The bootstrap's spread is the labels' disagreement, so with one or two labels a class it has
    none to show where no label is: every refit leaves a direction no label covers at the fit,
    where the Laplace samples keep the prior's variance (CLINC150, 150 intents, 1-3 labels a class
    up to 500 labels: PowerBALD with the bootstrap 4.35 points below random sampling on average,
    with Laplace 0.68 above). From 5 labels a class it is the better posterior (TREC-6, 10 seeds:
    PowerBALD +0.15 points against random on average with it, -0.78 with Laplace;
    docs/BENCHMARKS.md, "BALD from the bootstrap posterior").
    """
    if setting != "auto":
        return setting
    return "bootstrap" if n_labels >= BOOTSTRAP_LABELS_PER_CLASS * max(n_classes, 1) else "laplace"


L2_PER_LABEL_PER_CLASS = 0.01
"""default_l2's constant: the penalty per class relative to that class's share of the labels."""


def default_l2(n_labels: int, n_classes: int) -> float:
    """Prior precision of the weights by the labelled set's shape: 0.01 * labels per class.

    In the summed loss a class's weights see about ``n_labels / n_classes`` items, so this keeps
    the penalty's weight against each class's data constant whatever the class count: C = 1
    (scikit-learn's default, ``l2 = 1``) leaves a 150-class set with 3 labels a class fitting the
    intercepts only (CLINC150: 0.61 accuracy at 500 labels, against 0.76 at l2 = 0.02), while on
    4 classes with 125 labels each it is about right (AG News: 0.849 at l2 = 1, 0.825 at 0.02).
    """
    return L2_PER_LABEL_PER_CLASS * max(n_labels, 1) / max(n_classes, 1)


class Kind(KindBase):
    """Frozen encoder + logistic regression with a Laplace or bootstrap posterior (``MODEL_MODE=linear``)."""

    name = "linear"
    class_weighted = True  # single-label items weighted by inverse class frequency (training.class_weights)
    posterior = True  # T samples from the Laplace posterior; False: the fit alone (T = 1)
    propagates = True  # pseudo-labels from label spreading over the pool (EngineConfig.propagation)
    lexical = True  # hashed word n-grams beside the embedding (EngineConfig.lexical, lexical_scale)

    def fit(self, texts: Sequence[str], targets: torch.Tensor, classes: list[str], multilabel: bool,
            previous: Model | None, progress: Progress | None, pool: Sequence[str] = (),
            check: propagation.Check | None = None) -> Model:
        """Fit from scratch (convex: a warm start would reach the same optimum, so ``previous`` is unused).

        ``pool``: unlabelled texts; with ``propagation`` on (or ``auto`` and the check passing) the
        ones label spreading labels confidently join the fit as pseudo-labels (:func:`propagate`).
        ``check``: with ``propagation_check`` ``deferred``, the verdict of :meth:`check_propagation`
        on an earlier labelled set (None: none made yet, so the fit checks its own labels).
        """
        cfg = self.backbone.config
        targets = targets.float().cpu()
        l2 = self.l2(len(texts), targets.shape[1])
        scale, digests, x = self._design(texts, l2)
        weights = class_weights(targets, multilabel) if self.class_weighted else None
        items = None if weights is None or multilabel else targets @ weights
        pseudo, spread_stats = self.propagate(x, digests, targets, multilabel, pool, scale, progress, check)
        # The model's own fit on every thread torch may use here (1 in the simulations, the worker's cores
        # in a worker); the check's fits are single-threaded and run side by side instead.
        threads = torch.get_num_threads()
        if pseudo is not None:
            px, pt, pw = pseudo
            w, b, fit_stats = fit_logistic(x.cat(px), torch.cat([targets, pt]), False, l2,
                                           items=torch.cat([self.item_weights(targets), pw]), threads=threads)
        else:
            w, b, fit_stats = fit_logistic(x, targets, multilabel, l2, weights, threads=threads)
        # Samples only where the acquisition reads their disagreement; the others rank by the mean, for
        # which the fit itself is better than an average of samples (and T = 1 is the fit, not one sample).
        # Ambiguity routing reads BALD too (acquisition.ambiguous). The posterior's curvature is the
        # labelled items' only: pseudo-labels move the fit, not how sure it may be.
        posterior = self.posterior and cfg.mc_samples > 1 and (cfg.strategy in SAMPLED or cfg.ambiguity)
        if posterior:
            generator = torch.Generator().manual_seed(cfg.seed)
            drawn = posterior_for(cfg.posterior, len(texts), targets.shape[1])
            fit_stats = {**fit_stats, "posterior": drawn}
            if drawn == "bootstrap":
                sampled, b, boot_stats = bootstrap_samples(x, targets, multilabel, l2, w, b, cfg.mc_samples, generator,
                                                        None if items is not None else weights, items, threads)
                fit_stats = {**fit_stats, **boot_stats}
            elif cfg.posterior_lexical or not x.has_sparse:
                sampled = laplace_samples(x.to_dense(), w, b, multilabel, l2, cfg.mc_samples, generator, items)
            else:  # the n-gram weights stay at the fit; the samples spread the embedding's only
                d = x.dense.shape[1]
                fitted = x.to_dense().double() @ w + b
                part = laplace_samples(x.dense, w[:d], b, multilabel, l2, cfg.mc_samples, generator, items, fitted)
                sampled = torch.cat([part, w[d:].float().expand(part.shape[0], -1, -1)], dim=1)
        else:
            sampled = w.float().unsqueeze(0)
        arch = LinearArch(dim=int(x.dense.shape[1]), l2=l2, samples=int(sampled.shape[0]) if posterior else 0,
                          lexical=scale, lexical_bits=lexical.BITS if scale > 0 else 0)
        if progress:
            progress(1, 1)
        return Model(classes=list(classes), multilabel=multilabel, encoder=self.backbone.identity, kind=self.name,
                     state={"weights": sampled.contiguous(), "bias": b.float()}, n_train=len(texts),
                     arch=asdict(arch), stats=stats_of(targets, False, {**fit_stats, **spread_stats}))

    def _design(self, texts: Sequence[str], l2: float) -> tuple[float, np.ndarray, Design]:
        """(n-gram scale, the texts' digests, their training rows) for a labelled set at prior ``l2``."""
        scale = lexical_scale(l2, self.backbone.config.lexical) if self.lexical else 0.0
        digests = text_digests(texts)
        return scale, digests, features(self.backbone, texts, scale, digests=digests, pool=False)  # the set grows

    def propagate(self, x: Design, digests: np.ndarray, targets: torch.Tensor, multilabel: bool,
                  pool: Sequence[str], scale: float, progress: Progress | None,
                  check: propagation.Check | None = None
                  ) -> tuple[tuple[Design, torch.Tensor, torch.Tensor] | None, dict]:
        """Pseudo-labels from label spreading over the labelled texts (training rows x, their texts'
        ``digests``) and ``pool``; the graph is the embeddings' (``x.dense``; its k-NN lists are kept
        between retrains on the same texts, :meth:`Backbone.neighbours`), the pseudo-label rows get
        the pool texts' features at the n-gram ``scale``.

        Returns ((training rows (P), one-hot targets (P, C), weights (P,)) or None, stats). None when
        the kind does not propagate, ``propagation`` is off, the targets are multi-label, the pool
        is empty, or (``auto``) when there are fewer than ``propagation.FOLDS`` labels a class
        (:func:`backend.al.propagation.checkable`; the pool is then not read), or when the check
        says the fit with the pseudo-labels labels held-out labels no better than without them
        (:func:`backend.al.propagation.helps`): with ``propagation_check`` ``deferred`` the given
        ``check`` (made on an earlier labelled set; the pool is not read when it failed), else (``inline``,
        or no check made yet) run here on these labels.
        At most ``propagation_pool`` pool texts (those with the smallest digests,
        :func:`backend.al.propagation.sample_by_digest`) go into the graph.
        """
        cfg = self.backbone.config
        if not self.propagates:
            return None, {}
        unread = propagation.pool_unread(cfg.propagation, cfg.propagation_check, len(x), targets.shape[1],
                                         multilabel, check)
        if unread is not None:  # the worker then sends no pool either
            return None, unread
        if len(pool) == 0:
            return None, {}
        deferred = cfg.propagation == "auto" and cfg.propagation_check == "deferred" and check is not None
        graph = self._graph(x, digests, pool, scale, progress)
        stats: dict = {"propagation_pool": len(graph.pool_x)}
        if cfg.propagation == "auto":
            if not deferred:
                check = self._check(x, targets, graph)
            stats["propagation_check"] = check.as_list()
            stats["propagation_checked_here"] = not deferred  # on these labels (else on an earlier set)
            if not check.helps:
                return None, {**stats, "pseudo_labels": 0}
        labels, n_classes = targets.argmax(dim=1), targets.shape[1]
        f = propagation.spread(graph.graph, torch.arange(len(x)), labels, n_classes)
        pseudo = propagation.pseudo_labels(f, graph.pool_rows, seed_classes=labels)
        stats["pseudo_labels"] = int(pseudo.rows.numel())
        if pseudo.rows.numel() == 0:
            return None, stats
        return pseudo_rows(graph.pool_x, pseudo, len(x), len(x), n_classes), stats

    def check_propagation(self, texts: Sequence[str], targets: torch.Tensor, multilabel: bool,
                          pool: Sequence[str], progress: Progress | None = None) -> propagation.Check | None:
        """The k-fold check of :meth:`propagate` (``auto``) alone, on these labels and ``pool``; None
        where ``auto`` would not check (the kind does not propagate, ``propagation`` is not ``auto``,
        multi-label targets, an empty pool, fewer than ``propagation.FOLDS`` labels a class)."""
        cfg = self.backbone.config
        targets = targets.float().cpu()
        if (not self.propagates or cfg.propagation != "auto" or multilabel or len(pool) == 0
                or not propagation.checkable(len(texts), targets.shape[1])):
            return None
        scale, digests, x = self._design(texts, self.l2(len(texts), targets.shape[1]))
        return self._check(x, targets, self._graph(x, digests, pool, scale, progress))

    def _graph(self, x: Design, digests: np.ndarray, pool: Sequence[str], scale: float,
               progress: Progress | None) -> _Graph:
        """The k-NN graph of the labelled rows ``x`` (first) and at most ``propagation_pool`` of ``pool``."""
        pool_digests = text_digests(pool)
        rows = propagation.sample_by_digest(pool_digests, self.backbone.config.propagation_pool)
        pool_texts = [pool[i] for i in rows.tolist()]
        pool_digests = pool_digests[rows.numpy()]
        pool_x = features(self.backbone, pool_texts, scale, progress=progress, digests=pool_digests)
        near = self.backbone.neighbours(torch.cat([x.dense, pool_x.dense]), np.concatenate([digests, pool_digests]),
                                        propagation.NEIGHBOURS)
        return _Graph(propagation.graph_of(*near), pool_x, torch.arange(len(x), len(x) + len(pool_x)))

    def _check(self, x: Design, targets: torch.Tensor, graph: _Graph) -> propagation.Check:
        """:func:`backend.al.propagation.helps` for training rows x with targets, this kind's fit on both sides."""
        held_x, n_classes = x.to_dense(), targets.shape[1]

        def fit_predict(train: torch.Tensor, held: torch.Tensor,
                        pseudo: propagation.PseudoLabels | None) -> torch.Tensor:
            rows, t = x.take(train), targets[train]
            item, l2 = self.item_weights(t), self.l2(len(train), n_classes)
            if pseudo is not None and pseudo.rows.numel():
                px, pt, pw = pseudo_rows(graph.pool_x, pseudo, len(x), len(train), n_classes)
                rows, t, item = rows.cat(px), torch.cat([t, pt]), torch.cat([item, pw])
            w, b, _ = fit_logistic(rows, t, False, l2, items=item)
            return (held_x[held].double() @ w + b).argmax(dim=1)

        return propagation.helps(graph.graph, torch.arange(len(x)), targets.argmax(dim=1), n_classes, fit_predict,
                                 self.backbone.config.seed, graph.pool_rows)

    def item_weights(self, targets: torch.Tensor) -> torch.Tensor:
        """Single-label items' training weights (N,): by inverse class frequency, or 1 when unweighted."""
        return targets @ class_weights(targets, False) if self.class_weighted else torch.ones(len(targets))

    def l2(self, n_labels: int, n_classes: int) -> float:
        """The prior precision: the ``l2`` setting, or by the labelled set's shape when it is 0."""
        return self.backbone.config.l2 or default_l2(n_labels, n_classes)

    def mc_probs(self, model: Model, texts: Sequence[str], seed: int,
                 progress: Progress | None) -> torch.Tensor:
        """(N, T, C): the saved posterior samples (the seed is not needed: they were drawn at fit time)."""
        scale, bits = float(model.arch.get("lexical", 0.0)), int(model.arch.get("lexical_bits", 0))
        x = features(self.backbone, texts, scale, bits, progress)
        logits = scores(x.dense, model.state["weights"], model.state["bias"], x.sparse, scale)
        return logits_to_probs(logits, model.multilabel)
