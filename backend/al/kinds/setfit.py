"""The ``setfit`` kind: the encoder tuned contrastively on pairs of the labelled texts, then the
``linear`` kind on the tuned encoder's embeddings (SetFit: Tunstall et al. 2022).

Each fit starts from the pretrained encoder (seeded) and tunes it on pairs of labelled texts: for
each anchor text a partner that shares a label with it and one that shares none, the cosine of the
two embeddings regressed on their label sets' Jaccard similarity (1 / 0 for single-label), with mean
squared error. Then the ``linear`` kind (its logistic regression, class weights, hashed n-grams and
posterior samples for BALD) fits on the tuned encoder's embeddings. Pseudo-labels from the pool are
off (``propagates``): they would need a tune per check.

Scoring runs the tuned encoder over every text (``encodes_per_score``, as ``full`` does): the
embedding caches hold the pretrained encoder's. The model carries the tuned encoder's weights
(``encoder.*`` in its state) beside the logistic regression's.

Measured as the learner under the loop (``scripts/bench_setfit.py``, random labels, CPU): above the
frozen encoder's logistic regression and above a full fine-tune on the same labels on AG News and
TREC-6 (docs/BENCHMARKS.md, "SetFit-style tuning"). Opt-in (``MODEL_MODE=setfit``): on a CPU one
tune of 100 labels takes minutes and every score re-encodes the pool, so it is a GPU worker's kind.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backend.al import lexical, propagation
from backend.al.encoder import encode_tokens, mean_pool
from backend.al.kinds import full, linear
from backend.al.kinds.base import KindBase, Model, Progress, stats_of
from backend.al.propagation import Check
from backend.al.tokens import Tokens

ITERATIONS = 20
"""Pairs per labelled text: SetFit's ``num_iterations`` (each gives one positive and one negative pair)."""
MAX_PAIRS = 4000
"""At most this many pairs a tune (250 steps of 16): 20 iterations up to 100 labels, fewer above."""
BATCH, LR, WARMUP = 16, 2e-5, 0.1
"""Pairs per step, AdamW's learning rate, and the share of steps it warms up over (then decays linearly)."""
ENCODER = "encoder."
"""The prefix of the tuned encoder's weights in a model's state."""


