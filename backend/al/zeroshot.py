"""Zero-shot cold start: the label names as class prototypes, before the first label.

Before any model exists, the texts and the label names (the label config's choices) are
embedded by the same encoder; ``softmax(cos-sim / T)`` is a zero-shot classifier. It gives LS
its first pre-annotations and, with ``COLD_START=zero-shot``, the cold-start order class coverage
(the text most like each label name first, then every predicted class in turn, each spread over
the k-means clusters). That order is not the default: as a seed set it trained no better first
models than the k-means order (docs/BENCHMARKS.md, "Zero-shot cold start").

Label names that carry no meaning ("A"/"B", "LABEL_0", TREC's "ABBR"/"NUM") give every
text nearly the same similarity to every name. The spread of a text's similarities across the
names (their standard deviation) measures that; a pool whose mean spread is below
``MIN_SPREAD`` falls back to the diversity-only cold start and publishes no labels.

Shapes: sims, probs (N, C); spread (N,). The per-task part (:func:`zero_shot_scores`)
depends only on each text's own embedding; the pool-wide part (:func:`zero_shot_order`) is
given the whole pool.
"""

from __future__ import annotations

import re

import torch

from backend.al.blocks import by_blocks

TEMPERATURE = 0.05
"""Softmax temperature on cosine similarities (MiniLM's text-to-name similarities spread by ~0.07)."""

MIN_SPREAD = 0.055
"""Mean per-text std of the name similarities below which names are taken as meaningless.

Measured with the packaged MiniLM (docs/BENCHMARKS.md, "Zero-shot cold start"): 0.063-0.092
for AG News, CLINC150 and TREC-6 with spelled-out names; 0.023-0.047 for TREC-6's codes and
for letters or ``LABEL_k`` on all three sets.
"""

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[_\-.:/\\]+")


def label_prompt(name: str) -> str:
    """A label name as words to embed: 'book_flight' -> 'book flight', 'SciTech' -> 'Sci Tech',
    'Sci/Tech' -> 'Sci Tech'."""
    words = _SEPARATORS.sub(" ", _CAMEL.sub(" ", name))
    return " ".join(words.split()) or name


_BLOCK = 256
"""Rows per matrix product: every block is padded to this size, so a text's similarities do not
depend on how many texts share its call (a pool scored in shards gives the one-call values)."""


def cosine(texts: torch.Tensor, names: torch.Tensor) -> torch.Tensor:
    """Cosine similarities, in float64. texts (N, D), names (C, D) -> (N, C)."""
    if texts.dim() != 2 or names.dim() != 2 or texts.shape[1] != names.shape[1]:
        raise ValueError(f"need (N, D) and (C, D) embeddings, got {tuple(texts.shape)} and {tuple(names.shape)}")
    a = torch.nn.functional.normalize(texts.double(), dim=1)
    b = torch.nn.functional.normalize(names.double(), dim=1)
    return by_blocks(a, lambda rows: rows @ b.T, _BLOCK)


def zero_shot_scores(texts: torch.Tensor, names: torch.Tensor,
                     temperature: float = TEMPERATURE) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-task step. texts (N, D), names (C, D) -> (probs (N, C), spread (N,)).

    probs = softmax(cos / temperature); spread = std over the C similarities of a text.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if names.shape[0] < 2:
        raise ValueError(f"zero-shot needs at least two label names, got {names.shape[0]}")
    sims = cosine(texts, names)
    return torch.softmax(sims / temperature, dim=1).float(), sims.std(dim=1).float()


def meaningful(spread: torch.Tensor, min_spread: float = MIN_SPREAD) -> bool:
    """Whether the names separate the pool: mean spread (N,) >= min_spread (False for an empty pool)."""
    return spread.numel() > 0 and float(spread.double().mean()) >= min_spread


def zero_shot_order(probs: torch.Tensor, clusters: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Class coverage first, then each predicted class in turn, spread over clusters. -> order (N,).

    probs (N, C) zero-shot probabilities, clusters (N,) k-means cluster per item, distances (N,)
    to its cluster's centroid. Round one takes, for every class, the item most likely of that
    class (classes whose best item is surest first), so the first C labels cover every name the
    data match. Then the classes take turns; each class's lane holds the items predicted as it,
    clusters taking turns inside (the cluster with most of the lane first) and the most
    representative item (closest to its centroid) first inside a cluster. Representative
    rather than surest items: the surest are near-copies of the label name, and on AG News a
    first model trained on them was 18 points worse (docs/BENCHMARKS.md, "Zero-shot cold start").
    """
    n, c = probs.shape
    if clusters.shape != (n,) or distances.shape != (n,):
        raise ValueError(f"need one cluster and distance per item: {n} items, got {tuple(clusters.shape)} "
                         f"and {tuple(distances.shape)}")
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    best = probs.max(dim=0).values
    classes = torch.argsort(-best.double(), stable=True).tolist()
    taken = torch.zeros(n, dtype=torch.bool)
    order: list[int] = []
    for k in classes[:n]:  # a pool smaller than the class count covers what it can
        ranked = torch.argsort(-probs[:, k].double(), stable=True)
        pick = int(ranked[~taken[ranked]][0])
        taken[pick] = True
        order.append(pick)
    predicted = probs.argmax(dim=1)
    lanes = [_lane((predicted == k).nonzero().flatten(), clusters, distances, taken) for k in classes]
    depth = max(len(lane) for lane in lanes)
    order += [lane[i] for i in range(depth) for lane in lanes if i < len(lane)]
    return torch.tensor(order, dtype=torch.long)


def _lane(members: torch.Tensor, clusters: torch.Tensor, distances: torch.Tensor, taken: torch.Tensor) -> list[int]:
    """One class's items not yet taken: clusters take turns (largest first), closest to the centroid first."""
    members = members[~taken[members]]
    if members.numel() == 0:
        return []
    members = members[torch.argsort(distances[members].double(), stable=True)]
    groups: dict[int, list[int]] = {}
    for idx in members.tolist():
        groups.setdefault(int(clusters[idx]), []).append(idx)
    queues = sorted(groups.values(), key=len, reverse=True)  # stable: ties keep first-seen order
    return [q[i] for i in range(len(queues[0])) for q in queues if i < len(q)]
