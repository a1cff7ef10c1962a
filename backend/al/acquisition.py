"""Acquisition functions on MC-dropout probabilities.

Every function takes ``probs`` shaped ``(N, T, C)``: N items, T Monte-Carlo dropout
samples, C classes (softmax outputs, each row summing to 1), and returns ``(N,)``
values where **higher means more informative**. Natural-log units.

Multi-label heads give independent Bernoulli probabilities shaped ``(N, T, L)``;
``multilabel=True`` treats each label as a two-class problem and sums over labels.

Input is validated, never repaired: NaN, values outside [0, 1], rows that do not sum
to 1 or a wrong rank raise :class:`ValueError`. Logits are not probabilities, and no
function guesses which one it was given.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

_EPS = 1e-12
_SUM_TOLERANCE = 1e-3


def validate_probs(probs: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """Check that probs is (N, T, C) probabilities; return it as a floating tensor."""
    if not isinstance(probs, torch.Tensor):
        raise ValueError(f"probs must be a torch.Tensor, got {type(probs).__name__}")
    if probs.dim() != 3:
        raise ValueError(f"probs must be shaped (N, T, C), got {tuple(probs.shape)}")
    n, t, c = probs.shape
    if t < 1 or (c < 2 and not multilabel) or c < 1:
        raise ValueError(f"probs needs T >= 1 samples and C >= 2 classes, got {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise ValueError(f"probs must be floating point, got {probs.dtype}")
    if n == 0:
        return probs
    if torch.isnan(probs).any():
        raise ValueError("probs contains NaN")
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError("probs must lie in [0, 1]; were logits passed instead of probabilities?")
    if not multilabel:
        sums = probs.sum(dim=-1)
        if (sums - 1).abs().max() > _SUM_TOLERANCE:
            raise ValueError("probs must sum to 1 over classes; were logits passed instead of probabilities?")
    return probs


def _bernoulli(probs: torch.Tensor) -> torch.Tensor:
    """(N, T, L) label probabilities -> (N, T, L, 2) two-class distributions."""
    return torch.stack([1 - probs, probs], dim=-1)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy over the last axis, in nats; 0 log 0 = 0."""
    return -(p * torch.log(p.clamp_min(_EPS))).sum(dim=-1)