def pairs_of(targets: torch.Tensor, generator: torch.Generator,
             iterations: int = ITERATIONS, max_pairs: int = MAX_PAIRS) -> torch.Tensor:
    """(P, 3) rows (anchor, partner, target similarity): anchors cycle through seeded permutations of
    the N labelled texts (targets (N, C), 0/1), ``iterations`` times each while the pairs fit within
    ``max_pairs``; each anchor has one partner sharing a label (itself when none does; target 1 for
    single-label, the label sets' Jaccard similarity for multi-label) and, when one exists, one
    sharing none (target 0)."""
    n = targets.shape[0]
    t = (targets > 0).float()
    anchors = torch.cat([torch.randperm(n, generator=generator) for _ in range(iterations)])
    anchors = anchors[:max(1, max_pairs // 2)]
    sizes = t.sum(dim=1)
    rows = []
    for anchor in anchors.tolist():
        shared = t @ t[anchor]
        jaccard = shared / (sizes + sizes[anchor] - shared).clamp_min(1)
        near = torch.nonzero(shared > 0).flatten()
        near = near[near != anchor]
        partner = int(near[torch.randint(len(near), (1,), generator=generator)]) if len(near) else anchor
        rows.append((anchor, partner, float(jaccard[partner]) if partner != anchor else 1.0))
        far = torch.nonzero(shared == 0).flatten()
        if len(far):
            rows.append((anchor, int(far[torch.randint(len(far), (1,), generator=generator)]), 0.0))
    return torch.tensor(rows, dtype=torch.float64)


def contrastive_tune(encoder: nn.Module, tokens: Tokens, pad: int, pairs: torch.Tensor,
                     progress: Progress | None = None, lr: float = LR) -> int:
    """Tune encoder in place on ``pairs`` (:func:`pairs_of`, in order) of the tokenized texts: cosine of
    the mean-pooled embeddings against the target, mean squared error, batches of ``BATCH`` pairs,
    AdamW at ``lr`` with a linear warm-up and decay. Dropout on (the caller seeds it). -> steps."""
    steps = -(-len(pairs) // BATCH)
    warmup = max(1, int(WARMUP * steps))
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / steps))
    device = next(encoder.parameters()).device
    encoder.train()
    for step in range(steps):
        batch = pairs[BATCH * step:BATCH * (step + 1)]
        ids, mask = tokens.batch(torch.cat([batch[:, 0], batch[:, 1]]).long(), pad)
        pooled = mean_pool(encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        cosine = F.cosine_similarity(pooled[:len(batch)], pooled[len(batch):])
        loss = F.mse_loss(cosine, batch[:, 2].to(device, cosine.dtype))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress and (step + 1) % 50 == 0:
            progress(step + 1, steps)
    encoder.eval()
    return steps


class TunedBackbone:
    """The engine's backbone with a tuned encoder in place of the pretrained one, for the ``linear``
    kind: embeddings come from the tuned encoder (never from the caches, which hold the pretrained
    encoder's), n-gram rows from the engine's backbone (they do not depend on the encoder), and
    k-NN lists are computed afresh (the kept ones are of the pretrained embeddings)."""

    def __init__(self, base, encoder: nn.Module, tokens_of, pad: int) -> None:
        self.base, self.encoder, self.tokens_of, self.pad = base, encoder, tokens_of, pad
        self.config = base.config
        self.encoder_path = base.encoder_path
        self.identity = f"{base.identity}|setfit"

    @property
    def device(self) -> torch.device:
        return self.base.device

    def embed(self, texts: Sequence[str], progress: Progress | None = None,
              digests: np.ndarray | None = None) -> torch.Tensor:
        """The tuned encoder's normalised embeddings (N, D) of texts (``digests`` unused)."""
        return encode_tokens(self.encoder, self.tokens_of(texts), self.pad, progress=progress)

    def grams(self, texts: Sequence[str], bits: int, digests: np.ndarray | None = None) -> lexical.Rows:
        return self.base.grams(texts, bits, digests)

    def rows(self, texts: Sequence[str], bits: int = 0, progress: Progress | None = None,
             digests: np.ndarray | None = None, snapshot: bool = True) -> tuple[torch.Tensor, lexical.Rows | None]:
        """:meth:`embed` and, when bits > 0, :meth:`grams` (no pool snapshots: they hold pretrained rows)."""
        return self.embed(texts, progress, digests), self.grams(texts, bits, digests) if bits else None

    def neighbours(self, x: torch.Tensor, digests: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return propagation.nearest(x, k)


class Kind(KindBase):
    """Encoder tuned on pairs of the labels, then logistic regression on it (``MODEL_MODE=setfit``)."""

    name = "setfit"
    encodes_per_score = True
    propagates = False

    def __init__(self, backbone) -> None:
        super().__init__(backbone)
        self._tokens = full.Kind(backbone)  # the tokenizer and the token-id cache, shared with full mode's
        self._encoder: nn.Module | None = None
        self._pretrained: dict[str, torch.Tensor] = {}

    def _network(self, state: dict[str, torch.Tensor] | None) -> nn.Module:
        """The encoder with ``state`` (None: the pretrained weights), loaded once and reused."""
        if self._encoder is None:
            from transformers import AutoModel

            with torch.inference_mode(False):
                # An explicit dtype: transformers 5 keeps a checkpoint's stored dtype (fp16 tunes to NaN).
                net = AutoModel.from_pretrained(self.backbone.encoder_path, dtype=torch.float32)
                self._pretrained = {k: v.detach().clone() for k, v in net.state_dict().items()}
                self._encoder = net.to(self.backbone.device).eval()
        with torch.inference_mode(False):
            self._encoder.load_state_dict(state if state is not None else self._pretrained)
        return self._encoder

    def _linear(self, encoder: nn.Module) -> linear.Kind:
        pad = self._tokens.tokenizer.pad_token_id or 0
        inner = linear.Kind(TunedBackbone(self.backbone, encoder, self._tokens.tokens, pad))
        inner.propagates = False
        return inner

    def fit(self, texts: Sequence[str], targets: torch.Tensor, classes: list[str], multilabel: bool,
            previous: Model | None, progress: Progress | None, pool: Sequence[str] = (),
            check: Check | None = None) -> Model:
        """Tune the pretrained encoder on pairs of the labels (seeded), then fit ``linear`` on it.
        ``previous``, ``pool`` and ``check`` are unused: every fit tunes afresh, without pseudo-labels."""
        seed = self.backbone.config.seed
        targets = targets.float()
        with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = self._network(None)
            pairs = pairs_of(targets.cpu(), torch.Generator().manual_seed(seed), ITERATIONS, MAX_PAIRS)
            steps = contrastive_tune(encoder, self._tokens.tokens(texts), self._tokens.tokenizer.pad_token_id or 0,
                                     pairs, progress)
        fitted = self._linear(encoder).fit(texts, targets.cpu(), classes, multilabel, None, None)
        tuned = {ENCODER + k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
        stats = {**fitted.stats, **stats_of(targets.cpu(), False, {"tune_steps": steps, "tune_pairs": len(pairs)})}
        return Model(classes=list(classes), multilabel=multilabel, encoder=self.backbone.identity, kind=self.name,
                     state={**fitted.state, **tuned}, n_train=len(texts), arch=fitted.arch, stats=stats)

    def mc_probs(self, model: Model, texts: Sequence[str], seed: int,
                 progress: Progress | None) -> torch.Tensor:
        """(N, T, C): the tuned encoder's embeddings through the logistic regression's saved posterior
        samples (drawn at fit time; the seed is not needed)."""
        encoder = self._network({k[len(ENCODER):]: v for k, v in model.state.items() if k.startswith(ENCODER)})
        head = dataclasses.replace(model, kind=linear.Kind.name,
                                   state={k: v for k, v in model.state.items() if not k.startswith(ENCODER)})
        return self._linear(encoder).mc_probs(head, texts, seed, progress)
