"""Label propagation over the pool: what the unlabelled texts add to a few labels.

With a few labels per class, a classifier fitted to the labels alone sees only where they fall;
the pool's own geometry (which texts are near which) says more. Label spreading (Zhou et al.
2004) runs the labels through a k-nearest-neighbour graph of the labelled and unlabelled
embeddings; the pool texts it labels confidently are then added to the classifier's training set
as pseudo-labels (:mod:`backend.al.kinds.linear`).

That only helps where the encoder's neighbourhoods follow the classes. On topic sets they do
(AG News: 0.73 -> 0.83 accuracy at 40 labels), on TREC-6's question types they do not (0.71 ->
0.54 at 100), and the classes of a new project are unknown. So :func:`helps` decides from the
labels themselves: k-fold, the classifier's accuracy on each held-out fold with the fold's
pseudo-labels against without them, and propagation is used only when it is ahead
(docs/BENCHMARKS.md, "Label propagation").

Shapes: x (N, D) unit-norm embeddings, labelled rows first then the pool; graph (N, N) sparse,
symmetric and normalised; seeds (L,) row indices with targets (L,) class indices; spread (N, C).
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from backend.al.blocks import by_blocks

NEIGHBOURS = 10
"""k of the k-NN graph: each text links to its 10 most similar texts (made symmetric)."""
SIMILARITY_POWER = 3
"""Edge weight = max(cos, 0) ** 3: sharpens MiniLM's compressed cosine range (most pairs 0.0-0.5)."""
ALPHA = 0.99
"""Label spreading's share of the neighbours' labels against a node's own seed (Zhou et al.'s value)."""
ITERATIONS = 20
"""Spreading steps (each one sparse product); the labels reach ~20 hops, far past a class's cluster."""
MIN_CONFIDENCE = 0.5
"""A pool text becomes a pseudo-label when one class holds at least this share of its spread mass."""
PSEUDO_WEIGHT = 1.0
"""The pseudo-labels' total training weight relative to the labelled set's (each gets weight * L / P)."""
MIN_CLASS_LABELS = 2
"""A class with fewer labels than this gives no pseudo-labels (:func:`pseudo_labels`): spreading scales
each class's seeds to the same total mass, so one label claims a neighbourhood as large as a whole
class's, and the check's folds cannot hold it out and still seed it (TREC-6, a BALD run at 100 labels
with one ABBR label: the model called 127 of the 500 test questions ABBR, of which there are 9, and
fell from 0.586 to 0.442; without that class's pseudo-labels 0.512; docs/BENCHMARKS.md, "BALD")."""
FOLDS = 5
"""Folds of the check in :func:`helps` (held-out labels every fold)."""
CHECK_PSEUDO = 2000
"""At most this many pseudo-labels (a seeded sample) in each of the check's fits: its cost stays
about that of one fit on 2,000 items a fold, whatever the pool."""
_BLOCK = 1024


@dataclass(frozen=True)
class PseudoLabels:
    """Pool rows (P,) with the class (P,) spreading gives each and its confidence (P,)."""

    rows: torch.Tensor
    classes: torch.Tensor
    confidence: torch.Tensor


