"""What every model kind shares: the :class:`Model` record, the :class:`ModelKind` protocol
and the :class:`Backbone` a kind is built on.

A kind turns labelled texts into a :class:`Model` and a model into MC-dropout
probabilities ``(N, T, C)``. Its MC samples must not depend on which other texts are
scored with a text (batch or shard): masks are drawn once per seed and shared by every
item ("consistent MC dropout", Kirsch et al. 2019, BatchBALD), so a pool scored in
shards gives exactly the probabilities of one call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from backend.al import lexical
from backend.al.config import EngineConfig
from backend.al.propagation import Check

Progress = Callable[[int, int], None]
"""progress(done, total): called while long steps run."""

FORMAT = 2  # checkpoint format written by Model.to_dict (1: before model kinds, still read)


@dataclass
class Model:
    """A trained classifier: class names plus what its kind needs to rebuild it.

    ``arch`` holds the kind's architecture (read back by the kind into its own typed
    dataclass); ``stats`` holds training statistics, for people, never read by code.
    """

    classes: list[str]
    multilabel: bool
    encoder: str  # identity of the encoder the model was trained on
    kind: str  # a name in backend.al.kinds.KINDS
    state: dict[str, torch.Tensor]
    n_train: int
    arch: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def fits(self, classes: Sequence[str], multilabel: bool) -> bool:
        """Whether the model labels exactly these classes, in this order, single or multiple choice."""
        return list(self.classes) == list(classes) and self.multilabel == multilabel

    def to_dict(self) -> dict[str, Any]:
        """Plain types and tensors only, loadable with ``torch.load(weights_only=True)``."""
        return {"format": FORMAT, "classes": list(self.classes), "multilabel": self.multilabel,
                "encoder": self.encoder, "kind": self.kind, "state": self.state, "n_train": self.n_train,
                "arch": dict(self.arch), "stats": dict(self.stats)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Model":
        """Inverse of :meth:`to_dict`; also reads format-1 checkpoints (``mode`` and ``meta``)."""
        data = dict(data)
        if data.pop("format", 1) == 1:
            meta = data.pop("meta", {}) or {}
            data["kind"] = data.pop("mode")
            arch_keys = ("dim", "hidden", "dropout") if data["kind"] == "head" else ()
            data["arch"] = {k: meta[k] for k in arch_keys if k in meta}
            data["stats"] = {k: v for k, v in meta.items() if k not in arch_keys}
        return cls(**data)


class Backbone(Protocol):
    """What a kind gets from the engine: its settings, the device and the shared encoder."""

    config: EngineConfig
    encoder_path: str  # local folder or hub name of the pretrained encoder
    identity: str  # changes whenever the encoder's embeddings could change

    @property
    def device(self) -> torch.device: ...

    def embed(self, texts: Sequence[str], progress: Progress | None = None,
              digests: np.ndarray | None = None) -> torch.Tensor:
        """Cached sentence embeddings (N, D); ``digests``: the texts' cache keys when already computed."""
        ...

    def grams(self, texts: Sequence[str], bits: int, digests: np.ndarray | None = None) -> "lexical.Rows":
        """Cached hashed n-gram rows (N texts, 2 ** bits columns): :func:`backend.al.lexical.features`."""
        ...

    def rows(self, texts: Sequence[str], bits: int = 0, progress: Progress | None = None,
             digests: np.ndarray | None = None, snapshot: bool = True) -> tuple[torch.Tensor, "lexical.Rows | None"]:
        """:meth:`embed` and, when bits > 0, :meth:`grams` of texts together (a pool's may come from a
        snapshot; not with ``snapshot=False``)."""
        ...

    def neighbours(self, x: torch.Tensor, digests: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`backend.al.propagation.nearest` of embeddings x (N, D) of the texts with ``digests``,
        kept for the next call on the same set of texts."""
        ...


class KindBase:
    """What kinds share: they are built on the engine's backbone and name themselves."""

    name = ""
    encodes_per_score = False
    """Whether scoring a text runs the encoder whatever the caches hold (``full``: MC dropout through
    it); the other kinds score cached embeddings, so a warm pool is cheap to score."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone

    def __repr__(self) -> str:
        return f"{type(self).__module__}.Kind(name={self.name!r})"


class ModelKind(Protocol):
    """One way of turning labelled texts into a model with MC-dropout probabilities.

    Implementations live in ``backend/al/kinds/<name>.py`` as a class named ``Kind``,
    constructed with the engine's :class:`Backbone` (subclassing :class:`KindBase` does that).
    """

    name: str
    encodes_per_score: bool

    def fit(self, texts: Sequence[str], targets: torch.Tensor, classes: list[str], multilabel: bool,
            previous: Model | None, progress: Progress | None, pool: Sequence[str] = (),
            check: Check | None = None) -> Model:
        """Train on texts with targets (N, C) over ``classes``; warm-start from ``previous`` when given.

        ``pool``: unlabelled texts of the project, for kinds that learn from them (``linear``'s
        pseudo-labels), and ``check`` the verdict of an earlier propagation check
        (``EngineConfig.propagation_check``); the others ignore both.
        """
        ...

    def mc_probs(self, model: Model, texts: Sequence[str], seed: int,
                 progress: Progress | None) -> torch.Tensor:
        """MC-dropout probabilities (N, T, C), the same for a text whatever else is scored with it."""
        ...


def logits_to_probs(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Softmax (single-label) or sigmoid (multi-label) over the last axis. Shape unchanged."""
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)


def keep_masks(samples: int, shape: tuple[int, ...], rate: float, generator: torch.Generator) -> torch.Tensor:
    """Inverted-dropout multipliers (T, *shape): 0 where dropped, 1/keep elsewhere.

    Masks come from random bytes (4x less memory traffic than float uniforms); the keep
    probability is quantised to k/256 and the scale uses that exact value, so every
    sample's expectation is still the deterministic forward pass.
    """
    threshold = max(1, min(255, round((1 - rate) * 256)))
    noise = torch.randint(0, 256, (samples, *shape), generator=generator, dtype=torch.uint8)
    return (noise < threshold).float() / (threshold / 256)


def stats_of(targets: torch.Tensor, warm: bool, fit_stats: dict) -> dict[str, Any]:
    """Training statistics recorded with a model: class counts, warm start and the fit's numbers."""
    return {"warm_start": warm, "class_counts": targets.sum(dim=0).tolist(),
            **{k: v for k, v in fit_stats.items() if v is not None}}
