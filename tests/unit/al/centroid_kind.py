"""A test-only model kind: nearest class centroid on cached embeddings, MC noise on the centroids.

It shows that adding a kind is one module with a ``Kind`` class plus one registry line
(tests add the line with ``monkeypatch.setitem(KINDS, "centroid", __name__)``).
"""

from __future__ import annotations

from typing import Sequence

import torch

from backend.al.kinds.base import KindBase, Model, Progress, logits_to_probs, stats_of
from backend.al.propagation import Check


class Kind(KindBase):
    name = "centroid"

    def fit(self, texts: Sequence[str], targets: torch.Tensor, classes: list[str], multilabel: bool,
            previous: Model | None, progress: Progress | None, pool: Sequence[str] = (),
            check: Check | None = None) -> Model:
        x = self.backbone.embed(texts)  # the pool's texts are not used by this kind
        centroids = (targets.T @ x) / targets.sum(dim=0).clamp_min(1).unsqueeze(1)  # (C, D)
        return Model(classes=list(classes), multilabel=multilabel, encoder=self.backbone.identity,
                     kind=self.name, state={"centroids": centroids}, n_train=len(texts),
                     arch={"temperature": 0.1}, stats=stats_of(targets, False, {}))

    def mc_probs(self, model: Model, texts: Sequence[str], seed: int, progress: Progress | None) -> torch.Tensor:
        x = self.backbone.embed(texts, progress)
        centroids = model.state["centroids"]
        noise = torch.randn(self.backbone.config.mc_samples, *centroids.shape,
                            generator=torch.Generator().manual_seed(seed)) * 0.05
        logits = torch.einsum("nd,tcd->ntc", x, centroids.unsqueeze(0) + noise) / model.arch["temperature"]
        return logits_to_probs(logits, model.multilabel)
