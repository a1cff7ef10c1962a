"""The k-NN lists of a set of texts, kept between rounds.

Label spreading (:mod:`backend.al.propagation`) needs every text's nearest neighbours among the
labelled and unlabelled texts together: one (N, N) similarity pass, about 2 s for a 10k pool on
one CPU thread, most of a retrain with ``PROPAGATION=auto``. Between two retrains of a project
the set of texts is usually the same (annotating moves a text from the pool to the labelled
set, not out of the union), so the lists are computed once per set and kept. When the set has
changed a little (tasks imported or deleted; a pool larger than ``PROPAGATION_POOL``, whose
sample swaps a labelled text for the next one), a recent set's lists are updated: only the rows
of the new texts, and of those whose lists named a text that is gone, are computed in full
(:func:`update`).

The lists are always computed over the texts sorted by digest, then mapped to the caller's
order (:func:`backend.al.propagation.reorder`), so they do not depend on the order the rows come
in (texts that occur twice are the one exception: which copy is which is a matter of the
caller's order). Updated lists hold the same neighbours as computing them afresh, with
similarities that may differ in the last bits (another product computed them). The key is a
hash of the sorted digests with k and the encoder's identity; files are written atomically and
the least recently used are removed beyond :data:`KEEP`.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from backend.al import propagation
from backend.al.embeddings import KEY, atomic_write, identity_dir, newest_first, touch

KEEP = 8
"""Sets of lists kept on disk (each about 1.4 MB for 10k texts at k = 10), least recently used out."""
BASES = 3
"""How many of the most recently used sets a changed set tries to update from before computing all rows."""
_MEMORY = 4  # sets kept in memory when there is no folder
_BLOCK = 1024  # rows per block when old lists are merged with the new texts
log = logging.getLogger(__name__)


class NeighbourCache:
    """k-NN lists of embeddings keyed by their texts' digests: on disk under ``root`` (one folder per
    encoder identity), or in memory when ``root`` is None."""

    def __init__(self, root: Path | None, identity: str) -> None:
        self.identity, self.root = identity, root
        self._memory: OrderedDict[str, Lists] = OrderedDict()

    def __repr__(self) -> str:
        return f"NeighbourCache(root={str(self.root) if self.root else None!r})"

    @property
    def dir(self) -> Path | None:
        """The folder of this identity's lists (created when missing, also after a clean-up), None without a root."""
        if self.root is None:
            return None
        return identity_dir(self.root, f"k-NN lists v2 of {self.identity}", marker="NEIGHBOURS")

    def get(self, x: torch.Tensor, digests: np.ndarray, k: int = propagation.NEIGHBOURS
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`backend.al.propagation.nearest` of x (N, D), whose row i is the embedding of the text
        with ``digests[i]``: similarities (N, k) and row indices (N, k), read when this set of texts
        was seen before, updated from a recent set when few texts changed (:func:`update`)."""
        if len(digests) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} embeddings but {len(digests)} digests")
        order = np.argsort(digests, kind="stable")
        keys = np.ascontiguousarray(digests[order])
        k = min(k, x.shape[0] - 1)
        key = hashlib.sha1(f"{self.identity}\n{k}\n".encode() + keys.tobytes()).hexdigest()
        lists = self._read(key, x.shape[0], k)
        if lists is not None:
            self._touch(key)
        else:
            ordered, found = x[torch.from_numpy(order)], None
            for base in self._recent(k):  # another project's lists may be the newest: try a few
                found = update(base, keys, ordered, k)
                if found is not None:
                    break
            lists = Lists(keys, *(found if found is not None else propagation.nearest(ordered, k)))
            self._write(key, lists)
        return propagation.reorder(lists.sims, lists.columns, torch.from_numpy(order))

    def _read(self, key: str, n: int | None = None, k: int | None = None) -> Lists | None:
        if self.dir is None:
            return self._memory.get(key)
        path = self.dir / f"{key}.pt"
        try:
            data = torch.load(path, weights_only=True)
            lists = Lists(np.frombuffer(data["keys"].numpy().tobytes(), dtype=KEY), data["sims"],
                          data["columns"].long())
            m, width = lists.sims.shape
            if (n is not None and m != n) or (k is not None and width != k) or lists.columns.shape != (m, width) \
                    or len(lists.keys) != m or int(lists.columns.min()) < 0 or int(lists.columns.max()) >= m:
                raise ValueError(f"lists of shape {tuple(lists.sims.shape)}, expected {(n, k)}")
            return lists
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - a damaged file is recomputed, never trusted
            log.warning("k-NN lists %s unreadable (%s): computing them again", path, e)
            return None

    def _touch(self, key: str) -> None:
        """Mark a set's lists recently used (a base that :func:`update` only tried is not)."""
        if self.dir is None:
            self._memory.move_to_end(key)
            return
        touch(self.dir / f"{key}.pt")  # removed by another worker's clean-up meanwhile: written again next time

    def _recent(self, k: int) -> Iterator[Lists]:
        """Up to :data:`BASES` of the most recently used lists of k neighbours, newest first: the
        bases :func:`update` tries (a worker serving several projects writes lists of each)."""
        if self.dir is None:
            yield from [lists for lists in reversed(self._memory.values()) if lists.sims.shape[1] == k][:BASES]
            return
        tried = 0
        for path in newest_first(self.dir, "*.pt"):
            if tried == BASES:
                return
            lists = self._read(path.stem, k=k)
            if lists is not None:
                tried += 1
                yield lists

    def _write(self, key: str, lists: Lists) -> None:
        if self.dir is None:
            self._memory[key] = lists
            while len(self._memory) > _MEMORY:
                self._memory.popitem(last=False)
            return
        keys = torch.from_numpy(np.frombuffer(lists.keys.tobytes(), dtype=np.uint8).reshape(-1, KEY.itemsize).copy())
        atomic_write(self.dir / f"{key}.pt", {"keys": keys, "sims": lists.sims.contiguous(),
                                              "columns": lists.columns.int().contiguous()})
        files = newest_first(self.dir, "*.pt")
        for old in files[KEEP:]:
            old.unlink(missing_ok=True)


@dataclass(frozen=True)
class Lists:
    """k-NN lists of a set of texts in digest order: the sorted digests (N,) ``S20``, similarities
    (N, k) and row indices (N, k) into that order."""

    keys: np.ndarray
    sims: torch.Tensor
    columns: torch.Tensor


def update(base: Lists, keys: np.ndarray, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The lists of the texts with sorted digests ``keys`` (N,) and embeddings x (N, D) in that order,
    from the lists of an earlier set: the rows of new texts, and of texts whose list named a text
    that is gone, are computed against all N; every other row's list is its old one merged with its
    similarities to the new texts (the exact top k of the new set, as a text's top k among the old
    set is unchanged by removing texts outside it; between copies of one text, which copy is named
    is a tie either way). None when more than :data:`MAX_CHANGED` of the rows would be computed:
    compute them all then.
    """
    n = len(keys)
    if len(base.keys) < 2:
        return None
    # the r-th copy of a text in the old set is its r-th copy in the new one (copies are adjacent)
    at = np.searchsorted(keys, base.keys) + _copy_rank(base.keys)
    kept = at < n
    kept[kept] = keys[at[kept]] == base.keys[kept]  # (M,) old texts still in the set
    at = np.minimum(at, n - 1)
    new_of_old = torch.from_numpy(np.where(kept, at, -1))
    present = np.zeros(n, dtype=bool)
    present[at[kept]] = True
    added = torch.from_numpy(np.flatnonzero(~present))
    mapped = new_of_old[base.columns]  # (M, k) old lists in the new numbering, -1 for texts gone
    clean = torch.from_numpy(kept) & (mapped >= 0).all(dim=1)
    redo = torch.cat([added, new_of_old[torch.from_numpy(kept) & ~clean]]).sort().values
    if redo.numel() > MAX_CHANGED * n:
        return None
    sims, columns = torch.zeros(n, k), torch.zeros(n, k, dtype=torch.long)
    rows = new_of_old[clean]
    old_sims, old_columns = base.sims[clean], mapped[clean]
    if added.numel():  # in blocks of rows: a block's similarities to the new texts stay small
        unit = torch.nn.functional.normalize(x.float(), dim=1)
        new_unit = unit[added].T
        for start in range(0, rows.numel(), _BLOCK):
            block = rows[start:start + _BLOCK]
            extra = unit[block] @ new_unit  # (block, added)
            top, where = torch.cat([old_sims[start:start + _BLOCK], extra], dim=1).topk(k, dim=1)
            candidates = torch.cat([old_columns[start:start + _BLOCK], added.expand(block.numel(), -1)], dim=1)
            sims[block], columns[block] = top, candidates.gather(1, where)
    else:
        sims[rows], columns[rows] = old_sims, old_columns
    if redo.numel():
        sims[redo], columns[redo] = propagation.nearest(x, k, rows=redo)
    return sims, columns


def _copy_rank(keys: np.ndarray) -> np.ndarray:
    """For sorted keys (N,): which copy of its key each one is (0 for the first, 1 for the next ...)."""
    if not len(keys):
        return np.zeros(0, dtype=np.int64)
    first = np.concatenate([[True], keys[1:] != keys[:-1]])
    starts = np.flatnonzero(first)
    return np.arange(len(keys)) - np.repeat(starts, np.diff(np.append(starts, len(keys))))


MAX_CHANGED = 0.25
"""update() computes at most this share of the rows in full; more changed texts: all rows afresh."""
