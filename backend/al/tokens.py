"""Token ids, tokenized once per text and cached, and length-sorted batches filled to a token budget.

Shared by the encoder's plain pass (``TextEncoder.encode``) and the ``full`` kind's training
and MC scoring. A text's ids are keyed like the embedding cache: the SHA-1 of the text
(``embeddings.text_key``) under a folder named after :func:`tokenizer_identity`, so changing
the tokenizer's files or ``max_length`` starts a new folder and never reads stale ids.

Layout: ``<root>/<sha1(identity)[:16]>/<x>.pt``, 16 shards by the key's first hex digit, each
``{"keys": [...], "ids": int32 (total,), "offsets": int64 (n + 1,)}``; written like the
embedding cache (merge under ``flock``, atomic rename), read into an in-process memory layer.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from backend.al.embeddings import atomic_write, identity_dir, text_key

CUDA_TOKEN_BUDGET = 262_144
"""Tokens (rows x padded length, T copies included) per forward pass on a GPU: large enough
to fill an H100 with MiniLM, a few GB of activations in half precision."""
CPU_TOKEN_BUDGET = 16_384
"""The same on a CPU, where larger batches only cost memory (about the old 16 texts x T = 20)."""
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                    "sentencepiece.bpe.model", "spiece.model", "merges.txt", "vocab.json")


def tokenizer_identity(path: str, max_length: int) -> str:
    """A string that changes whenever the ids a tokenizer gives (truncated at max_length) could change."""
    digest = hashlib.sha1()
    folder = Path(path)
    files = [folder / name for name in _TOKENIZER_FILES if (folder / name).is_file()]
    for file in files:
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    if not files:
        digest.update(path.encode())
    return f"tokens|len{max_length}|{digest.hexdigest()[:16]}"


def token_budget(device: torch.device) -> int:
    """Tokens per forward pass for a device (see CUDA_TOKEN_BUDGET and CPU_TOKEN_BUDGET)."""
    return CUDA_TOKEN_BUDGET if torch.device(device).type == "cuda" else CPU_TOKEN_BUDGET


@dataclass
class Tokens:
    """Ids of N texts, unpadded: text i is ``ids[offsets[i]:offsets[i + 1]]``."""

    ids: torch.Tensor  # int32 (total,)
    offsets: torch.Tensor  # int64 (N + 1,)
    lengths: list[int]

    def __len__(self) -> int:
        return len(self.lengths)

    def to(self, device: torch.device) -> "Tokens":
        """The same ids on device (one transfer, so batches are cut there without host round trips)."""
        return Tokens(self.ids.to(device), self.offsets.to(device), self.lengths)

    def batch(self, idx: torch.Tensor | Sequence[int], pad_id: int,
              multiple: int = 1, cap: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids (B, L) int64, attention_mask (B, L)) for rows idx, padded to their longest,
        rounded up to a ``multiple`` of tokens (at most ``cap``, never below the longest): few
        distinct shapes, for CUDA graphs captured per shape.

        Gathered on the tensors' own device; the padded length comes from host-side lengths.
        """
        rows = idx.tolist() if isinstance(idx, torch.Tensor) else list(idx)
        longest = max((self.lengths[i] for i in rows), default=0)
        if multiple > 1:
            longest = max(longest, min(-(-longest // multiple) * multiple, cap if cap is not None else 1 << 30))
        index = torch.as_tensor(rows, dtype=torch.int64).to(self.offsets.device, non_blocking=True)
        starts, ends = self.offsets[index], self.offsets[index + 1]
        positions = starts[:, None] + torch.arange(longest, device=self.offsets.device)
        mask = positions < ends[:, None]
        gathered = self.ids[positions.clamp(max=max(self.ids.numel() - 1, 0))].long()
        return torch.where(mask, gathered, torch.full_like(gathered, pad_id)), mask.long()


def from_lists(ids: Sequence[Sequence[int]] | Sequence[torch.Tensor]) -> Tokens:
    """Tokens from one id list (or int32 tensor) per text."""
    parts = [torch.as_tensor(x, dtype=torch.int32) for x in ids]
    lengths = [int(p.numel()) for p in parts]
    offsets = torch.zeros(len(parts) + 1, dtype=torch.int64)
    if parts:
        offsets[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    flat = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int32)
    return Tokens(flat, offsets, lengths)


def budget_batches(lengths: Sequence[int], budget: int, copies: int = 1) -> list[torch.Tensor]:
    """Row indices of batches sorted by length (longest first), each filling ``budget`` tokens.

    A batch's rows x copies x its longest length stays within budget (at least one row per
    batch), so T stacked copies of a batch fit the same budget as a plain pass.
    """
    if budget < 1 or copies < 1:
        raise ValueError(f"need budget >= 1 and copies >= 1, got {budget}, {copies}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, start = [], 0
    while start < len(order):
        rows = max(1, budget // (copies * max(1, lengths[order[start]])))
        batches.append(torch.tensor(order[start:start + rows], dtype=torch.int64))
        start += rows
    return batches


class TokenCache:
    """Token ids of one tokenizer identity: an in-process memory layer over optional on-disk shards."""

    def __init__(self, root: Path | None, identity: str) -> None:
        self.identity = identity
        self.dir = identity_dir(root, identity, "TOKENIZER") if root is not None else None
        self._memory: dict[str, torch.Tensor] = {}
        self._loaded: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"TokenCache(dir={str(self.dir) if self.dir else None!r}, in_memory={len(self._memory)})"

    def get(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """The cached ids (int32 tensors) among keys; missing keys are left out."""
        if self.dir is not None:
            for prefix in {k[0] for k in keys if k not in self._memory}:
                self._read_shard(prefix)
        return {k: self._memory[k] for k in keys if k in self._memory}

    def put(self, items: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Store (key, int32 ids) pairs in memory and, with a root, on disk."""
        self._memory.update(items)
        if self.dir is None:
            return
        by_shard: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
        for key, ids in items:
            by_shard[key[0]][key] = ids
        for prefix, new in by_shard.items():
            self._merge_shard(prefix, new)

    def _path(self, prefix: str) -> Path:
        assert self.dir is not None
        return self.dir / f"{prefix}.pt"

    def _read_shard(self, prefix: str) -> None:
        path = self._path(prefix)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return
        if self._loaded.get(prefix) != mtime:
            self._memory.update(_unpack(torch.load(path, weights_only=True)))
            self._loaded[prefix] = mtime

    def _merge_shard(self, prefix: str, new: dict[str, torch.Tensor]) -> None:
        path = self._path(prefix)
        with open(self._path(prefix).with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = _unpack(torch.load(path, weights_only=True)) if path.exists() else {}
            merged.update(new)
            packed = from_lists(list(merged.values()))
            atomic_write(path, {"keys": list(merged), "ids": packed.ids, "offsets": packed.offsets})
        self._memory.update(merged)
        self._loaded[prefix] = path.stat().st_mtime


def _unpack(data: dict) -> dict[str, torch.Tensor]:
    ids, offsets = data["ids"], data["offsets"].tolist()
    return {key: ids[offsets[i]:offsets[i + 1]] for i, key in enumerate(data["keys"])}


TEXTS_PER_THREAD = 1_000
"""At least this many texts per tokenizing thread: below it a thread's start costs more than it saves."""


def tokenizing_threads(texts: int) -> int:
    """Threads to tokenize ``texts`` on: one per usable core, at least TEXTS_PER_THREAD texts each, at most 32."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, texts // TEXTS_PER_THREAD, 32))


def encode_ids(tokenizer, texts: list[str], max_length: int, threads: int | None = None) -> list[list[int]]:
    """Ids of texts (special tokens added, truncated at max_length, unpadded), in order.

    A fast tokenizer runs on a private copy of its Rust tokenizer, set up once per max_length,
    in chunks on short-lived threads (it releases the GIL while it encodes). The Rust thread
    pool stays off (``TOKENIZERS_PARALLELISM=false``), so a forked RQ work-horse never inherits
    a used one; threads give the same speed (AG News 10k on 2 cores: 0.64 s through the Python
    wrapper, 0.35 s on 2 threads: scripts/bench_tokenize.py). A tokenizer without a Rust backend
    goes through its wrapper.
    ``threads``: None for :func:`tokenizing_threads`.
    """
    backend = _backend(tokenizer, max_length)
    if backend is None:
        return tokenizer(texts, truncation=True, max_length=max_length, padding=False,
                         return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    threads = tokenizing_threads(len(texts)) if threads is None else max(1, min(threads, len(texts)))
    if threads == 1:
        return [e.ids for e in backend.encode_batch(texts)]
    size = -(-len(texts) // threads)
    chunks = [texts[i:i + size] for i in range(0, len(texts), size)]
    with ThreadPoolExecutor(threads, thread_name_prefix="tokenize") as pool:
        parts = list(pool.map(backend.encode_batch, chunks))
    return [e.ids for part in parts for e in part]


def _backend(tokenizer, max_length: int):
    """A copy of a fast tokenizer's Rust tokenizer truncating at max_length on the tokenizer's
    truncation side with no padding (kept on the tokenizer, one per length and side), or None for a
    tokenizer without one. A copy: the wrapper resets its own backend's truncation and padding on
    every call."""
    source = getattr(tokenizer, "backend_tokenizer", None)
    if source is None or not hasattr(source, "encode_batch"):
        return None
    key = (max_length, getattr(tokenizer, "truncation_side", "right"))
    copies = tokenizer.__dict__.setdefault("_al_backends", {})
    if key not in copies:
        backend = copy.deepcopy(source)
        backend.no_padding()
        backend.enable_truncation(max_length, direction=key[1])
        copies[key] = backend
    return copies[key]


def tokenize(tokenizer, texts: Sequence[str], max_length: int, cache: TokenCache | None = None) -> Tokens:
    """Ids of texts (special tokens added, truncated at max_length, unpadded), each text tokenized once.

    With a cache, known texts are read from it and new ones tokenized (one batched call) and stored.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    keys = [text_key(t) for t in texts] if cache is not None else []
    found = cache.get(keys) if cache is not None else {}
    todo: dict[str, str] = {}
    if cache is None:
        todo = {str(i): t for i, t in enumerate(texts)}
    else:
        for key, text in zip(keys, texts, strict=True):
            if key not in found:
                todo.setdefault(key, text)
    if todo:
        encoded = encode_ids(tokenizer, list(todo.values()), max_length)
        flat = torch.tensor([i for ids in encoded for i in ids], dtype=torch.int32)
        fresh = list(zip(todo, flat.split([len(ids) for ids in encoded]), strict=True))
        if cache is not None:
            cache.put(fresh)
        found.update(fresh)
    return from_lists([found[k] for k in (keys if cache is not None else todo)])
