"""Turn acquisition values into a priority order over the whole pool.

Three settings shape the order beyond plain "most informative first":

- **stochastic batch acquisition** (``power_beta > 0``): sample the order without
  replacement with probability proportional to ``value ** beta`` (PowerBALD /
  power-entropy, Kirsch et al. 2023, "Stochastic Batch Acquisition: A Simple
  Baseline for Deep Active Learning"), done exactly with Gumbel-top-k;
- **diversity** (``clusters > 0``): k-means over the embeddings, then each window
  of the order is interleaved round-robin across clusters, so a run of near-duplicates
  is spread out;
- **exploration** (``exploration > 0``): that share of the positions, evenly spaced,
  holds uniformly random items, marked in ``explored``, so the labelled set keeps
  seeing the production distribution (and the audit of ``backend.al.audit`` gets a
  fair sample);
- **ambiguity routing**: items marked ``ambiguous`` by the per-task step (high entropy,
  low BALD: see ``acquisition.ambiguous``) go behind every other item of the uncertainty
  order, keeping their relative order. Exploration still draws from the whole pool, so
  an ambiguous item can hold an exploration slot and the audit stays unbiased.

Scores are ranks scaled to [0, 1]: **lower = label sooner**, matching Label Studio's
"Uncertainty sampling", which serves the lowest prediction score first.

:func:`order_pool` is the pool-wide step: it takes the per-task :class:`TaskScores` of
the whole pool (one call or many shards, merged with :meth:`TaskScores.concat`) and
gives the :class:`Ranking`. Items are ordered by task id first, so neither the split
into shards nor the order they are merged in changes the result.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from backend.al.zeroshot import meaningful, zero_shot_order

COLD_START = "cold_start"  # TaskScores.strategy before any model: order by representativeness
# (zero-shot probabilities of the label names ride along as pre-annotations; backend.al.zeroshot)


@dataclass
class TaskScores:
    """Per-task results for some tasks of a pool: what a shard job computes.

    ids (N,) int64 task ids (unique); values (N,) acquisition values (higher = more
    informative; at cold start zeros, or each text's spread of label-name similarities);
    probs (N, C) mean predictive distribution, at cold start the zero-shot one or None;
    ambiguous (N,) bool, tasks to route away from the top of the queue (all False when
    ambiguity routing is off or given as None); routed: whether ambiguity routing ran
    (default: whether ``ambiguous`` was given), so a publish can tell "none marked" from "off".
    """

    ids: torch.Tensor
    values: torch.Tensor
    probs: torch.Tensor | None
    strategy: str
    ambiguous: torch.Tensor | None = None
    routed: bool | None = None

    def __post_init__(self) -> None:
        if self.ids.dim() != 1 or self.values.shape != self.ids.shape:
            raise ValueError(f"ids {tuple(self.ids.shape)} and values {tuple(self.values.shape)} must be (N,)")
        self.routed = self.ambiguous is not None if self.routed is None else bool(self.routed)
        self.ambiguous = _flags(self.ambiguous, self.ids.numel())
        if self.probs is not None and self.probs.shape[0] != self.ids.numel():
            raise ValueError(f"probs has {self.probs.shape[0]} rows for {self.ids.numel()} ids")

    def __len__(self) -> int:
        return self.ids.numel()

    @classmethod
    def concat(cls, parts: list["TaskScores"]) -> "TaskScores":
        """Merge shards' scores (any order). Raises ValueError on mixed strategies or repeated ids."""
        if not parts:
            raise ValueError("no scores to merge")
        strategies = {p.strategy for p in parts}
        if len(strategies) != 1:
            raise ValueError(f"cannot merge scores of different strategies: {sorted(strategies)}")
        has_probs = {p.probs is not None for p in parts}
        if len(has_probs) != 1:
            raise ValueError("cannot merge scores with and without probabilities")
        probs = torch.cat([p.probs for p in parts]) if parts[0].probs is not None else None
        return cls(torch.cat([p.ids for p in parts]), torch.cat([p.values for p in parts]), probs,
                   parts[0].strategy, torch.cat([p.ambiguous for p in parts]), any(p.routed for p in parts))


def _flags(flags: torch.Tensor | None, n: int) -> torch.Tensor:
    """A (N,) bool tensor: the given flags checked, or all False for None."""
    if flags is None:
        return torch.zeros(n, dtype=torch.bool)
    if flags.shape != (n,) or flags.dtype != torch.bool:
        raise ValueError(f"ambiguous must be (N,) bool for {n} items, got {tuple(flags.shape)} {flags.dtype}")
    return flags


@dataclass
class Ranking:
    """A priority order over a pool of N items, indexed like the TaskScores it came from.

    order[i] is the index of the i-th item to label; scores[j] in [0, 1] is item j's
    priority (lower = label sooner); values[j] its acquisition value (higher = more
    informative); explored[j] marks items placed by the exploration share; probs is
    the mean predictive distribution (N, C), or None at cold start; ambiguous[j] marks
    items routed behind the uncertainty order (an explored item keeps its slot); routed
    tells whether ambiguity routing ran (default: whether ``ambiguous`` was given).
    """

    order: torch.Tensor
    scores: torch.Tensor
    values: torch.Tensor
    explored: torch.Tensor
    probs: torch.Tensor | None
    strategy: str
    ambiguous: torch.Tensor | None = None
    routed: bool | None = None

    def __post_init__(self) -> None:
        self.routed = self.ambiguous is not None if self.routed is None else bool(self.routed)
        self.ambiguous = _flags(self.ambiguous, self.order.numel())


def scores_from_order(order: torch.Tensor) -> torch.Tensor:
    """Priority score per item from an order. order (N,) -> scores (N,) in [0, 1], order[0] gets 0."""
    n = order.numel()
    scores = torch.empty(n, dtype=torch.float32)
    scores[order] = torch.arange(n, dtype=torch.float32) / max(n - 1, 1)
    return scores


def greedy_order(values: torch.Tensor) -> torch.Tensor:
    """Indices by descending value, ties by ascending index. (N,) -> (N,)."""
    _, order = torch.sort(-values.double(), stable=True)
    return order


def power_order(values: torch.Tensor, beta: float, generator: torch.Generator) -> torch.Tensor:
    """Order sampled without replacement with P(i) proportional to values[i] ** beta. (N,) -> (N,).

    Gumbel-top-k: sorting beta * log(v) + Gumbel noise draws exactly that sequence.
    """
    if beta <= 0:
        raise ValueError(f"power beta must be > 0, got {beta}")
    if (values < 0).any():
        raise ValueError("power acquisition needs non-negative values")
    uniform = torch.rand(values.shape, generator=generator, dtype=torch.float64).clamp(1e-20, 1 - 1e-16)
    gumbel = -torch.log(-torch.log(uniform))
    keys = beta * torch.log(values.double().clamp_min(1e-30)) + gumbel
    return torch.argsort(keys, descending=True, stable=True)


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iters: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means with k-means++ seeding. x (N, D) -> (assignments (N,), centroids (k, D)).

    Arthur & Vassilvitskii 2007. k is capped at N.
    """
    n = x.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long), x.new_zeros(0, x.shape[1])
    k = max(1, min(k, n))
    x = x.float()
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = [x[first]]
    dist = ((x - x[first]) ** 2).sum(dim=1)
    for _ in range(1, k):
        total = dist.sum()
        if total <= 0:
            idx = int(torch.randint(n, (1,), generator=generator))
        else:
            idx = int(torch.multinomial(dist / total, 1, generator=generator))
        centroids.append(x[idx])
        dist = torch.minimum(dist, ((x - x[idx]) ** 2).sum(dim=1))
    c = torch.stack(centroids)
    assign = torch.cdist(x, c).argmin(dim=1)
    for _ in range(iters):
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1).to(x.dtype)
        c = torch.where(counts > 0, sums / counts.clamp_min(1), c)
        new_assign = torch.cdist(x, c).argmin(dim=1)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    return assign, c


def interleave_clusters(order: torch.Tensor, clusters: torch.Tensor, window: int) -> torch.Tensor:
    """Within each consecutive window of the order, round-robin across clusters.

    order (N,) indices, clusters (N,) cluster id per item -> (N,) reordered indices.
    Inside a window, each cluster keeps its own order, and clusters take turns in
    the order of their best item, so the window's top stays the window's top.
    """
    if window < 2:
        return order
    out = []
    for start in range(0, order.numel(), window):
        chunk = order[start:start + window].tolist()
        queues: dict[int, list[int]] = {}
        for idx in chunk:
            queues.setdefault(int(clusters[idx]), []).append(idx)
        lanes = list(queues.values())  # dict keeps first-seen order = order of best item
        depth = max(len(lane) for lane in lanes)
        out.extend(lane[i] for i in range(depth) for lane in lanes if i < len(lane))
    return torch.tensor(out, dtype=torch.long)


def demote(order: torch.Tensor, flagged: torch.Tensor) -> torch.Tensor:
    """Move flagged items behind all others, each group keeping its order. (N,), (N,) bool -> (N,)."""
    late = flagged[order]
    return torch.cat([order[~late], order[late]])


def mix_exploration(order: torch.Tensor, share: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Put uniformly random items at evenly spaced positions making up `share` of the order.

    order (N,) -> (new order (N,), explored (N,) bool per item). The random items are
    drawn from the whole pool; every other item keeps its relative order.
    """
    n = order.numel()
    explored = torch.zeros(n, dtype=torch.bool)
    count = int(round(share * n))
    if count == 0 or n == 0:
        return order, explored
    picks = torch.randperm(n, generator=generator)[:count]
    explored[picks] = True
    # Position of the j-th random item: the middle of the j-th of `count` equal stretches.
    positions = ((torch.arange(count, dtype=torch.float64) + 0.5) * (n / count)).long().clamp(max=n - 1)
    slot_is_random = torch.zeros(n, dtype=torch.bool)
    slot_is_random[positions] = True
    new = torch.empty(n, dtype=torch.long)
    new[slot_is_random] = picks
    new[~slot_is_random] = order[~explored[order]]
    return new, explored


def priority_order(
    values: torch.Tensor,
    embeddings: torch.Tensor | None = None,
    *,
    power_beta: float = 0.0,
    clusters: int = 0,
    window: int | None = None,
    exploration: float = 0.0,
    ambiguous: torch.Tensor | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Order a pool from acquisition values. values (N,), embeddings (N, D) -> (order (N,), explored (N,)).

    `window` defaults to 5 items per cluster; `ambiguous` (N,) bool items go behind the others
    before diversity and exploration.
    """
    if values.dim() != 1:
        raise ValueError(f"values must be shaped (N,), got {tuple(values.shape)}")
    if torch.isnan(values).any():
        raise ValueError("acquisition values contain NaN")
    if not 0 <= exploration < 1:
        raise ValueError(f"exploration share must be in [0, 1), got {exploration}")
    generator = torch.Generator().manual_seed(seed)
    order = power_order(values, power_beta, generator) if power_beta > 0 else greedy_order(values)
    if ambiguous is not None:
        order = demote(order, ambiguous)
    if clusters > 1 and values.numel() > 1:
        if embeddings is None or embeddings.shape[0] != values.numel():
            raise ValueError("diversity needs one embedding per item")
        assign, _ = kmeans(embeddings, clusters, generator)
        order = interleave_clusters(order, assign, window or 5 * clusters)
    return mix_exploration(order, exploration, generator)


def cold_start_order(embeddings: torch.Tensor, clusters: int, seed: int = 0,
                     zero_shot: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Diversity-first order with no model: cluster representatives first. (N, D) -> (order (N,), values (N,)).

    Clusters take turns, largest first; inside a cluster items closest to the centroid
    come first. values are minus the distance to the item's centroid (higher = more
    representative). With ``zero_shot`` probabilities (N, C) the order covers the classes
    instead, each class spread over the same clusters (``zeroshot.zero_shot_order``).
    """
    n = embeddings.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    generator = torch.Generator().manual_seed(seed)
    assign, centroids = kmeans(embeddings, clusters, generator)
    dist = (embeddings.float() - centroids[assign]).norm(dim=1)
    if zero_shot is not None:
        return zero_shot_order(zero_shot, assign, dist), -dist
    sizes = torch.bincount(assign, minlength=centroids.shape[0])
    lanes = []
    for cluster in torch.argsort(-sizes, stable=True).tolist():
        members = (assign == cluster).nonzero().flatten()
        if members.numel():
            lanes.append(members[torch.argsort(dist[members], stable=True)].tolist())
    depth = max(len(lane) for lane in lanes)
    order = [lane[i] for i in range(depth) for lane in lanes if i < len(lane)]
    return torch.tensor(order, dtype=torch.long), -dist


def order_pool(
    scored: TaskScores,
    embeddings: torch.Tensor | None = None,
    *,
    power_beta: float = 0.0,
    clusters: int = 0,
    exploration: float = 0.0,
    cold_start_clusters: int = 20,
    zero_shot_order: bool = False,
    seed: int = 0,
) -> Ranking:
    """The pool-wide step: exploration, diversity and the final order of scored tasks.

    scored (N items), embeddings (N, D) in the same item order (needed for diversity and
    cold start) -> Ranking indexed like ``scored``. Items are put in task-id order first,
    so the result depends on the set of (id, value) pairs, not on how they were merged.
    Cold-start scores with zero-shot probabilities keep them (the pre-annotations) when the names
    mean something (``zeroshot.meaningful``); ``zero_shot_order`` then orders by class coverage too.
    """
    ids = scored.ids
    if torch.unique(ids).numel() != ids.numel():
        raise ValueError("task ids must be unique")
    perm = torch.argsort(ids, stable=True)  # canonical position -> input index
    x = embeddings[perm] if embeddings is not None else None
    if scored.strategy == COLD_START:
        if x is None:
            raise ValueError("the cold-start order needs the pool's embeddings")
        zero_shot = scored.probs is not None and meaningful(scored.values[perm])
        probs = scored.probs[perm] if zero_shot else None
        order, values = cold_start_order(x, cold_start_clusters, seed, zero_shot=probs if zero_shot_order else None)
        order, explored = mix_exploration(order, exploration, torch.Generator().manual_seed(seed + 1))
        if not zero_shot:  # names that carry no meaning: no pre-annotations either
            scored = replace(scored, probs=None)
    else:
        values = scored.values[perm]
        order, explored = priority_order(values, x, power_beta=power_beta, clusters=clusters,
                                         exploration=exploration, ambiguous=scored.ambiguous[perm], seed=seed)
    return _back_to_input(perm, order, values, explored, scored)


def _back_to_input(perm, order, values, explored, scored: TaskScores) -> Ranking:
    """Re-index a ranking computed in canonical (id) order by the input's item order."""
    back_values = torch.empty_like(values)
    back_values[perm] = values
    back_explored = torch.empty_like(explored)
    back_explored[perm] = explored
    order = perm[order]
    return Ranking(order, scores_from_order(order), back_values, back_explored, scored.probs, scored.strategy,
                   scored.ambiguous, scored.routed)
