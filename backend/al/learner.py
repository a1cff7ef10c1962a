"""The engine's facade: embed, fit, score and order with one configuration.

Both the simulation CLI and the service's workers go through :class:`ActiveLearner`,
so the ranking the service publishes is exactly the one the benchmark measured.

Ranking a pool is two steps: :meth:`ActiveLearner.score` (per task: MC probabilities and
acquisition values, for any subset of the pool, deterministic for a seed and task ids)
and :meth:`ActiveLearner.order` (pool-wide: exploration, diversity, the final order).
:meth:`ActiveLearner.rank` is their composition; a pool scored in shards and ordered
once gives exactly the same ranking.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from backend.al.acquisition import acquire, ambiguous
from backend.al.config import EngineConfig
from backend.al.embeddings import EmbeddingCache, text_key
from backend.al.encoder import TextEncoder, encoder_identity, pick_device, resolve_encoder
from backend.al.kinds import kind_class
from backend.al.kinds.base import Model, ModelKind, Progress
from backend.al.ranking import COLD_START, Ranking, TaskScores, order_pool

Ids = Sequence[int] | torch.Tensor | None
"""Task ids of the texts scored, one per text; None numbers them 0..N-1."""

__all__ = ["ActiveLearner", "EngineConfig", "Model", "NotEnoughLabels", "Ranking", "TaskScores",
           "encode_targets"]


class NotEnoughLabels(ValueError):
    """The labelled set cannot train a model yet (fewer than two classes present)."""


class ActiveLearner:
    """Embeds texts (cached), trains models and ranks pools with one EngineConfig.

    Nothing heavy happens at construction: the encoder is loaded on the first text
    that is not in the embedding cache, and the device is picked on first use, so a
    learner can be built before a fork without touching CUDA. The model kind is the
    configured ``mode`` for training; a saved model is scored by its own kind.
    """

    def __init__(self, config: EngineConfig, cache_dir: Path | None = None) -> None:
        self.config = config
        self.encoder_path = resolve_encoder(config.encoder)
        self.identity = encoder_identity(config.encoder, self.encoder_path, config.max_length)
        self.cache = EmbeddingCache(Path(cache_dir), self.identity) if cache_dir is not None else None
        self._memory: dict[str, torch.Tensor] = {}
        self._encoder: TextEncoder | None = None
        self._device: torch.device | None = None
        self._kinds: dict[str, ModelKind] = {}

    def __repr__(self) -> str:
        return f"ActiveLearner({self.config!r}, cache={self.cache!r})"

    @property
    def device(self) -> torch.device:
        if self._device is None:
            self._device = pick_device(self.config.device)
        return self._device

    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            self._encoder = TextEncoder(self.config.encoder, self.device, self.config.max_length,
                                        self.config.batch_size)
        return self._encoder

    def kind(self, name: str | None = None) -> ModelKind:
        """The model kind registered as ``name`` (default: the configured mode), built once."""
        name = name or self.config.mode
        if name not in self._kinds:
            self._kinds[name] = kind_class(name)(self)
        return self._kinds[name]

    # -- embeddings -------------------------------------------------------------------------

    def embed(self, texts: Sequence[str], progress: Progress | None = None) -> torch.Tensor:
        """Embeddings (N, D) for texts, reading and filling the on-disk cache."""
        keys = [text_key(t) for t in texts]
        found = self.cache.get(keys) if self.cache is not None else {}
        found.update((k, self._memory[k]) for k in keys if k not in found and k in self._memory)
        todo: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in found and key not in todo:
                todo[key] = text
        if todo:
            vectors = self.encoder.encode(list(todo.values()), progress)
            fresh = list(zip(todo.keys(), vectors, strict=True))
            if self.cache is not None:
                self.cache.put(fresh)
            else:
                self._memory.update(fresh)
            found.update(fresh)
        elif progress:
            progress(len(texts), len(texts))
        if not keys:
            return torch.zeros(0, self._dim_hint())
        return torch.stack([found[k] for k in keys])

    def _dim_hint(self) -> int:
        return self._encoder.dim if self._encoder is not None else 0

    # -- training -----------------------------------------------------------------------------

    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence[str] | Sequence[Sequence[str]],
        classes: Sequence[str],
        multilabel: bool = False,
        previous: Model | None = None,
        progress: Progress | None = None,
    ) -> Model:
        """Train a model of the configured kind; warm-starts from `previous` when configured."""
        classes = list(classes)
        targets = encode_targets(labels, classes, multilabel)
        if len(texts) != targets.shape[0]:
            raise ValueError(f"{len(texts)} texts but {targets.shape[0]} labels")
        present = int((targets.sum(dim=0) > 0).sum())
        if present < (1 if multilabel else 2):
            raise NotEnoughLabels(f"need labels of at least 2 classes to train, got {present}")
        warm = previous if self.config.warm_start and self._compatible(previous, classes, multilabel) else None
        return self.kind().fit(texts, targets, classes, multilabel, warm, progress)

    def _compatible(self, previous: Model | None, classes: list[str], multilabel: bool) -> bool:
        return (previous is not None and previous.classes == classes and previous.multilabel == multilabel
                and previous.encoder == self.identity and previous.kind == self.config.mode)

    # -- scoring ------------------------------------------------------------------------------

    def mc_probs(self, model: Model, texts: Sequence[str], seed: int | None = None,
                 progress: Progress | None = None) -> torch.Tensor:
        """MC-dropout probabilities (N, T, C) for texts under model."""
        seed = self.config.seed if seed is None else seed
        return self.kind(model.kind).mc_probs(model, texts, seed, progress)

    def predict_proba(self, model: Model, texts: Sequence[str]) -> torch.Tensor:
        """MC-averaged class probabilities (N, C)."""
        return self.mc_probs(model, texts).mean(dim=1)

    def score(self, model: Model | None, texts: Sequence[str], ids: Ids = None, seed: int | None = None,
              progress: Progress | None = None) -> TaskScores:
        """The per-task step: values (and mean probabilities) for any subset of a pool.

        ``ids`` are the texts' task ids (default 0..N-1); a task's result depends only on
        its text, its id, the model and the seed. Without a model, texts are only embedded
        (cached) for the cold-start order. With ``ambiguity`` on, tasks are marked
        ``ambiguous`` here (per task, so shards agree) and routed back by :meth:`order`.
        """
        seed = self.config.seed if seed is None else seed
        ids = _ids(ids, len(texts))
        if model is None:
            self.embed(texts, progress)
            return TaskScores(ids, torch.zeros(len(texts)), None, COLD_START)
        probs = self.mc_probs(model, texts, seed, progress)
        values = acquire(self.config.strategy, probs, model.multilabel, ids=ids, seed=seed)
        return TaskScores(ids, values, probs.mean(dim=1), self.config.strategy, self._ambiguous(probs, model))

    def _ambiguous(self, probs: torch.Tensor, model: Model) -> torch.Tensor | None:
        cfg = self.config
        if not cfg.ambiguity:
            return None
        return ambiguous(probs, model.multilabel, cfg.ambiguity_entropy, cfg.ambiguity_bald)

    def order(self, scored: TaskScores, embeddings: torch.Tensor | None = None, seed: int | None = None) -> Ranking:
        """The pool-wide step: the final order of a whole pool's scores (see ranking.order_pool).

        ``embeddings`` (N, D), in the order of ``scored``, are needed for diversity and cold start.
        """
        cfg = self.config
        return order_pool(scored, embeddings, power_beta=cfg.power_beta, clusters=cfg.diversity_clusters,
                          exploration=cfg.exploration, cold_start_clusters=cfg.cold_start_clusters,
                          seed=cfg.seed if seed is None else seed)

    def needs_embeddings(self, scored: TaskScores) -> bool:
        """Whether :meth:`order` needs the pool's embeddings for these scores."""
        return scored.strategy == COLD_START or self.config.diversity_clusters > 1

    def rank(self, model: Model | None, texts: Sequence[str], ids: Ids = None, seed: int | None = None,
             progress: Progress | None = None) -> Ranking:
        """Rank a pool: uncertainty with the model, diversity-first cold start without one."""
        scored = self.score(model, texts, ids, seed, progress)
        embeddings = self.embed(texts) if self.needs_embeddings(scored) else None
        return self.order(scored, embeddings, seed)


def _ids(ids: Ids, n: int) -> torch.Tensor:
    if ids is None:
        return torch.arange(n)
    ids = torch.as_tensor(ids, dtype=torch.int64)
    if ids.shape != (n,):
        raise ValueError(f"need one task id per text: {n} texts, ids shaped {tuple(ids.shape)}")
    return ids


def encode_targets(labels: Sequence[str] | Sequence[Sequence[str]], classes: Sequence[str],
                   multilabel: bool) -> torch.Tensor:
    """Labels as a float matrix (N, C): one-hot rows, or 0/1 rows for multi-label."""
    index = {c: i for i, c in enumerate(classes)}
    if len(index) != len(classes):
        raise ValueError("class names must be unique")
    targets = torch.zeros(len(labels), len(classes))
    for row, label in enumerate(labels):
        names = list(label) if multilabel else [label]
        if not multilabel and not isinstance(label, str):
            raise ValueError(f"single-label targets must be strings, got {label!r}")
        for name in names:
            if name not in index:
                raise ValueError(f"label {name!r} is not one of the classes {list(classes)}")
            targets[row, index[name]] = 1
    return targets
