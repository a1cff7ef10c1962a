"""On-disk embedding cache keyed by (encoder identity, text hash).

Layout: ``<root>/<sha1(identity)[:16]>/<xx>.pt`` with 256 shards chosen by the first
two hex digits of the text's SHA-1. Each shard holds ``{"keys": [...], "vectors":
Tensor (n, D)}``. Writers merge under an exclusive ``flock`` on the shard's lock file
and publish with an atomic rename, so several processes (web, workers on a shared
volume) can fill the cache at once and readers never see a half-written shard.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import torch


def text_key(text: str) -> str:
    """The cache key of a text: SHA-1 of its UTF-8 bytes, hex."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def atomic_write(path: Path, obj: object) -> None:
    """torch.save obj to path atomically: temp file in the same folder, fsync, rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class EmbeddingCache:
    """Embeddings of one encoder, persisted under root, with an in-process memory layer."""

    def __init__(self, root: Path, identity: str) -> None:
        self.identity = identity
        self.dir = Path(root) / hashlib.sha1(identity.encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        marker = self.dir / "ENCODER"
        if not marker.exists():
            marker.write_text(identity + "\n")
        self._memory: dict[str, torch.Tensor] = {}
        self._loaded: dict[str, float] = {}  # shard -> mtime when read

    def __repr__(self) -> str:
        return f"EmbeddingCache(dir={str(self.dir)!r}, in_memory={len(self._memory)})"

    def _shard(self, prefix: str) -> Path:
        return self.dir / f"{prefix}.pt"

    def _read_shard(self, prefix: str) -> None:
        path = self._shard(prefix)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return
        if self._loaded.get(prefix) == mtime:
            return
        data = torch.load(path, weights_only=True)
        for key, vec in zip(data["keys"], data["vectors"], strict=True):
            self._memory[key] = vec
        self._loaded[prefix] = mtime

    def get(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """The cached vectors among keys, as {key: (D,)}; missing keys are left out."""
        missing = {k[:2] for k in keys if k not in self._memory}
        for prefix in missing:
            self._read_shard(prefix)
        return {k: self._memory[k] for k in keys if k in self._memory}

    def put(self, items: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Store (key, vector (D,)) pairs, merging with what other processes wrote."""
        by_shard: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
        for key, vec in items:
            by_shard[key[:2]][key] = vec.detach().to("cpu", torch.float32)
        for prefix, new in by_shard.items():
            self._merge_shard(prefix, new)

    def _merge_shard(self, prefix: str, new: dict[str, torch.Tensor]) -> None:
        path = self._shard(prefix)
        with open(self.dir / f"{prefix}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged: dict[str, torch.Tensor] = {}
            if path.exists():
                data = torch.load(path, weights_only=True)
                merged.update(zip(data["keys"], data["vectors"], strict=True))
            merged.update(new)
            keys = list(merged)
            atomic_write(path, {"keys": keys, "vectors": torch.stack([merged[k] for k in keys])})
        self._memory.update(merged)
        self._loaded[prefix] = path.stat().st_mtime
