"""L2-regularised logistic regression fitted to convergence, and a Laplace posterior around the fit.

The training rows are a :class:`Design`: dense columns (the embeddings) beside scaled sparse ones
(hashed n-gram rows, :mod:`backend.al.lexical`), never concatenated into one dense matrix. A fit
over a pool's pseudo-labels reads its rows twice per L-BFGS step, once for the logits and once for
the gradient; as one dense float64 matrix that is 1,408 columns a row, most of them zero, and the
fit is bound by the memory reads (AG News with 7,900 pseudo-labels: 25 ms a step of the 37 ms; the
sparse n-gram part holds about 60 of the 1,024 columns a row). The gradient is written out rather
than taken by autograd, so both products are explicit. Pure compute, float64, one thread unless
asked for more (a model's final fit in a worker: AG News with 7,900 pseudo-labels, 0.30 s on two
threads against 0.55 s on one).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from backend.al.lexical import Rows
from backend.al.training import _threads

POSTERIOR_MIN_PRIOR = 1.0
"""The samples' prior precision is at least this (scikit-learn's C = 1 scale on unit-norm embeddings):
at the fit's own l2 (0.03 on CLINC150 at 500 labels) a direction no label covers gets a logit std
of ~6 in every sample, and BALD ranks that noise (docs/BENCHMARKS.md, "Labels saved")."""
# L-BFGS: full batch, strong Wolfe line search; the problem is convex and small (D x C weights).
_MAX_ITER = 500
_TOLERANCE = 1e-7


@dataclass(frozen=True)
class Design:
    """N training rows: dense columns (N, E) followed by ``scale`` x the sparse rows (N, K) when
    ``sparse`` is given and ``scale`` > 0; ``E + K`` columns in all (``E`` alone otherwise)."""

    dense: torch.Tensor
    sparse: Rows | None = None
    scale: float = 0.0

    def __post_init__(self) -> None:
        if self.has_sparse and len(self.sparse) != len(self.dense):
            raise ValueError(f"{len(self.dense)} dense rows beside {len(self.sparse)} sparse ones")

    @property
    def has_sparse(self) -> bool:
        return self.sparse is not None and self.scale > 0

    @property
    def sparse_scale(self) -> float:
        """The sparse columns' scale, 0 when there are none."""
        return self.scale if self.has_sparse else 0.0

    @property
    def width(self) -> int:
        return self.dense.shape[1] + (self.sparse.width if self.has_sparse else 0)

    def __len__(self) -> int:
        return len(self.dense)

    def take(self, rows: torch.Tensor) -> "Design":
        """The given rows, in that order."""
        return Design(self.dense[rows], self.sparse.take(rows) if self.has_sparse else None, self.scale)

    def cat(self, other: "Design") -> "Design":
        """These rows, then other's (the same columns and scale)."""
        if self.sparse_scale != other.sparse_scale:
            raise ValueError("designs with different sparse columns or scales")
        sparse = self.sparse.cat(other.sparse) if self.has_sparse else None
        return Design(torch.cat([self.dense, other.dense]), sparse, self.scale)

    def to_dense(self) -> torch.Tensor:
        """All columns as one dense (N, E + K) tensor of the dense part's dtype."""
        if not self.has_sparse:
            return self.dense
        return torch.cat([self.dense, self.scale * self.sparse.dense().to(self.dense.dtype)], dim=1)


class _Products:
    """``X @ W`` and ``X^T @ G`` for a design X in float64, its sparse part as CSR in both directions."""

    def __init__(self, x: Design) -> None:
        self.dense = x.dense.double()
        self.split = self.dense.shape[1]
        self.rows = x.sparse.csr(torch.float64, x.scale) if x.has_sparse else None
        self.columns = x.sparse.csr_transposed(torch.float64, x.scale) if x.has_sparse else None

    def times(self, w: torch.Tensor) -> torch.Tensor:
        out = self.dense @ w[:self.split]
        return out if self.rows is None else out + torch.sparse.mm(self.rows, w[self.split:])

    def transposed_times(self, g: torch.Tensor) -> torch.Tensor:
        out = (g.T @ self.dense).T  # a few columns g: 5-8x faster than dense.T @ g (BLAS's narrow kernels)
        return out.contiguous() if self.columns is None else torch.cat([out, torch.sparse.mm(self.columns, g)])


