"""The engine's facade: embed, fit, predict and rank with one configuration.

Both the simulation CLI and the service's workers go through :class:`ActiveLearner`,
so the ranking the service publishes is exactly the one the benchmark measured.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from backend.al import ranking as rk
from backend.al.acquisition import STRATEGIES, acquire
from backend.al.embeddings import EmbeddingCache, text_key
from backend.al.model import (
    FullClassifier,
    MCDropoutHead,
    TextEncoder,
    encoder_identity,
    full_mode_tokenizer,
    logits_to_probs,
    pick_device,
    resolve_encoder,
)
from backend.al.training import TrainConfig, fit

Progress = Callable[[int, int], None]
"""progress(done, total): called while long steps run."""


@dataclass(frozen=True)
class EngineConfig:
    """How the engine embeds, trains and ranks. Defaults are the benchmarked ones."""

    encoder: str = "all-MiniLM-L6-v2"
    mode: str = "head"  # "head" or "full"
    strategy: str = "margin"
    mc_samples: int = 20
    power_beta: float = 0.0  # 0: deterministic order; >0: PowerX sampling (Kirsch et al. 2023)
    diversity_clusters: int = 0  # 0: off
    exploration: float = 0.1
    warm_start: bool = False
    seed: int = 0
    device: str = "auto"
    hidden: int = 256
    dropout: float = 0.3
    max_length: int = 128
    batch_size: int = 64
    cold_start_clusters: int = 20

    def __post_init__(self) -> None:
        if self.mode not in ("head", "full"):
            raise ValueError(f"mode must be 'head' or 'full', got {self.mode!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}")
        if self.mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {self.mc_samples}")
        if not 0 <= self.exploration < 1:
            raise ValueError(f"exploration must be in [0, 1), got {self.exploration}")


@dataclass
class Model:
    """A trained classifier: class names plus the state needed to rebuild it."""

    classes: list[str]
    multilabel: bool
    encoder: str  # encoder identity the head was trained on
    mode: str
    state: dict[str, torch.Tensor]
    n_train: int
    meta: dict = field(default_factory=dict)


@dataclass
class Ranking:
    """A priority order over a pool of N items.

    order[i] is the index of the i-th item to label; scores[j] in [0, 1] is item j's
    priority (lower = label sooner); values[j] its acquisition value (higher = more
    informative); explored[j] marks items placed by the exploration share; probs is
    the mean predictive distribution (N, C), or None at cold start.
    """

    order: torch.Tensor
    scores: torch.Tensor
    values: torch.Tensor
    explored: torch.Tensor
    probs: torch.Tensor | None
    strategy: str


class NotEnoughLabels(ValueError):
    """The labelled set cannot train a model yet (fewer than two classes present)."""


# A head step is a few small matmuls: one thread is faster than several, 6-20x faster on a
# loaded 2-core machine where OpenMP threads wait for each other (scripts/bench_training.py).
HEAD_TRAINING = TrainConfig(threads=1)
FULL_TRAINING = TrainConfig(lr=5e-5, weight_decay=0.01, batch_size=16, tiny_steps=60, max_epochs=4, patience=1)


class ActiveLearner:
    """Embeds texts (cached), trains models and ranks pools with one EngineConfig.

    Nothing heavy happens at construction: the encoder is loaded on the first text
    that is not in the embedding cache, and the device is picked on first use, so a
    learner can be built before a fork without touching CUDA.
    """

    def __init__(self, config: EngineConfig, cache_dir: Path | None = None) -> None:
        self.config = config
        self.encoder_path = resolve_encoder(config.encoder)
        self.identity = encoder_identity(config.encoder, self.encoder_path, config.max_length)
        self.cache = EmbeddingCache(Path(cache_dir), self.identity) if cache_dir is not None else None
        self._memory: dict[str, torch.Tensor] = {}
        self._encoder: TextEncoder | None = None
        self._device: torch.device | None = None
        self._full: dict[int, FullClassifier] = {}

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
        """Train a model on labelled texts; warm-starts from `previous` when configured."""
        classes = list(classes)
        targets = encode_targets(labels, classes, multilabel)
        if len(texts) != targets.shape[0]:
            raise ValueError(f"{len(texts)} texts but {targets.shape[0]} labels")
        present = int((targets.sum(dim=0) > 0).sum())
        if present < (1 if multilabel else 2):
            raise NotEnoughLabels(f"need labels of at least 2 classes to train, got {present}")
        warm = previous if self.config.warm_start and self._compatible(previous, classes, multilabel) else None
        if self.config.mode == "full":
            return self._fit_full(texts, targets, classes, multilabel, warm, progress)
        return self._fit_head(texts, targets, classes, multilabel, warm, progress)

    def _compatible(self, previous: Model | None, classes: list[str], multilabel: bool) -> bool:
        return (previous is not None and previous.classes == classes and previous.multilabel == multilabel
                and previous.encoder == self.identity and previous.mode == self.config.mode)

    def _fit_head(self, texts, targets, classes, multilabel, warm, progress) -> Model:
        x = self.embed(texts)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)  # seeded initial weights, global RNG untouched
            head = MCDropoutHead(x.shape[1], len(classes), self.config.hidden, self.config.dropout)
        if warm is not None:
            head.load_state_dict(warm.state)
        stats = fit(head, lambda m, idx: m(x[idx]), len(texts), targets, multilabel,
                    dataclasses.replace(HEAD_TRAINING, seed=self.config.seed), progress)
        return Model(classes=classes, multilabel=multilabel, encoder=self.identity, mode="head",
                     state={k: v.detach().clone() for k, v in head.state_dict().items()}, n_train=len(texts),
                     meta={"dim": int(x.shape[1]), "hidden": self.config.hidden, "dropout": self.config.dropout,
                           "warm_start": warm is not None, "class_counts": targets.sum(dim=0).tolist(),
                           **{k: v for k, v in stats.items() if v is not None}})

    def _fit_full(self, texts, targets, classes, multilabel, warm, progress) -> Model:
        tokenizer = full_mode_tokenizer(self.encoder_path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            net = FullClassifier(self.encoder_path, len(classes))
        if warm is not None:
            net.load_state_dict(warm.state)
        net.to(self.device)
        targets = targets.to(self.device)
        texts = list(texts)

        def forward(m, idx):
            batch = tokenizer([texts[i] for i in idx.tolist()], padding=True, truncation=True,
                              max_length=self.config.max_length, return_tensors="pt").to(self.device)
            return m(**batch)

        stats = fit(net, forward, len(texts), targets, multilabel,
                    dataclasses.replace(FULL_TRAINING, seed=self.config.seed), progress)
        return Model(classes=classes, multilabel=multilabel, encoder=self.identity, mode="full",
                     state={k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, n_train=len(texts),
                     meta={"class_counts": targets.sum(dim=0).tolist(),
                           **{k: v for k, v in stats.items() if v is not None}})

    # -- scoring ------------------------------------------------------------------------------

    def mc_probs(self, model: Model, texts: Sequence[str], seed: int | None = None,
                 progress: Progress | None = None) -> torch.Tensor:
        """MC-dropout probabilities (N, T, C) for texts under model."""
        generator = torch.Generator().manual_seed(self.config.seed if seed is None else seed)
        if model.mode == "full":
            return self._mc_probs_full(model, texts, progress)
        x = self.embed(texts, progress)
        head = MCDropoutHead(int(model.meta["dim"]), len(model.classes), int(model.meta["hidden"]),
                             float(model.meta["dropout"]))
        head.load_state_dict(model.state)
        head.eval()
        logits = head.mc_logits(x, self.config.mc_samples, generator)
        return logits_to_probs(logits, model.multilabel)

    def _mc_probs_full(self, model: Model, texts: Sequence[str], progress: Progress | None) -> torch.Tensor:
        net = FullClassifier(self.encoder_path, len(model.classes))
        net.load_state_dict(model.state)
        net.to(self.device)
        tokenizer = full_mode_tokenizer(self.encoder_path)
        out = []
        step = max(1, self.config.batch_size // 4)
        for start in range(0, len(texts), step):
            batch = tokenizer(list(texts[start:start + step]), padding=True, truncation=True,
                              max_length=self.config.max_length, return_tensors="pt").to(self.device)
            out.append(logits_to_probs(net.mc_logits(batch, self.config.mc_samples), model.multilabel).cpu())
            if progress:
                progress(min(start + step, len(texts)), len(texts))
        return torch.cat(out) if out else torch.zeros(0, self.config.mc_samples, len(model.classes))

    def predict_proba(self, model: Model, texts: Sequence[str]) -> torch.Tensor:
        """MC-averaged class probabilities (N, C)."""
        return self.mc_probs(model, texts).mean(dim=1)

    def rank(
        self,
        model: Model | None,
        texts: Sequence[str],
        seed: int | None = None,
        progress: Progress | None = None,
    ) -> Ranking:
        """Rank a pool: uncertainty with the model, diversity-first cold start without one."""
        cfg = self.config
        seed = cfg.seed if seed is None else seed
        x = self.embed(texts, progress if model is None or model.mode == "head" else None)
        if model is None:
            order, values = rk.cold_start_order(x, cfg.cold_start_clusters, seed)
            order, explored = rk.mix_exploration(order, cfg.exploration, torch.Generator().manual_seed(seed + 1))
            return Ranking(order, rk.scores_from_order(order), values, explored, None, "cold_start")
        probs = self.mc_probs(model, texts, seed, progress)
        values = acquire(cfg.strategy, probs, model.multilabel, torch.Generator().manual_seed(seed))
        order, explored = rk.priority_order(values, x, power_beta=cfg.power_beta, clusters=cfg.diversity_clusters,
                                            exploration=cfg.exploration, seed=seed)
        return Ranking(order, rk.scores_from_order(order), values, explored, probs.mean(dim=1), cfg.strategy)


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
