"""The ``head`` kind: a frozen encoder's cached embeddings + a small MC-dropout MLP.

Cheap enough for a CPU: training and T-sample scoring touch only the embeddings,
which every round reuses from the cache.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backend.al.blocks import by_blocks
from backend.al.kinds.base import KindBase, Model, Progress, keep_masks, logits_to_probs, stats_of
from backend.al.propagation import Check
from backend.al.training import TrainConfig, fit

# A head step is a few small matmuls: one thread is faster than several, 6-20x faster on a
# loaded 2-core machine where OpenMP threads wait for each other (scripts/bench_training.py).
TRAINING = TrainConfig(threads=1)
# Rows per block of MC scoring: every block has exactly this many rows (see mc_logits).
# 1024 keeps the (T, block, H) activations at ~20 MB and the padding of a small shard cheap.
_BLOCK = 1024


@dataclass(frozen=True)
class HeadArch:
    """The head's shape, saved with the model."""

    dim: int
    hidden: int
    dropout: float


class MCDropoutHead(nn.Module):
    """Linear -> ReLU -> Dropout -> Linear on sentence embeddings, with MC dropout at scoring time."""

    def __init__(self, dim: int, classes: int, hidden: int = 256, dropout: float = 0.3) -> None:
        super().__init__()
        if not 0 < dropout < 1:
            raise ValueError(f"MC dropout needs 0 < dropout < 1, got {dropout}")
        self.hidden = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, classes)
        self.dropout = dropout

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) for embeddings (B, D); dropout active in training mode only."""
        return self.out(F.dropout(F.relu(self.hidden(x)), self.dropout, self.training))

    @torch.inference_mode()
    def mc_logits(self, x: torch.Tensor, samples: int, generator: torch.Generator | None = None,
                  block: int = _BLOCK) -> torch.Tensor:
        """Logits of `samples` dropout masks, shared by every row. x (N, D) -> (N, T, C).

        The first layer is deterministic, so it runs once; only the masks and the
        output layer are repeated T times. Row i's result depends on x[i] and the
        generator's state only, never on the other rows: rows go through the matrix
        products in blocks of exactly ``block`` rows (the last one zero-padded),
        because BLAS picks its kernels, and so the last bits of a row's result, by the
        number of rows.
        """
        generator = generator or torch.Generator().manual_seed(0)
        masks = keep_masks(samples, (self.hidden.out_features,), self.dropout, generator).to(x.device)  # (T, H)
        classes = self.out.out_features
        # A mask on h is a mask on the output layer's inputs: fold the T masks into T copies of its
        # weights, (H, T*C), and the T samples of a block are one matrix product (half the time of
        # T masked products, scripts/bench_scoring.py).
        folded = (masks.unsqueeze(2) * self.out.weight.T.unsqueeze(0)).permute(1, 0, 2).reshape(-1, samples * classes)
        bias = self.out.bias.repeat(samples)  # (T*C,)
        def logits(rows: torch.Tensor) -> torch.Tensor:  # (block, D) -> (block, T, C)
            return torch.addmm(bias, F.relu(self.hidden(rows)), folded).view(-1, samples, classes)

        return by_blocks(x, logits, block)


class Kind(KindBase):
    """Frozen encoder + MC-dropout MLP head (``MODEL_MODE=head``)."""

    name = "head"

    def fit(self, texts: Sequence[str], targets: torch.Tensor, classes: list[str], multilabel: bool,
            previous: Model | None, progress: Progress | None, pool: Sequence[str] = (),
            check: Check | None = None) -> Model:
        """Train a fresh head (seeded), or continue from ``previous``'s weights."""
        cfg = self.backbone.config
        x = self.backbone.embed(texts)
        arch = HeadArch(dim=int(x.shape[1]), hidden=cfg.hidden, dropout=cfg.dropout)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # seeded initial weights, global RNG untouched
            head = self._build(arch, targets.shape[1])
        if previous is not None:
            head.load_state_dict(previous.state)
        fit_stats = fit(head, lambda m, idx: m(x[idx]), len(texts), targets, multilabel,
                        dataclasses.replace(TRAINING, seed=cfg.seed), progress)
        return Model(classes=list(classes), multilabel=multilabel, encoder=self.backbone.identity, kind=self.name,
                     state={k: v.detach().clone() for k, v in head.state_dict().items()}, n_train=len(texts),
                     arch=asdict(arch), stats=stats_of(targets, previous is not None, fit_stats))

    def mc_probs(self, model: Model, texts: Sequence[str], seed: int,
                 progress: Progress | None) -> torch.Tensor:
        """(N, T, C) from the cached embeddings (a pool's from its snapshot); T masks drawn from ``seed``,
        shared by all texts."""
        x, _ = self.backbone.rows(texts, 0, progress)
        head = self._build(HeadArch(**model.arch), len(model.classes))
        head.load_state_dict(model.state)
        head.eval()
        logits = head.mc_logits(x, self.backbone.config.mc_samples, torch.Generator().manual_seed(seed))
        return logits_to_probs(logits, model.multilabel)

    @staticmethod
    def _build(arch: HeadArch, classes: int) -> MCDropoutHead:
        return MCDropoutHead(arch.dim, classes, arch.hidden, arch.dropout)