def fit_logistic(x: torch.Tensor | Design, targets: torch.Tensor, multilabel: bool, l2: float,
                 weights: torch.Tensor | None = None, items: torch.Tensor | None = None,
                 threads: int = 1, init: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """L2-regularised logistic regression, to convergence. x (N, D), targets (N, C) -> (W (D, C), b (C,), stats).

    Minimises ``sum_i w_i loss_i + l2 / 2 * ||W||^2`` (the bias is not penalised), which is
    scikit-learn's ``LogisticRegression(C=1/l2)`` objective; ``weights`` (C,) weight each item
    by its class (single-label) or each label's positives (multi-label); ``items`` (N,) weight each
    item as well (single-label: instead of ``weights``; pseudo-labels get their own weight).
    ``init``: (W, b) to start from instead of zeros (convex: the same optimum, fewer steps). Float64 on
    ``threads`` threads, deterministic: the same inputs on as many threads give the same bits. On
    another count the products' sums run in another order, which can send L-BFGS down another path
    to the same optimum: 1e-14 apart on AG News's 8,000 rows on one CPU; on another, random labels
    ended 1e-9 apart in the objective and 4e-5 in the probabilities.
    """
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    design = x if isinstance(x, Design) else Design(x)
    y64 = targets.double()
    n, c = y64.shape
    if len(design) != n:
        raise ValueError(f"{len(design)} rows against {n} targets")
    with _threads(threads):
        products = _Products(design)
        loss_and_grad = _multilabel_loss(y64, weights, items) if multilabel else _softmax_loss(y64, weights, items)
        w = torch.zeros(design.width, c, dtype=torch.float64) if init is None else init[0].double().clone()
        b = torch.zeros(c, dtype=torch.float64) if init is None else init[1].double().clone()
        if w.shape != (design.width, c) or b.shape != (c,):
            raise ValueError(f"init of shapes {tuple(w.shape)}, {tuple(b.shape)} for {design.width} x {c} weights")
        optimizer = torch.optim.LBFGS([w, b], lr=1, max_iter=_MAX_ITER, tolerance_grad=_TOLERANCE,
                                      tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")
        scale = 1.0 / n  # the mean form: the same optimum, gradients of order 1 whatever N is

        def closure() -> torch.Tensor:
            data, g = loss_and_grad(products.times(w) + b)  # g: d(data)/d(logits)
            w.grad = scale * (products.transposed_times(g) + l2 * w)
            b.grad = scale * g.sum(dim=0)
            return scale * (data + 0.5 * l2 * (w * w).sum())

        with torch.no_grad():
            optimizer.step(closure)
            loss = closure()
    state = optimizer.state[optimizer._params[0]]
    return w, b, {"iterations": int(state.get("n_iter", 0)), "train_loss": loss.item()}


def _softmax_loss(y64: torch.Tensor, weights: torch.Tensor | None, items: torch.Tensor | None):
    """Weighted cross-entropy of logits (N, C) against one-hot targets, and its gradient by the logits."""
    item = items.double() if items is not None else (
        torch.ones(len(y64), dtype=torch.float64) if weights is None else y64 @ weights.double())
    label = y64.argmax(dim=1)
    onehot = F.one_hot(label, y64.shape[1]).double()

    def loss_and_grad(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_p = torch.log_softmax(logits, dim=1)
        data = -(item * log_p.gather(1, label[:, None]).squeeze(1)).sum()
        return data, item[:, None] * (log_p.exp() - onehot)
    return loss_and_grad


def _multilabel_loss(y64: torch.Tensor, weights: torch.Tensor | None, items: torch.Tensor | None = None):
    """Per-label binary cross-entropy of logits (N, C), positives weighted by ``weights`` (C,) and
    items by ``items`` (N,), and its gradient."""
    pos = torch.ones(y64.shape[1], dtype=torch.float64) if weights is None else weights.double()
    item = None if items is None else items.double()[:, None]

    def loss_and_grad(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # d/dz of -(p y log s(z) + (1 - y) log(1 - s(z))) = s(z) (p y + 1 - y) - p y
        grad = torch.sigmoid(logits) * (pos * y64 + 1 - y64) - pos * y64
        if item is None:
            return F.binary_cross_entropy_with_logits(logits, y64, pos_weight=pos, reduction="sum"), grad
        data = (item * F.binary_cross_entropy_with_logits(logits, y64, pos_weight=pos, reduction="none")).sum()
        return data, item * grad
    return loss_and_grad


def laplace_samples(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, multilabel: bool, l2: float,
                    samples: int, generator: torch.Generator, items: torch.Tensor | None = None,
                    logits: torch.Tensor | None = None) -> torch.Tensor:
    """T weight matrices (T, D, C) from the Kronecker-factored Laplace posterior around (w, b).

    Class c's precision is ``max(l2, POSTERIOR_MIN_PRIOR) * I + a_c * G``, ``G = sum_i v_i x_i x_i^T`` (v_i the item's
    weight) and ``a_c = sum_i v_i p_ic (1 - p_ic) / sum_i v_i``; one eigendecomposition of G
    serves every class. ``logits`` (N, C): the fit's own at x when x holds only some of its columns
    (the others' weights then stay at the fit).
    """
    x64 = x.double()
    n, d = x64.shape
    c = w.shape[1]
    logits = x64 @ w + b if logits is None else logits.double()
    probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)  # (N, C)
    item = torch.ones(n, dtype=torch.float64) if items is None else items.double()
    gram = (x64 * item[:, None]).T @ x64  # (D, D)
    a = (item[:, None] * probs * (1 - probs)).sum(dim=0) / item.sum()  # (C,)
    with _threads(1):
        eigvals, eigvecs = torch.linalg.eigh(gram)
    prior = max(l2, POSTERIOR_MIN_PRIOR)
    scale = (prior + a[None, :] * eigvals.clamp_min(0)[:, None]).rsqrt()  # (D, C): per-direction posterior std
    z = torch.randn(samples, d, c, generator=generator, dtype=torch.float64)
    return (w + eigvecs @ (scale * z)).float()  # (T, D, C)


def bootstrap_samples(x: torch.Tensor | Design, targets: torch.Tensor, multilabel: bool, l2: float,
                      w: torch.Tensor, b: torch.Tensor, samples: int, generator: torch.Generator,
                      weights: torch.Tensor | None = None, items: torch.Tensor | None = None,
                      threads: int = 1) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """T weight matrices (T, D, C) and biases (T, C) from the weighted likelihood bootstrap (Newton &
    Raftery 1994) around the fit (``w``, ``b``): each member is the fit with every labelled item's
    weight multiplied by an Exp(1) draw (the Bayesian bootstrap's Dirichlet weights, scaled to sum to
    N); the samples are the fit plus each member's deviation from the members' mean, weights and bias
    together (the embeddings share a common direction, so a member trades bias against weights along
    it: the two deviations only mean something together). ``items`` (N,) are the items' own weights
    (single-label: they replace ``weights``, so pass class weights folded into them).

    Unlike :func:`laplace_samples`, the spread is where the labels disagree about the weights: a
    direction no label covers is shrunk to zero by the prior in every member, so it adds no
    disagreement (the Laplace samples give it the prior's full variance). Members start from the fit
    (``init``), so each takes a few L-BFGS steps; they run side by side on ``threads`` threads.
    Returns (weights, biases, {"bootstrap_iterations": mean steps}).
    """
    design = x if isinstance(x, Design) else Design(x)
    n = len(design)
    base = torch.ones(n, dtype=torch.float64) if items is None else items.double()
    draws = [-torch.log1p(-torch.rand(n, generator=generator, dtype=torch.float64)) for _ in range(samples)]  # Exp(1)

    def member(draw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        return fit_logistic(design, targets, multilabel, l2, weights, base * draw * (n / draw.sum()), init=(w, b))

    # Each member's fit is single-threaded, the members side by side on ``threads`` threads: the draws
    # are made first, in order, so the samples are the same bits whatever the thread count.
    with ThreadPoolExecutor(max(1, min(threads, samples))) as pool:
        fits = list(pool.map(member, draws))
    w_t, b_t = torch.stack([f[0] for f in fits]), torch.stack([f[1] for f in fits])  # (T, D, C), (T, C)
    return ((w.double() + w_t - w_t.mean(dim=0)).float(), (b.double() + b_t - b_t.mean(dim=0)).float(),
            {"bootstrap_iterations": sum(f[2]["iterations"] for f in fits) / max(samples, 1)})
