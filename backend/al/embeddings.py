"""On-disk embedding cache keyed by (encoder identity, text hash), read through memory maps.

Layout: ``<root>/<sha1(identity)[:16]>/segments/<rows>-<uuid>.seg``. A segment is immutable:
two ``.npy`` arrays back to back in one file, the SHA-1 digests of its texts sorted (``S20``)
and their vectors ``(rows, D)`` float32 in the same order. A lookup memory-maps every segment
(once per process) and binary-searches the digests, so re-reading a pool costs a hash per text
and a copy of its rows, whatever else the cache holds, and a million-row cache is a file the
page cache shares between processes, not a Python dict.

Writers never modify a file: each :meth:`EmbeddingCache.store` publishes a new segment with an
atomic rename, so several processes (web, workers on a shared volume) can fill the cache at
once and readers never see a half-written one. When there are more than ``MAX_SEGMENTS``, the
writer that holds the folder's ``flock`` merges the smallest into one (published first, then the
merged ones are moved to ``retired/``, so a key is always in some visible segment, and deleted
an hour later: a reader on another machine of a shared NFS volume may still map them).

Caches written before segments (256 ``<xx>.pt`` shards of ``{"keys", "vectors"}`` in the same
folder) are migrated on the first lookup that misses: every shard is copied into segments and
moved to ``legacy/``, so each old entry is read once.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Sequence

import numpy as np
import torch

KEY = np.dtype("S20")  # a raw SHA-1 digest
_PREFIX = np.dtype([("head", ">u8"), ("tail", "V12")])  # a digest as its first 8 bytes and the rest
MAX_SEGMENTS = 8  # more than this and a writer merges the smallest, leaving KEEP_SEGMENTS
KEEP_SEGMENTS = 4
_COPY_ROWS = 65536  # rows per chunk when a merge copies vectors (bounded memory)
# A temp file older than this was left by a crashed writer; a merged segment retired this long
# ago is mapped by no reader (each lookup re-lists the folder and lets go of retired ones).
_STALE_S = 3600
log = logging.getLogger(__name__)


def text_key(text: str) -> str:
    """The cache key of a text: SHA-1 of its UTF-8 bytes, hex."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def text_digests(texts: Sequence[str]) -> np.ndarray:
    """The cache keys of texts as raw SHA-1 digests, (N,) ``S20`` (``text_key`` in bytes)."""
    return np.frombuffer(b"".join(hashlib.sha1(t.encode("utf-8")).digest() for t in texts), dtype=KEY)


