"""Snapshots of whole pools' feature rows, memory-mapped between jobs.

A warm re-score reads each pool text's embedding and n-gram rows from the caches
(:mod:`backend.al.embeddings`): a binary search in every segment of the embedding cache and of
each width of the n-gram cache, a copy of every row, and the n-gram rows unpacked from their fixed
widths (:func:`backend.al.lexical.merge`): about 50 ms for 10k texts on one CPU thread, most of a
warm re-score. Yet a project asks for nearly the same pool every time: a retrain reads its pool
sample, the re-score that follows reads the pool, and annotating only takes texts out of it.

So once a pool's rows are assembled they are also written, in the pool's order, to one file: the
digests (and the same sorted, with where each sits), the embeddings (N, D) and the n-gram rows in
compressed sparse row form. A later request whose texts are all in one of the few most recently
used snapshots memory-maps it: the same texts in the same order are the file itself (no copy), any
other subset is one binary search and a gather. A snapshot holds a copy of what the caches hold, so
the rows are the same to the bit. Snapshots live beside the embedding cache, one folder per encoder
identity and n-gram version, are written atomically, and the least recently used beyond
:data:`KEEP` are removed. Small requests (a labelled set, a /predict batch) are below
:data:`MIN_ROWS` and are neither read from nor written to snapshots.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import torch

from backend.al import lexical
from backend.al.embeddings import (
    KEY,
    atomic_write,
    find_sorted,
    identity_dir,
    newest_first,
    npy_header,
    prefixes,
    touch,
)

KEEP = 8
"""Snapshots kept per encoder (10k AG News texts with n-grams: about 23 MB each), least recently used out."""
_PROBE = 32  # digests of a request looked up in each snapshot before the full search (half must be there)
MIN_ROWS = 1000
"""Requests of fewer texts skip snapshots: assembling them is cheap, and they would push pools out."""
MAX_ROWS = 200_000
"""Requests of more texts are not written (about 300 MB at 384 dimensions); shards are smaller (``SHARD_SIZE``)."""
REWRITE = 0.9
"""A pool of which the best snapshot holds less than this share is written as a new snapshot (the rest
are read from the caches either way): a big pool's propagation sample, or a shard, that drifts by a few
texts a round is not rewritten every round."""
_RUN = 16  # rows per run of consecutive rows, at the least, for a subset to be copied run by run
_ARRAYS = ("keys", "sorted_keys", "sorted_rows", "dense", "indptr", "indices", "values")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """One snapshot file, memory-mapped (copy-on-write, so its arrays are writable without touching
    the file): the digests (N,) ``S20`` in pool order, the same sorted and the pool row of each sorted
    one (N,), embeddings (N, D) float32, and n-gram rows of ``bits`` bits (none when bits is 0)."""

    path: Path
    bits: int
    keys: np.ndarray
    sorted_keys: np.ndarray
    sorted_rows: np.ndarray
    dense: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    def take(self, digests: np.ndarray, bits: int) -> Found | None:
        """The rows here of the texts with ``digests`` (N,): which are here, their embeddings and, when
        bits > 0, their n-gram rows; None when the n-grams here are of other bits."""
        if bits and bits != self.bits:
            return None
        grams = lexical.Rows(*(torch.from_numpy(a) for a in (self.indptr, self.indices, self.values)),
                             1 << self.bits) if bits else None
        if len(digests) == len(self.keys) and digests.tobytes() == self.keys.tobytes():
            # the same pool in the same order: the file itself
            return Found(np.ones(len(digests), dtype=bool), torch.from_numpy(self.dense), grams)
        found, at = find_sorted(self.sorted_keys, prefixes(self.sorted_keys), digests)
        rows = self.sorted_rows[at]
        starts = np.concatenate([[0], np.flatnonzero(np.diff(rows) != 1) + 1]) if rows.size else rows
        if len(starts) * _RUN > len(rows):  # scattered rows: a gather
            return Found(found, torch.from_numpy(self.dense[rows]),
                         grams.take(torch.from_numpy(rows)) if grams else None)
        # a pool less a few texts, in its order: a few long runs of rows, copied as slices
        first = rows[starts]
        stop = first + np.diff(np.concatenate([starts, [len(rows)]]))
        dense = torch.from_numpy(_slices(self.dense, first, stop, self.dense.shape[1:]))
        if not bits:
            return Found(found, dense, None)
        lo, hi = self.indptr[first], self.indptr[stop]
        indptr = np.concatenate([[0], np.cumsum(self.indptr[rows + 1] - self.indptr[rows])])
        return Found(found, dense, lexical.Rows(*(torch.from_numpy(a) for a in (
            indptr, _slices(self.indices, lo, hi), _slices(self.values, lo, hi))), 1 << self.bits))


@dataclass(frozen=True)
class Found:
    """What a snapshot holds of a request of N texts: which (N,) bool, and the rows of those, in order:
    embeddings (hits, D) and n-gram rows (hits texts) or None."""

    found: np.ndarray
    dense: torch.Tensor
    grams: lexical.Rows | None


class Snapshots:
    """The pool snapshots of one encoder identity and n-gram version under ``root``."""

    def __init__(self, root: Path, identity: str) -> None:
        self.root, self.identity = Path(root), identity

    def __repr__(self) -> str:
        return f"Snapshots(root={str(self.root)!r})"

    @property
    def dir(self) -> Path:
        """This identity's folder (created when missing, also after a clean-up)."""
        return identity_dir(self.root, f"pool snapshots v1 of {self.identity}", marker="SNAPSHOTS")

    def get(self, digests: np.ndarray, bits: int) -> Found | None:
        """What the most recently used snapshot that holds most of the texts with ``digests`` has of
        them (:meth:`Snapshot.take`); None when no snapshot holds most (or the request is smaller than
        :data:`MIN_ROWS`). A few of the digests are looked up in each snapshot first, so only a likely
        one is searched in full."""
        if len(digests) < MIN_ROWS:
            return None
        probe = digests[::max(1, len(digests) // _PROBE)]
        for snapshot in self._readable():
            at = np.minimum(np.searchsorted(snapshot.sorted_keys, probe), len(snapshot.sorted_keys) - 1)
            if (snapshot.sorted_keys[at] == probe).mean() < 0.5:
                continue
            found = snapshot.take(digests, bits)
            if found is not None:
                touch(snapshot.path)
                return found
        return None

    @staticmethod
    def stale(hit: Found | None) -> bool:
        """Whether a request that got ``hit`` from :meth:`get` should be written as a new snapshot: no
        snapshot held most of it, or the best held less than :data:`REWRITE` of it."""
        return hit is None or float(hit.found.mean()) < REWRITE

    def put(self, digests: np.ndarray, dense: torch.Tensor, grams: lexical.Rows | None) -> None:
        """Write the rows of a pool (texts with ``digests`` (N,), embeddings (N, D), n-gram rows or None)
        as a new snapshot when N is within :data:`MIN_ROWS`..:data:`MAX_ROWS`, then remove the least
        recently used beyond :data:`KEEP`. A failure to write is logged, never raised: it is a cache."""
        n = len(digests)
        if not MIN_ROWS <= n <= MAX_ROWS or dense.shape[0] != n or (grams is not None and len(grams) != n):
            return
        bits = grams.width.bit_length() - 1 if grams is not None else 0
        order = np.argsort(digests, kind="stable")
        keys = np.ascontiguousarray(digests, dtype=KEY)
        arrays = {"keys": keys, "sorted_keys": keys[order], "sorted_rows": order.astype(np.int64),
                  "dense": dense.detach().to("cpu", torch.float32).numpy(),
                  "indptr": (grams.indptr if grams else torch.zeros(n + 1, dtype=torch.int64)).numpy(),
                  "indices": (grams.indices if grams else torch.zeros(0, dtype=torch.int64)).numpy(),
                  "values": (grams.values if grams else torch.zeros(0)).numpy()}
        try:
            folder = self.dir
            atomic_write(folder / f"{bits:02d}-{n:010d}-{uuid.uuid4().hex}.snap", arrays, _save)
            for old in newest_first(folder, "*.snap")[KEEP:]:
                old.unlink(missing_ok=True)
        except OSError as e:
            log.warning("pool snapshot not written (%s): the caches still hold every row", e)

    def _readable(self) -> Iterator[Snapshot]:
        """The readable snapshots, most recently used first."""
        for path in newest_first(self.dir, "*.snap"):
            try:
                snapshot = read_snapshot(path)
            except FileNotFoundError:  # removed by another worker's clean-up since the listing
                continue
            except (ValueError, OSError) as e:  # never trusted when damaged: removed, rebuilt from the caches
                log.warning("pool snapshot %s unreadable (%s): removing it", path, e)
                path.unlink(missing_ok=True)
                continue
            yield snapshot


def read_snapshot(path: Path) -> Snapshot:
    """Memory-map a snapshot file; ValueError if it is not a whole one."""
    bits = int(path.name.split("-", 1)[0])
    arrays, at = {}, 0
    with open(path, "rb") as f:
        for name in _ARRAYS:
            f.seek(at)
            offset, shape, dtype = npy_header(f)
            at = offset + int(np.prod(shape)) * dtype.itemsize
            arrays[name] = (offset, shape, dtype)
        size = os.fstat(f.fileno()).st_size
    if size != at:
        raise ValueError(f"{size} bytes, the arrays need {at}")
    mapped = {name: np.memmap(path, dtype, "c", offset, shape).view(np.ndarray)  # plain arrays slice faster
              if int(np.prod(shape)) else np.zeros(shape, dtype)
              for name, (offset, shape, dtype) in arrays.items()}
    n = len(mapped["keys"])
    if (mapped["keys"].dtype != KEY or mapped["sorted_keys"].shape != (n,) or mapped["sorted_rows"].shape != (n,)
            or mapped["dense"].ndim != 2 or mapped["dense"].shape[0] != n or mapped["indptr"].shape != (n + 1,)
            or mapped["indices"].shape != mapped["values"].shape or n == 0
            or int(mapped["indptr"][-1]) != len(mapped["indices"])):
        raise ValueError("arrays of inconsistent shapes")
    return Snapshot(path, bits, **mapped)


def _slices(array: np.ndarray, starts: np.ndarray, stops: np.ndarray, tail: tuple[int, ...] = ()) -> np.ndarray:
    """``array[starts[i]:stops[i]]`` one after another, in one new array (of shape (0, *tail) when none)."""
    parts = [array[a:b] for a, b in zip(starts.tolist(), stops.tolist(), strict=True)]
    return np.concatenate(parts) if parts else np.zeros((0, *tail), dtype=array.dtype)


def _save(arrays: dict[str, np.ndarray], f: BinaryIO) -> None:
    for name in _ARRAYS:
        np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]), version=(1, 0))