def nearest(x: torch.Tensor, k: int = NEIGHBOURS,
            rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k most cosine-similar other rows of x (N, D): similarities (N, k) float32 and
    their row indices (N, k) int64, most similar first (k is capped at N - 1). ``rows`` (R,): only
    those rows' lists, (R, k), each the same as in the whole call.

    One (N, N) similarity pass in blocks of rows, O(N^2 D): about 2 s for 10k MiniLM embeddings on
    one CPU thread, which is why the engine keeps the result (:mod:`backend.al.neighbours`).
    """
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"a graph needs at least 2 texts, got {n}")
    k = min(k, n - 1)
    unit = torch.nn.functional.normalize(x.float(), dim=1)
    rows = torch.arange(n) if rows is None else rows.long()

    def similarities(block: torch.Tensor) -> torch.Tensor:
        return block @ unit.T  # (block, N)

    values, columns = [torch.zeros(0, k)], [torch.zeros(0, k, dtype=torch.long)]
    for start in range(0, rows.numel(), _BLOCK):
        own = rows[start:start + _BLOCK]
        sims = by_blocks(unit[own], similarities, _BLOCK)
        sims[torch.arange(own.numel()), own] = -2.0  # never its own neighbour
        top, where = sims.topk(k, dim=1)
        values.append(top)
        columns.append(where)
    return torch.cat(values), torch.cat(columns)


def graph_of(sims: torch.Tensor, columns: torch.Tensor, power: float = SIMILARITY_POWER) -> torch.Tensor:
    """The graph ``D^-1/2 W D^-1/2`` (N, N) sparse CSR of neighbour lists (N, k) (:func:`nearest`).

    ``W`` links each row to its neighbours with weight max(cos, 0) ** power and is made
    symmetric (W + W^T); D is W's degree.
    """
    n, k = columns.shape
    weights = sims.clamp_min(0).pow(power).flatten()
    rows = torch.arange(n).repeat_interleave(k)
    cols = columns.flatten()
    w = torch.sparse_coo_tensor(torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])]),
                                torch.cat([weights, weights]), (n, n), check_invariants=False).coalesce()
    degree = torch.zeros(n).index_add_(0, w.indices()[0], w.values()).clamp_min(1e-12).rsqrt()
    i = w.indices()
    normalised = w.values() * degree[i[0]] * degree[i[1]]
    graph = torch.sparse_coo_tensor(i, normalised, (n, n), check_invariants=False).coalesce()
    with warnings.catch_warnings():  # CSR: spreading's products are about 20x faster than with COO
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return graph.to_sparse_csr()


def reorder(sims: torch.Tensor, columns: torch.Tensor, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbour lists of ``x[order]`` (:func:`nearest`) as those of x's own rows: row r's list is
    row ``order^-1[r]``'s, its indices mapped back through ``order`` (a permutation of N)."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    return sims[inverse], order[columns[inverse]]


def spread(graph: torch.Tensor, seeds: torch.Tensor, targets: torch.Tensor, n_classes: int,
           alpha: float = ALPHA, iterations: int = ITERATIONS) -> torch.Tensor:
    """Label spreading: ``F <- alpha * S F + (1 - alpha) * Y``, ``iterations`` times, from F = Y.

    Y has one 1 per seed row in its class's column, each class's column scaled to sum 1, so a
    class with many labels does not drown one with few. Returns F (N, C), non-negative; a row
    the labels never reached is all zero.
    """
    if seeds.numel() != targets.numel():
        raise ValueError(f"{seeds.numel()} seed rows but {targets.numel()} targets")
    y = torch.zeros(graph.shape[0], n_classes)
    y[seeds, targets] = 1.0
    y = y / y.sum(dim=0).clamp_min(1.0)
    f = y.clone()
    for _ in range(iterations):
        f = alpha * torch.sparse.mm(graph, f) + (1 - alpha) * y
    return f


def pseudo_labels(f: torch.Tensor, rows: torch.Tensor, min_confidence: float = MIN_CONFIDENCE,
                  seed_classes: torch.Tensor | None = None, min_labels: int = MIN_CLASS_LABELS) -> PseudoLabels:
    """Among ``rows`` of F (N, C), those whose largest class share is >= min_confidence and, given the
    classes of the spread's seeds ``seed_classes`` (L,), whose class has at least ``min_labels`` of them."""
    mass = f[rows].sum(dim=1)
    confidence, classes = (f[rows] / mass.clamp_min(1e-30)[:, None]).max(dim=1)
    keep = (mass > 0) & (confidence >= min_confidence)
    if seed_classes is not None:
        keep &= (torch.bincount(seed_classes, minlength=f.shape[1]) >= min_labels)[classes]
    return PseudoLabels(rows[keep], classes[keep], confidence[keep])


@dataclass(frozen=True)
class Check:
    """The outcome of :func:`helps`: held-out labels right with pseudo-labels and without."""

    spread_correct: int
    plain_correct: int
    held_out: int

    @property
    def helps(self) -> bool:
        return self.spread_correct > self.plain_correct

    def as_list(self) -> list[int]:
        """[spread_correct, plain_correct, held_out]: as a model's stats and the worker's record keep it
        (``Check(*values)`` reads it back). ``held_out`` is the number of labels checked."""
        return [self.spread_correct, self.plain_correct, self.held_out]


FitPredict = Callable[[torch.Tensor, torch.Tensor, "PseudoLabels | None"], torch.Tensor]
"""fit_predict(train_rows (L',), held_rows (H,), pseudo) -> predicted classes (H,): the classifier
trained on the train rows' labels, plus ``pseudo`` (graph rows and classes) when it is given. The
check calls it from several threads at once: it must not change state that other calls read."""


def helps(graph: torch.Tensor, seeds: torch.Tensor, targets: torch.Tensor, n_classes: int,
          fit_predict: FitPredict, seed: int, pool_rows: torch.Tensor, folds: int = FOLDS,
          check_pseudo: int = CHECK_PSEUDO) -> Check:
    """k-fold over the labels: does the classifier label held-out items better with pseudo-labels?

    Every fold holds out every ``folds``-th label of a seeded shuffle. Spreading runs from the
    other labels (the held-out rows stay in the graph, unlabelled); the classifier is trained on
    those labels with and without the pseudo-labels spreading gives ``pool_rows`` (at most
    ``check_pseudo`` of them, a seeded sample, to bound the cost), and both predict the held-out
    rows. The same classifier on both sides matters: the labelled items were mostly chosen where
    the previous model was unsure, so they are hard for a classifier and not for the graph, and
    spreading's own guesses would win the check on them where its pseudo-labels do not help the
    fit (CLINC150 from ~300 labels: docs/BENCHMARKS.md, "Label propagation"). Fewer than ``folds``
    labels a class (:func:`checkable`): no check, pseudo-labels are not used.
    """
    if not checkable(seeds.numel(), n_classes, folds):
        return Check(0, 0, 0)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(seeds.numel(), generator=generator)
    fits = []  # (kept, held, pseudo-labels or None): every fold twice, drawn in order
    for fold in range(folds):
        held = order[fold::folds]
        kept = torch.cat([order[j::folds] for j in range(folds) if j != fold])
        pseudo = pseudo_labels(spread(graph, seeds[kept], targets[kept], n_classes), pool_rows,
                               seed_classes=targets[kept])
        if pseudo.rows.numel() > check_pseudo:
            pick = torch.randperm(pseudo.rows.numel(), generator=generator)[:check_pseudo]
            pseudo = PseudoLabels(pseudo.rows[pick], pseudo.classes[pick], pseudo.confidence[pick])
        fits += [(kept, held, pseudo), (kept, held, None)]
    # The fits are independent and each one single-threaded (fit_logistic): run them side by side on
    # the threads torch may use here (1 in the simulations: one after the other, as before).
    with ThreadPoolExecutor(max(1, min(torch.get_num_threads(), len(fits)))) as pool:
        right = list(pool.map(lambda f: int((fit_predict(*f) == targets[f[1]]).sum()), fits))
    return Check(sum(right[0::2]), sum(right[1::2]), seeds.numel())


def checkable(n_labels: int, n_classes: int, folds: int = FOLDS) -> bool:
    """Whether the k-fold check can say anything: at least ``folds`` labels a class on average.

    With fewer, most folds hold out no label of most classes, and the few held-out labels were
    mostly picked by margin where the model was unsure: a check on them passed where the
    pseudo-labels cost accuracy (CLINC150, 150 intents, 100-500 labels: single rounds 7-10 points
    down, 3.5 points at 500 labels; docs/BENCHMARKS.md, "Label propagation").
    """
    return n_labels >= folds * max(n_classes, 1)


def pool_unread(setting: str, check_when: str, n_labels: int, n_classes: int, multilabel: bool,
                check: Check | None) -> dict | None:
    """Why a fit with these settings (``propagation``, ``propagation_check``) and labels reads no pool,
    as the model stats that say it ({} when there is nothing to say), or None when it reads one: never
    with ``off`` or multi-label targets; with ``auto``, not below ``FOLDS`` labels a class
    (:func:`checkable`), nor when checked ``deferred`` and the given ``check`` (made on an earlier
    labelled set) failed. The worker asks it before reading the pool's texts, the fit before its graph."""
    if setting == "off" or multilabel:
        return {}
    if setting == "auto" and not checkable(n_labels, n_classes):
        return {"propagation_check": "fewer labels a class than folds", "pseudo_labels": 0}
    if setting == "auto" and check_when == "deferred" and check is not None and not check.helps:
        return {"propagation_check": check.as_list(), "propagation_checked_here": False, "pseudo_labels": 0}
    return None


def sample_by_digest(digests: np.ndarray, limit: int) -> torch.Tensor:
    """At most ``limit`` of the texts with ``digests`` (N,) ``S20``: those with the smallest digests
    (SHA-1, so a random sample), ties by position, as increasing row indices (all when N <= limit).

    Unlike a seeded shuffle of the positions, the sample hardly moves as the pool changes: a text
    labelled leaves it and the next digest takes its place, so the graph's k-NN lists are updated
    rather than recomputed (:mod:`backend.al.neighbours`). The worker draws the same texts from
    its task index (``ORDER BY hash``, :meth:`workers.task_index.TaskIndex.sample_unlabelled`).
    """
    if len(digests) <= limit:
        return torch.arange(len(digests))
    return torch.from_numpy(np.sort(np.argsort(digests, kind="stable")[:limit]))
