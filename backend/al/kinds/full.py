"""The ``full`` kind: the whole transformer fine-tuned, MC dropout through its dropout layers.

The classic BaaL recipe, for workers with a GPU. At scoring time every ``nn.Dropout``
of the network is swapped for a :class:`ConsistentDropout` whose T masks are drawn once
per seed and shared by every text, so a text's probabilities do not depend on the batch
or shard it is scored in.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from backend.al.encoder import mean_pool
from backend.al.kinds.base import KindBase, Model, Progress, keep_masks, logits_to_probs, stats_of
from backend.al.training import TrainConfig, fit

TRAINING = TrainConfig(lr=5e-5, weight_decay=0.01, batch_size=16, tiny_steps=60, max_epochs=4, patience=1)


class FullClassifier(nn.Module):
    """The whole transformer plus a linear layer, fine-tuned end to end."""

    def __init__(self, encoder_path: str, classes: int, dropout: float = 0.1) -> None:
        from transformers import AutoModel

        super().__init__()
        # An explicit dtype: transformers 5 keeps a checkpoint's stored dtype, and fp16
        # weights fine-tune to NaN.
        self.encoder = AutoModel.from_pretrained(encoder_path, dtype=torch.float32)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(self.encoder.config.hidden_size, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) for a tokenised batch."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.out(self.drop(mean_pool(hidden, attention_mask)))

    @torch.inference_mode()
    def mc_logits(self, batch: dict[str, torch.Tensor], samples: int, seed: int = 0,
                  positions: int = 512) -> torch.Tensor:
        """T stochastic passes with consistent dropout masks, batched as one. -> (B, T, C).

        ``positions`` is the longest sequence any batch scored with the same masks may have
        (the tokenizer's max_length): masks are drawn at that length and sliced.
        """
        b = batch["input_ids"].shape[0]
        repeated = {k: v.repeat_interleave(samples, dim=0) for k, v in batch.items()}
        with consistent_dropout(self, samples, seed, positions):
            logits = self(**repeated)
        return logits.view(b, samples, -1)


class ConsistentDropout(nn.Module):
    """Dropout with T masks drawn once and shared by every item of an item-major (B*T, ...) batch.

    Item b's sample t sees mask t, whatever the batch holds; masks over a sequence axis
    are sliced to the batch's length, so padding does not move them either. ``p`` reads
    0: a module that only passes ``p`` on to a fused kernel (BERT's attention
    probabilities) cannot get consistent masks, so it samples nothing.
    """

    p = 0.0

    def __init__(self, rate: float, samples: int, seed: int, positions: int) -> None:
        super().__init__()
        self.rate, self.samples, self.seed, self.positions = rate, samples, seed, positions
        self._masks: dict[tuple[int, ...], torch.Tensor] = {}

    def extra_repr(self) -> str:
        return f"rate={self.rate}, samples={self.samples}, seed={self.seed}"

    def _mask(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        # Drawn at a fixed size per feature width and sliced, so every sequence length
        # sees the same masks on its first positions.
        full = (self.positions, shape[-1]) if len(shape) == 2 else shape
        if full not in self._masks:
            generator = torch.Generator().manual_seed(self.seed)
            self._masks[full] = keep_masks(self.samples, full, self.rate, generator).to(device)
        mask = self._masks[full]
        if len(shape) == 2 and shape[0] > self.positions:
            raise ValueError(f"sequence of {shape[0]} tokens is longer than the masks' {self.positions}")
        return mask[:, :shape[0]] if len(shape) == 2 else mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B*T, ...) item-major -> same shape, masked per sample."""
        rest = tuple(x.shape[1:])
        per_item = x.view(-1, self.samples, *rest)
        return (per_item * self._mask(rest, x.device).to(x.dtype)).view_as(x)


@contextmanager
def consistent_dropout(net: nn.Module, samples: int, seed: int, positions: int) -> Iterator[None]:
    """Swap every ``nn.Dropout`` of net for a :class:`ConsistentDropout` (each with its own seed).

    ``positions``: the longest sequence the masks must cover (the tokenizer's max_length).
    """
    swapped = []
    for index, (name, module) in enumerate((n, m) for n, m in net.named_modules() if isinstance(m, nn.Dropout)):
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, attr, ConsistentDropout(module.p, samples, seed * 1_000_003 + index, positions))
        swapped.append((parent, attr, module))
    was_training = net.training
    net.train()  # dropout on; there are no batch-norm layers in a BERT-style encoder
    try:
        yield
    finally:
        net.train(was_training)
        for parent, attr, module in swapped:
            setattr(parent, attr, module)


def tokenizer_for(encoder_path: str):
    """The tokenizer that goes with a full-mode encoder."""
    from transformers import AutoTokenizer

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return AutoTokenizer.from_pretrained(encoder_path)


class Kind(KindBase):
    """The whole encoder fine-tuned (``MODEL_MODE=full``): slower, better with enough labels."""

    name = "full"
    _tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = tokenizer_for(self.backbone.encoder_path)
        return self._tokenizer

    def _tokens(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(list(texts), padding=True, truncation=True,
                               max_length=self.backbone.config.max_length, return_tensors="pt")
        return batch.to(self.backbone.device)

    def _network(self, classes: int, state: dict[str, torch.Tensor] | None) -> FullClassifier:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.backbone.config.seed)
            net = FullClassifier(self.backbone.encoder_path, classes)
        if state is not None:
            net.load_state_dict(state)
        return net.to(self.backbone.device)

    def fit(self, texts: Sequence[str], targets: torch.Tensor, classes: list[str], multilabel: bool,
            previous: Model | None, progress: Progress | None) -> Model:
        """Fine-tune the encoder and a linear layer (seeded), or continue from ``previous``."""
        net = self._network(len(classes), previous.state if previous is not None else None)
        texts = list(texts)
        fit_stats = fit(net, lambda m, idx: m(**self._tokens([texts[i] for i in idx.tolist()])), len(texts),
                        targets.to(self.backbone.device), multilabel,
                        dataclasses.replace(TRAINING, seed=self.backbone.config.seed), progress)
        return Model(classes=list(classes), multilabel=multilabel, encoder=self.backbone.identity, kind=self.name,
                     state={k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
                     n_train=len(texts), stats=stats_of(targets, previous is not None, fit_stats))

    def mc_probs(self, model: Model, texts: Sequence[str], seed: int,
                 progress: Progress | None) -> torch.Tensor:
        """(N, T, C), T consistent dropout masks per layer drawn from ``seed``."""
        cfg = self.backbone.config
        net = self._network(len(model.classes), model.state)
        out = []
        step = max(1, cfg.batch_size // 4)
        for start in range(0, len(texts), step):
            logits = net.mc_logits(self._tokens(texts[start:start + step]), cfg.mc_samples, seed, cfg.max_length)
            out.append(logits_to_probs(logits, model.multilabel).cpu())
            if progress:
                progress(min(start + step, len(texts)), len(texts))
        return torch.cat(out) if out else torch.zeros(0, cfg.mc_samples, len(model.classes))