def predictive_entropy(probs: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """Entropy of the MC-averaged prediction, H[E_t p_t]. (N, T, C) -> (N,).

    Shannon (1948); the standard uncertainty-sampling baseline (Lewis & Gale 1994).
    """
    probs = validate_probs(probs, multilabel)
    mean = probs.mean(dim=1)
    if multilabel:
        return _entropy(_bernoulli(mean)).sum(dim=-1)
    return _entropy(mean)


def expected_entropy(probs: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """Mean entropy of the individual MC samples, E_t H[p_t]. (N, T, C) -> (N,)."""
    probs = validate_probs(probs, multilabel)
    if multilabel:
        return _entropy(_bernoulli(probs)).sum(dim=-1).mean(dim=1)
    return _entropy(probs).mean(dim=1)


def bald(probs: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """BALD: mutual information between prediction and model parameters. (N, T, C) -> (N,).

    I[y; w] = H[E_t p_t] - E_t H[p_t] (Houlsby et al. 2011, "Bayesian Active Learning
    for Classification and Preference Learning"; with MC dropout: Gal, Islam &
    Ghahramani 2017, "Deep Bayesian Active Learning with Image Data"). Clamped at 0
    against rounding; 0 exactly when all samples agree.
    """
    return (predictive_entropy(probs, multilabel) - expected_entropy(probs, multilabel)).clamp_min(0)


def ambiguous(probs: torch.Tensor, multilabel: bool = False, min_entropy: float = 0.5,
              max_bald: float = 0.005) -> torch.Tensor:
    """Tasks whose uncertainty is aleatoric: high predictive entropy, low BALD. (N, T, C) -> (N,) bool.

    Predictive entropy splits into expected entropy (aleatoric: every MC sample is itself
    unsure) plus BALD (epistemic: the samples disagree; Depeweg et al. 2018, "Decomposition of
    Uncertainty in Bayesian Deep Learning"). A task is ambiguous when the entropy is at least
    ``min_entropy * log C`` and BALD at most ``max_bald * log C``: the model is sure that the
    answer is uncertain (label noise or a genuinely ambiguous text), so another label there
    teaches it little. Multi-label probabilities are never flagged: per-label entropies do not
    share one ``log C`` scale.

    MC dropout on the ``head`` kind gives small BALD (at most 0.03 log C on AG News, TREC-6 and
    CLINC150), so ``max_bald`` is calibrated to that posterior; see docs/BENCHMARKS.md.
    """
    probs = validate_probs(probs, multilabel)
    if multilabel:
        return torch.zeros(probs.shape[0], dtype=torch.bool)
    log_c = math.log(probs.shape[-1])
    entropy = predictive_entropy(probs)
    return (entropy >= min_entropy * log_c) & (entropy - expected_entropy(probs) <= max_bald * log_c)


def margin(probs: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """Margin ("breaking ties"): 1 - (p_top1 - p_top2) of the mean prediction. (N, T, C) -> (N,).

    Scheffer, Decomain & Wrobel 2001; Schröder et al. 2022 found it the strongest
    uncertainty strategy for transformer text classification. Multi-label: the mean
    over labels of 1 - |2p - 1| (distance from the decision boundary).
    """
    probs = validate_probs(probs, multilabel)
    mean = probs.mean(dim=1)
    if multilabel:
        return (1 - (2 * mean - 1).abs()).mean(dim=-1)
    top2 = mean.topk(2, dim=-1).values
    return 1 - (top2[:, 0] - top2[:, 1])


def least_confidence(probs: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """Least confidence: 1 - max_c p_c of the mean prediction. (N, T, C) -> (N,).

    Lewis & Gale 1994 / Culotta & McCallum 2005. Multi-label: mean over labels of
    1 - max(p, 1 - p).
    """
    probs = validate_probs(probs, multilabel)
    mean = probs.mean(dim=1)
    if multilabel:
        return (1 - torch.maximum(mean, 1 - mean)).mean(dim=-1)
    return 1 - mean.max(dim=-1).values


def variation_ratios(probs: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """Variation ratio: 1 - (share of MC samples voting for the modal class). (N, T, C) -> (N,).

    Freeman 1965; used for deep Bayesian active learning by Gal et al. 2017.
    Multi-label: mean over labels of the minority share of the samples' votes.
    """
    probs = validate_probs(probs, multilabel)
    t = probs.shape[1]
    if multilabel:
        positive = (probs > 0.5).float().mean(dim=1)
        return torch.minimum(positive, 1 - positive).mean(dim=-1)
    votes = probs.argmax(dim=-1)  # (N, T)
    counts = torch.zeros(probs.shape[0], probs.shape[2], dtype=probs.dtype)
    counts.scatter_add_(1, votes, torch.ones_like(votes, dtype=probs.dtype))
    return 1 - counts.max(dim=-1).values / t


def random_values(probs: torch.Tensor, multilabel: bool = False, ids: torch.Tensor | None = None,
                  seed: int = 0) -> torch.Tensor:
    """Uniform random values, the baseline every strategy must beat. (N, T, C) -> (N,).

    Each item's value is a hash of (seed, its id) (ids default to 0..N-1), so an item
    gets the same value whichever shard of a pool it is scored in.
    """
    probs = validate_probs(probs, multilabel)
    ids = torch.arange(probs.shape[0]) if ids is None else ids
    if ids.shape != (probs.shape[0],):
        raise ValueError(f"need one id per item: {probs.shape[0]} items, ids shaped {tuple(ids.shape)}")
    return keyed_uniform(ids, seed).to(probs.dtype)


_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for 32-bit x, without overflowing int64."""
    return (((((x >> 16) * c) & 0xFFFF) << 16) + (x & 0xFFFF) * c) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser: every input bit flips each output bit with probability ~1/2."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def keyed_uniform(ids: torch.Tensor, seed: int) -> torch.Tensor:
    """A uniform value in [0, 1) per id, fixed by (seed, id). ids (N,) integers -> (N,) float64."""
    ids = ids.to(torch.int64)
    low, high = ids & _MASK32, (ids >> 32) & _MASK32
    x = _mix32(_mix32(low ^ _mix32(torch.full_like(low, int(seed) & _MASK32))) ^ high)
    x = _mix32(x ^ ((int(seed) >> 32) & _MASK32))
    return x.double() / 2.0**32


Acquisition = Callable[..., torch.Tensor]

STRATEGIES: dict[str, Acquisition] = {
    "margin": margin,
    "bald": bald,
    "entropy": predictive_entropy,
    "least_confidence": least_confidence,
    "variation_ratios": variation_ratios,
    "random": random_values,
}
"""Acquisition functions by the name the settings and the CLI use."""


def acquire(name: str, probs: torch.Tensor, multilabel: bool = False, ids: torch.Tensor | None = None,
            seed: int = 0) -> torch.Tensor:
    """Apply the named acquisition function. (N, T, C) -> (N,); ``ids``/``seed`` key ``random``."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    if name == "random":
        return random_values(probs, multilabel, ids, seed)
    return STRATEGIES[name](probs, multilabel)
