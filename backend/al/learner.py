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

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from backend.al import lexical
from backend.al.acquisition import acquire, ambiguous
from backend.al.config import EngineConfig
from backend.al.embeddings import EmbeddingCache, text_digests
from backend.al.encoder import TextEncoder, encoder_identity, pick_device, resolve_encoder
from backend.al.kinds import AUTO, choose_kind, kind_class
from backend.al.kinds.base import Model, ModelKind, Progress
from backend.al.neighbours import NeighbourCache
from backend.al.propagation import NEIGHBOURS, Check, checkable, sample_by_digest
from backend.al.ranking import COLD_START, Ranking, TaskScores, order_pool
from backend.al.snapshots import Snapshots
from backend.al.zeroshot import label_prompt, zero_shot_scores

_GRAMS = "lexical n-gram rows v2"  # the version of lexical.features' rows that caches and snapshots hold
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
        self._memory: dict[bytes, torch.Tensor] = {}  # digest -> vector, when there is no cache folder
        self._encoder: TextEncoder | None = None
        self._device: torch.device | None = None
        self._kinds: dict[str, ModelKind] = {}
        self._gram_caches: dict[tuple[int, int], EmbeddingCache] = {}
        self._neighbours = NeighbourCache(self.cache.dir.parent if self.cache is not None else None, self.identity)
        self.snapshots = Snapshots(self.cache.dir.parent, f"{self.identity}; {_GRAMS}: crc32, opening words") \
            if self.cache is not None else None

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
        """The model kind registered as ``name`` (default: the configured mode; ``auto``: its CPU kind), built once."""
        name = name or choose_kind(self.config.mode, "cpu", [])
        if name not in self._kinds:
            self._kinds[name] = kind_class(name)(self)
        return self._kinds[name]

    # -- embeddings -------------------------------------------------------------------------

    def embed(self, texts: Sequence[str], progress: Progress | None = None,
              digests: np.ndarray | None = None) -> torch.Tensor:
        """Embeddings (N, D) float32 for texts, reading and filling the on-disk cache.

        A warm pool costs a SHA-1 per text (none when ``digests``, :func:`text_digests` of texts,
        are given) and a copy of its rows from the cache's memory maps; only the texts found
        nowhere are encoded (each distinct text once).
        """
        digests = text_digests(texts) if digests is None else digests
        found, x = self.cache.lookup(digests) if self.cache is not None else self._lookup_memory(digests)
        missing = np.flatnonzero(~found)
        if missing.size:
            todo: dict[bytes, list[int]] = {}  # distinct texts in order of first appearance
            raw = digests.tobytes()
            for i in missing.tolist():
                todo.setdefault(raw[20 * i:20 * i + 20], []).append(i)
            fresh = self.encoder.encode([texts[rows[0]] for rows in todo.values()], progress).to("cpu", torch.float32)
            keys = np.frombuffer(b"".join(todo), dtype=digests.dtype)
            if self.cache is not None:
                self.cache.store(keys, fresh)
            else:
                self._memory.update(zip(todo, fresh, strict=True))
            if x is None:
                x = torch.zeros(len(texts), fresh.shape[1])
            text_of = np.empty(len(texts), dtype=np.int64)
            for n, rows in enumerate(todo.values()):
                text_of[rows] = n
            x[torch.from_numpy(missing)] = fresh[torch.from_numpy(text_of[missing])]
        elif progress:
            progress(len(texts), len(texts))
        return x if x is not None else torch.zeros(0, self._dim_hint())

    def encoder_work(self, model: Model | None, texts: Sequence[str]) -> int:
        """How many texts scoring ``texts`` with ``model`` (None: the cold start) runs through the
        encoder: all of them for a kind that encodes per score (``full``), else the distinct texts
        whose embeddings no cache holds. Costs a SHA-1 per text and a search of the cache's keys."""
        if model is not None and self.kind(model.kind).encodes_per_score:
            return len(texts)
        digests = text_digests(texts)
        if self.cache is not None:
            found = self.cache.contains(digests)
        else:
            found = self._lookup_memory(digests)[0]
        return int(np.unique(digests[~found]).size)

    def grams(self, texts: Sequence[str], bits: int, digests: np.ndarray | None = None) -> lexical.Rows:
        """Hashed n-gram rows of texts (:func:`backend.al.lexical.features`), read from and added to
        the cache folder when there is one: beside the embeddings, keyed by the same digests (pass
        ``digests``, :func:`text_digests` of texts, when they are at hand), as finished rows
        (:func:`backend.al.lexical.pack`), so a warm pool costs a look-up, not the hashing."""
        if self.cache is None or bits > lexical.MAX_PACKED_BITS:
            return lexical.features(texts, bits)
        digests = text_digests(texts) if digests is None else digests
        todo, parts = np.arange(len(texts)), []
        for width in lexical.PACKED_WIDTHS:
            if not todo.size:
                break
            found, packed = self._gram_cache(bits, width).lookup(digests[todo])
            if found.any():
                parts.append((todo[found], packed.numpy()[found]))
                todo = todo[~found]
        if todo.size:
            fresh = lexical.features([texts[i] for i in todo.tolist()], bits)
            parts.append((todo, fresh))
            stored = np.zeros(todo.size, dtype=bool)
            for width in lexical.PACKED_WIDTHS:
                packed, fits = lexical.pack(fresh, width)
                new = fits & ~stored
                if new.any():
                    self._gram_cache(bits, width).store(digests[todo[new]], packed[new])
                stored |= fits
        return lexical.merge(parts, len(texts), bits)

    def rows(self, texts: Sequence[str], bits: int = 0, progress: Progress | None = None,
             digests: np.ndarray | None = None, snapshot: bool = True) -> tuple[torch.Tensor, lexical.Rows | None]:
        """Embeddings (N, D) of texts (:meth:`embed`) and, when bits > 0, their hashed n-gram rows
        (:meth:`grams`). A pool (at least ``snapshots.MIN_ROWS`` texts, with a cache folder) is
        read from a recent pool snapshot when one holds all its texts, and written as one when none
        does, so the next request for (a subset of) it is a memory map (:mod:`backend.al.snapshots`);
        the rows are the same either way. ``snapshot=False``: a set that grows rather than shrinks
        (a labelled set), neither read from nor written to snapshots."""
        snapshots = self.snapshots if snapshot and bits <= lexical.MAX_PACKED_BITS else None
        digests = text_digests(texts) if digests is None and (bits or snapshots) else digests
        hit = snapshots.get(digests, bits) if snapshots is not None else None
        if hit is not None and hit.found.all():
            if progress:
                progress(len(texts), len(texts))
            return hit.dense, hit.grams
        rest = None if hit is None else np.flatnonzero(~hit.found)
        rest_texts = texts if rest is None else [texts[i] for i in rest.tolist()]
        rest_digests = digests if rest is None or digests is None else digests[rest]
        x = self.embed(rest_texts, progress, rest_digests)
        grams = self.grams(rest_texts, bits, rest_digests) if bits else None
        if hit is not None:  # most from the snapshot, the rest from the caches
            held = np.flatnonzero(hit.found)
            whole = torch.empty(len(texts), x.shape[1])
            whole[torch.from_numpy(held)], whole[torch.from_numpy(rest)] = hit.dense, x
            x = whole
            grams = lexical.merge([(held, hit.grams), (rest, grams)], len(texts), bits) if bits else None
        if snapshots is not None and snapshots.stale(hit):
            snapshots.put(digests, x, grams)
        return x, grams

    def neighbours(self, x: torch.Tensor, digests: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's k nearest other rows of embeddings x (N, D) of the texts with ``digests``:
        similarities and indices (N, k) (:func:`backend.al.propagation.nearest`), kept beside the
        embedding cache for the next retrain on the same texts (:mod:`backend.al.neighbours`)."""
        return self._neighbours.get(x, digests, k)

    def _gram_cache(self, bits: int, width: int) -> EmbeddingCache:
        key = (bits, width)
        if key not in self._gram_caches:
            identity = f"{_GRAMS}: crc32, {bits} bits, opening words, packed {width} wide"
            self._gram_caches[key] = EmbeddingCache(self.cache.dir.parent, identity, marker="FEATURES")
        return self._gram_caches[key]

    def _lookup_memory(self, digests: np.ndarray) -> tuple[np.ndarray, torch.Tensor | None]:
        """:meth:`EmbeddingCache.lookup` for a learner without a cache folder."""
        raw = digests.tobytes()
        keys = [raw[i:i + 20] for i in range(0, len(raw), 20)]
        found = np.array([k in self._memory for k in keys], dtype=bool)
        if not found.any():
            return found, None
        zero = torch.zeros_like(next(iter(self._memory.values())))
        return found, torch.stack([self._memory.get(k, zero) for k in keys])

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
        pool: Sequence[str] = (),
        check: Check | None = None,
    ) -> Model:
        """Train a model of the configured kind; warm-starts from `previous` when configured.

        ``pool``: the project's unlabelled texts, which the ``linear`` kind may draw pseudo-labels
        from (``EngineConfig.propagation``); the other kinds ignore them. ``check``: with
        ``propagation_check`` ``deferred``, the verdict :meth:`check_propagation` gave on an earlier
        labelled set (None: none yet, so the fit runs the check on its own labels, and says so in its
        stats, ``propagation_checked_here``).
        """
        classes = list(classes)
        targets = encode_targets(labels, classes, multilabel)
        if len(texts) != targets.shape[0]:
            raise ValueError(f"{len(texts)} texts but {targets.shape[0]} labels")
        present = int((targets.sum(dim=0) > 0).sum())
        if present < (1 if multilabel else 2):
            raise NotEnoughLabels(f"need labels of at least 2 classes to train, got {present}")
        name = self.training_kind(targets)
        warm = previous if self.config.warm_start and self._compatible(previous, classes, multilabel, name) else None
        return self.kind(name).fit(texts, targets, classes, multilabel, warm, progress, pool=pool, check=check)

    def check_propagation(self, texts: Sequence[str], labels: Sequence[str] | Sequence[Sequence[str]],
                          classes: Sequence[str], multilabel: bool = False, pool: Sequence[str] = (),
                          progress: Progress | None = None) -> Check | None:
        """``PROPAGATION=auto``'s k-fold check on these labels and ``pool``, for a later :meth:`fit`
        (``propagation_check`` ``deferred``); None where that fit would not use a check (see
        :meth:`defers_check`), and then nothing is read."""
        targets = encode_targets(labels, list(classes), multilabel)
        kind = self.kind(self.training_kind(targets))
        run = getattr(kind, "check_propagation", None)
        return run(texts, targets, multilabel, pool, progress) if run is not None else None

    def may_propagate(self) -> bool:
        """Whether a retrain may draw pseudo-labels from the pool: ``PROPAGATION`` not ``off`` and a mode
        whose kind propagates (``auto`` picks one per retrain: ``linear`` on a CPU)."""
        mode = self.config.mode
        return self.config.propagation != "off" and (mode == AUTO or getattr(kind_class(mode), "propagates", False))

    def prepare_propagation(self, texts: Sequence[str], progress: Progress | None = None,
                            labelled: Sequence[str] = ()) -> bool:
        """Build and keep the k-NN lists of a project's graph as a retrain would draw it: the ``labelled``
        texts and at most ``propagation_pool`` of the unlabelled ``texts``, those with the smallest digests
        (:func:`backend.al.propagation.sample_by_digest`), so that the first retrain that checks
        propagation reads them instead of building them (the lists are keyed by the set of texts, which
        annotating does not change, and a set that drifted by a few texts updates them:
        :mod:`backend.al.neighbours`). The same lists as that retrain would build, so nothing it
        computes changes. False, and nothing done, where no retrain would propagate
        (:meth:`may_propagate`) or there are fewer than 2 texts."""
        if not self.may_propagate() or len(texts) + len(labelled) < 2:
            return False
        digests = text_digests(texts)
        rows = sample_by_digest(digests, self.config.propagation_pool).numpy()
        graph = list(labelled) + [texts[i] for i in rows.tolist()]
        keys = np.concatenate([text_digests(labelled), digests[rows]])
        x = self.embed(graph, progress, keys)  # cached by the first scoring
        self.neighbours(x, keys, NEIGHBOURS)
        return True

    def defers_check(self, model: Model) -> bool:
        """Whether the next fit after ``model`` wants a check on ``model``'s labels: ``PROPAGATION=auto``
        checked ``deferred``, a kind that propagates, single-label, and (with ``model.n_train``
        labels) at least ``propagation.FOLDS`` labels a class. It is :func:`check_made` when the fit
        ran it, else :meth:`check_propagation`'s to run."""
        cfg = self.config
        return (cfg.propagation == "auto" and cfg.propagation_check == "deferred" and not model.multilabel
                and getattr(self.kind(model.kind), "propagates", False)
                and checkable(model.n_train, len(model.classes)))

    def training_kind(self, targets: torch.Tensor) -> str:
        """The kind :meth:`fit` trains for targets (N, C): the configured mode, or with ``auto`` the
        choice of :func:`backend.al.kinds.choose_kind` from this device and the labels per class."""
        if self.config.mode != AUTO:
            return self.config.mode
        return choose_kind(AUTO, self.device.type, [int(c) for c in targets.sum(dim=0).tolist()])

    def _compatible(self, previous: Model | None, classes: list[str], multilabel: bool, name: str) -> bool:
        return (previous is not None and previous.classes == classes and previous.multilabel == multilabel
                and previous.encoder == self.identity and previous.kind == name)

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
              progress: Progress | None = None, label_names: Sequence[str] | None = None) -> TaskScores:
        """The per-task step: values (and mean probabilities) for any subset of a pool.

        ``ids`` are the texts' task ids (default 0..N-1); a task's result depends only on
        its text, its id, the model and the seed. Without a model, texts are embedded (cached)
        for the cold-start order and, given ``label_names`` (one per class, as the label config
        names them), scored zero-shot against them (:mod:`backend.al.zeroshot`). With
        ``ambiguity`` on, tasks are marked ``ambiguous`` here (per task, so shards agree) and
        routed back by :meth:`order`.
        """
        seed = self.config.seed if seed is None else seed
        ids = _ids(ids, len(texts))
        if model is None:
            embedded = self.embed(texts, progress)
            if not label_names or not len(texts):
                return TaskScores(ids, torch.zeros(len(texts)), None, COLD_START)
            names = self.embed([label_prompt(name) for name in label_names])
            probs, spread = zero_shot_scores(embedded, names)
            return TaskScores(ids, spread, probs, COLD_START)
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
        With ``ambiguity`` on, the ranking says it was routed (``Ranking.routed``), the cold start's
        too, so a publish keeps the set-aside score range free even when no task is marked.
        """
        cfg = self.config
        if cfg.ambiguity and not scored.routed:
            scored = dataclasses.replace(scored, routed=True)
        return order_pool(scored, embeddings, power_beta=cfg.power_beta, clusters=cfg.diversity_clusters,
                          exploration=cfg.exploration, cold_start_clusters=cfg.cold_start_clusters,
                          zero_shot_order=cfg.cold_start == "zero-shot",
                          seed=cfg.seed if seed is None else seed)

    def needs_embeddings(self, scored: TaskScores) -> bool:
        """Whether :meth:`order` needs the pool's embeddings for these scores."""
        return scored.strategy == COLD_START or self.config.diversity_clusters > 1

    def rank(self, model: Model | None, texts: Sequence[str], ids: Ids = None, seed: int | None = None,
             progress: Progress | None = None, label_names: Sequence[str] | None = None) -> Ranking:
        """Rank a pool: uncertainty with the model; without one, the cold start (``cold_start``: by
        diversity, or by class coverage of ``label_names``), carrying zero-shot probabilities of
        ``label_names`` when they mean something."""
        scored = self.score(model, texts, ids, seed, progress, label_names)
        embeddings = self.rows(texts)[0] if self.needs_embeddings(scored) else None
        return self.order(scored, embeddings, seed)


def check_made(model: Model) -> Check | None:
    """The propagation check ``model``'s fit ran on its own labels (no earlier one was given), else None."""
    counts = model.stats.get("propagation_check")
    return Check(*counts) if model.stats.get("propagation_checked_here") and isinstance(counts, list) else None


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