def atomic_write(path: Path, obj: object, save: Callable[[object, BinaryIO], object] = torch.save) -> None:
    """Write obj to path atomically with ``save(obj, file)`` (default torch.save): temp file in the
    same folder, fsync, rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Segment:
    """One segment file, memory-mapped: sorted digests (n,) and their vectors (n, D)."""

    path: Path
    keys: np.ndarray
    vectors: np.ndarray

    @functools.cached_property
    def prefixes(self) -> np.ndarray:
        """The keys' first 8 bytes as big-endian integers (n,) uint64: sorted as the keys are."""
        return prefixes(self.keys)

    def find(self, digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(which of digests are here (N,) bool, their rows in this segment (hits,)).

        Searched by the digests' 8-byte prefixes (3x faster than comparing 20-byte strings), then
        checked in full; a digest whose prefix another key shares is searched again in full.
        """
        return find_sorted(self.keys, self.prefixes, digests)


def find_sorted(keys: np.ndarray, key_prefixes: np.ndarray, digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which of digests (N,) are among sorted ``keys`` (M,) ``S20`` whose :func:`prefixes` are
    ``key_prefixes``: (found (N,) bool, their positions in keys (hits,)); see :meth:`Segment.find`."""
    last = len(keys) - 1
    wanted = prefixes(digests)
    pos = np.minimum(np.searchsorted(key_prefixes, wanted), last)
    hit = keys[pos] == digests
    clash = ~hit & (key_prefixes[pos] == wanted)
    if clash.any():
        pos[clash] = np.minimum(np.searchsorted(keys, digests[clash]), last)
        hit[clash] = keys[pos[clash]] == digests[clash]
    return hit, pos[hit]


def prefixes(digests: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each digest (N,) ``S20`` as a big-endian integer (N,) uint64, whose
    order is the digests' byte order."""
    head = np.frombuffer(np.ascontiguousarray(digests, dtype=KEY).tobytes(), dtype=_PREFIX)
    return head["head"].astype(np.uint64)


def read_segment(path: Path) -> Segment:
    """Memory-map a segment file; ValueError if it is not one."""
    with open(path, "rb") as f:
        keys_at, keys_shape, keys_dtype = npy_header(f)
        f.seek(keys_at + int(np.prod(keys_shape)) * keys_dtype.itemsize)
        vectors_at, vectors_shape, vectors_dtype = npy_header(f)
    if (keys_dtype != KEY or vectors_dtype != np.float32 or len(keys_shape) != 1
            or len(vectors_shape) != 2 or keys_shape[0] != vectors_shape[0] or keys_shape[0] == 0):
        raise ValueError(f"{path} is not an embedding segment")
    size = vectors_at + int(np.prod(vectors_shape)) * 4
    if path.stat().st_size < size:
        raise ValueError(f"{path} is truncated: {path.stat().st_size} bytes, need {size}")
    keys = np.memmap(path, KEY, "r", keys_at, keys_shape)
    return Segment(path, keys, np.memmap(path, np.float32, "r", vectors_at, vectors_shape))


def npy_header(f) -> tuple[int, tuple[int, ...], np.dtype]:
    if np.lib.format.read_magic(f) != (1, 0):
        raise ValueError(f"{f.name}: not an npy 1.0 header")
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    if fortran:
        raise ValueError(f"{f.name}: Fortran order")
    return f.tell(), shape, dtype


def write_segment(folder: Path, keys: np.ndarray, vectors: Iterable[np.ndarray], rows: int, dim: int) -> Path:
    """Publish a segment atomically: keys (rows,) sorted ``S20``, then vectors given in chunks."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.lib.format.write_array(f, np.ascontiguousarray(keys, dtype=KEY), version=(1, 0))
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                    "shape": (rows, dim)})
            written = 0
            for chunk in vectors:
                chunk = np.ascontiguousarray(chunk, dtype=np.float32)
                f.write(chunk.tobytes())
                written += chunk.shape[0]
            if written != rows:
                raise ValueError(f"segment of {rows} rows got {written} vectors")
            f.flush()
            os.fsync(f.fileno())
        path = folder / f"{rows:010d}-{uuid.uuid4().hex}.seg"
        os.replace(tmp, path)
        return path
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def newest_first(folder: Path, pattern: str) -> list[Path]:
    """The files of folder that match pattern, most recently modified (or touched) first; one removed
    meanwhile sorts last."""
    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:
            return 0.0
    return sorted(folder.glob(pattern), key=mtime, reverse=True)


def touch(path: Path) -> None:
    """Mark a cache file recently used; one another worker's clean-up removed meanwhile is left gone."""
    try:
        os.utime(path)
    except FileNotFoundError:
        pass


def identity_dir(root: Path | str, identity: str, marker: str) -> Path:
    """The folder of one cache identity under root (created), named by the identity's hash, with a
    ``marker`` file that says in words which identity it holds."""
    folder = Path(root) / hashlib.sha1(identity.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / marker).exists():
        (folder / marker).write_text(identity + "\n")
    return folder


class EmbeddingCache:
    """Embeddings of one encoder, persisted under root in memory-mapped segments.

    Any fixed-width float32 rows keyed by text digest fit the format: the ``linear`` kind keeps its
    texts' packed n-gram rows in caches of their own beside the embeddings (``marker`` names the
    file that says in words what a folder holds; :meth:`backend.al.learner.ActiveLearner.grams`).
    """

    def __init__(self, root: Path, identity: str, marker: str = "ENCODER") -> None:
        self.identity = identity
        self.dir = identity_dir(root, identity, marker)
        self.segments_dir = self.dir / "segments"
        self.segments_dir.mkdir(exist_ok=True)
        self._open: dict[str, Segment] = {}
        self._unreadable: set[str] = set()  # warned about once
        self._legacy = any(self.dir.glob("??.pt"))

    def __repr__(self) -> str:
        return f"EmbeddingCache(dir={str(self.dir)!r}, segments={len(self._open)})"

    # -- reading ----------------------------------------------------------------------------

    def lookup(self, digests: np.ndarray) -> tuple[np.ndarray, torch.Tensor | None]:
        """(found (N,) bool, vectors (N, D) float32 with zero rows where not found) for digests.

        The vectors are None when nothing was found (the dimension is then unknown).
        """
        digests = np.asarray(digests, dtype=KEY)
        found, out = self._lookup_segments(digests)
        if self._legacy and not found.all():
            self._migrate_legacy()
            found, out = self._lookup_segments(digests)
        return found, None if out is None else torch.from_numpy(out)

    def contains(self, digests: np.ndarray) -> np.ndarray:
        """Which of digests (N,) the cache holds (N,) bool, without copying their vectors.

        A segment retired by a merge between the listing and the opening reads as not held: the
        answer may understate what is cached, never overstate it.
        """
        digests = np.asarray(digests, dtype=KEY)
        if self._legacy:
            return self.lookup(digests)[0]
        found = np.zeros(len(digests), dtype=bool)
        for segment in self._segments()[0]:
            todo = np.flatnonzero(~found)
            if todo.size == 0:
                break
            hit, _ = segment.find(digests[todo])
            found[todo[hit]] = True
        return found

    def _lookup_segments(self, digests: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        for _ in range(3):  # a merge may retire segments between our listing and our opening
            segments, complete = self._segments()
            found, out = np.zeros(len(digests), dtype=bool), None
            for segment in segments:
                if out is None:  # nothing found yet: no index arrays, and a full hit is one gather
                    hit, rows = segment.find(digests)
                    if rows.size == len(digests):
                        return hit, segment.vectors[rows]
                    todo = np.arange(len(digests))
                else:
                    todo = np.flatnonzero(~found)
                    if todo.size == 0:
                        break
                    hit, rows = segment.find(digests[todo])
                if rows.size:
                    if out is None:
                        out = np.empty((len(digests), segment.vectors.shape[1]), dtype=np.float32)
                    out[todo[hit]] = segment.vectors[rows]
                    found[todo[hit]] = True
            if complete or found.all():
                break
        if out is not None:
            out[~found] = 0
        return found, out

    def _segments(self) -> tuple[list[Segment], bool]:
        """The open segments, largest first, and whether all listed ones could be opened."""
        names = {p.name for p in self.segments_dir.glob("*.seg")}
        for gone in self._open.keys() - names:
            del self._open[gone]
        complete = True
        for name in names - self._open.keys() - self._unreadable:
            try:
                self._open[name] = read_segment(self.segments_dir / name)
            except FileNotFoundError:
                complete = False
            except ValueError as e:  # never published half-written; skip rather than fail a job
                log.warning("embedding cache: skipping unreadable segment: %s", e)
                self._unreadable.add(name)
        return sorted(self._open.values(), key=lambda s: -len(s.keys)), complete

    def _migrate_legacy(self) -> None:
        """Copy every pre-segment ``<xx>.pt`` shard into segments, then move the shards to ``legacy/``.

        Under a lock, so a second process waits and then finds nothing left to copy. A process
        of an older version that writes a shard afterwards only causes another migration.
        """
        with open(self.dir / "legacy.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            shards = sorted(self.dir.glob("??.pt"))
            keys: list[str] = []
            vectors: list[torch.Tensor] = []
            for shard in shards:
                data = torch.load(shard, weights_only=True)
                keys.extend(data["keys"])
                vectors.append(data["vectors"].to(torch.float32))
                if len(keys) >= _COPY_ROWS or shard == shards[-1]:
                    self.store(np.array([bytes.fromhex(k) for k in keys], dtype=KEY), torch.cat(vectors))
                    keys, vectors = [], []
            moved = self.dir / "legacy"
            moved.mkdir(exist_ok=True)
            for shard in shards:
                os.replace(shard, moved / shard.name)
        self._legacy = False
        if shards:
            log.info("embedding cache %s: moved %d old-format shards into segments", self.dir, len(shards))

    def get(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """The cached vectors among hex keys, as {key: (D,)}; missing keys are left out."""
        found, vectors = self.lookup(np.array([bytes.fromhex(k) for k in keys], dtype=KEY))
        return {k: vectors[i] for i, k in enumerate(keys) if found[i]}

    # -- writing ----------------------------------------------------------------------------

    def store(self, digests: np.ndarray, vectors: torch.Tensor | np.ndarray) -> None:
        """Persist vectors (N, D) of digests (N,) as a new segment (duplicates kept once)."""
        vectors = vectors.detach().to("cpu", torch.float32).numpy() if isinstance(vectors, torch.Tensor) \
            else np.asarray(vectors, dtype=np.float32)
        digests = np.asarray(digests, dtype=KEY)
        if vectors.ndim != 2 or vectors.shape[0] != len(digests):
            raise ValueError(f"need one vector (D,) per key: {len(digests)} keys, vectors {vectors.shape}")
        if len(digests) == 0:
            return
        keys, first = np.unique(digests, return_index=True)
        write_segment(self.segments_dir, keys, [vectors[first]], len(keys), vectors.shape[1])
        self._compact_if_due()

    def put(self, items: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Store (hex key, vector (D,)) pairs."""
        items = list(items)
        if items:
            self.store(np.array([bytes.fromhex(k) for k, _ in items], dtype=KEY),
                       torch.stack([v.detach().to("cpu", torch.float32) for _, v in items]))

    def _compact_if_due(self) -> None:
        if len(list(self.segments_dir.glob("*.seg"))) <= MAX_SEGMENTS:
            return
        with open(self.segments_dir / "merge.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another process is merging; its merge covers ours
            self._remove_stale()
            paths = sorted(self.segments_dir.glob("*.seg"), key=lambda p: p.name)  # by rows: names start so
            if len(paths) > MAX_SEGMENTS:
                self.merge(paths[:len(paths) - KEEP_SEGMENTS + 1])

    def merge(self, paths: Sequence[Path]) -> Path:
        """Merge segments into one (published before they are removed); returns its path."""
        segments = [read_segment(p) for p in paths]
        keys, first = np.unique(np.concatenate([s.keys for s in segments]), return_index=True)
        starts = np.cumsum([0] + [len(s.keys) for s in segments])
        which = np.searchsorted(starts, first, side="right") - 1
        row = first - starts[which]

        def chunks():
            for at in range(0, len(keys), _COPY_ROWS):
                part = slice(at, at + _COPY_ROWS)
                chunk = np.empty((len(which[part]), segments[0].vectors.shape[1]), dtype=np.float32)
                for s, segment in enumerate(segments):
                    mine = which[part] == s
                    chunk[mine] = segment.vectors[row[part][mine]]
                yield chunk

        merged = write_segment(self.segments_dir, keys, chunks(), len(keys), segments[0].vectors.shape[1])
        retired = self.segments_dir / "retired"
        retired.mkdir(exist_ok=True)
        for p in paths:  # not unlinked yet: a reader on another NFS client may still map them
            os.replace(p, retired / p.name)
            os.utime(retired / p.name)
        return merged

    def _remove_stale(self) -> None:
        """Delete retired segments and crashed writers' temp files older than ``_STALE_S``."""
        for path in [*self.segments_dir.glob(".*.tmp"), *self.segments_dir.glob("retired/*.seg")]:
            try:
                if time.time() - path.stat().st_mtime > _STALE_S:
                    path.unlink()
            except FileNotFoundError:
                pass
