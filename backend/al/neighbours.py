"""The k-NN lists of a set of texts, kept between rounds.

Label spreading (:mod:`backend.al.propagation`) needs every text's nearest neighbours among the
labelled and unlabelled texts together: one (N, N) similarity pass, about 2 s for a 10k pool on
one CPU thread, most of a retrain with ``PROPAGATION=auto``. Between two retrains of a project
the set of texts is usually the same (annotating moves a text from the pool to the labelled
set, not out of the union), so the lists are computed once per set and kept.

The lists are always computed over the texts sorted by digest, then mapped to the caller's
order (:func:`backend.al.propagation.reorder`), so a set's lists are the same whether they were
computed or read, whatever order the rows come in (texts that occur twice are the one exception:
which copy is which is a matter of the caller's order). The key is a hash of the sorted digests
with k and the encoder's identity; files are written atomically and the least recently used are
removed beyond :data:`KEEP`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from backend.al import propagation
from backend.al.embeddings import atomic_write, identity_dir

KEEP = 8
"""Sets of lists kept on disk (each about 1.2 MB for 10k texts at k = 10), least recently used out."""
_MEMORY = 2  # sets kept in memory when there is no folder
log = logging.getLogger(__name__)


class NeighbourCache:
    """k-NN lists of embeddings keyed by their texts' digests: on disk under ``root`` (one folder per
    encoder identity), or in memory when ``root`` is None."""

    def __init__(self, root: Path | None, identity: str) -> None:
        self.identity, self.root = identity, root
        self._memory: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def __repr__(self) -> str:
        return f"NeighbourCache(root={str(self.root) if self.root else None!r})"

    @property
    def dir(self) -> Path | None:
        """The folder of this identity's lists (created when missing, also after a clean-up), None without a root."""
        if self.root is None:
            return None
        return identity_dir(self.root, f"k-NN lists v1 of {self.identity}", marker="NEIGHBOURS")

    def get(self, x: torch.Tensor, digests: np.ndarray, k: int = propagation.NEIGHBOURS
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`backend.al.propagation.nearest` of x (N, D), whose row i is the embedding of the text
        with ``digests[i]``: similarities (N, k) and row indices (N, k), read when this set of texts
        was seen before."""
        if len(digests) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} embeddings but {len(digests)} digests")
        order = np.argsort(digests, kind="stable")
        k = min(k, x.shape[0] - 1)
        key = hashlib.sha1(f"{self.identity}\n{k}\n".encode() + digests[order].tobytes()).hexdigest()
        found = self._read(key, x.shape[0], k)
        if found is None:
            found = propagation.nearest(x[torch.from_numpy(order)], k)
            self._write(key, *found)
        return propagation.reorder(*found, torch.from_numpy(order))

    def _read(self, key: str, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.dir is None:
            if key in self._memory:
                self._memory.move_to_end(key)
            return self._memory.get(key)
        path = self.dir / f"{key}.pt"
        try:
            data = torch.load(path, weights_only=True)
            sims, columns = data["sims"], data["columns"].long()
            if sims.shape != (n, k) or columns.shape != (n, k) or int(columns.min()) < 0 or int(columns.max()) >= n:
                raise ValueError(f"lists of shape {tuple(sims.shape)}, expected {(n, k)}")
            os.utime(path)  # recently used
            return sims, columns
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - a damaged file is recomputed, never trusted
            log.warning("k-NN lists %s unreadable (%s): computing them again", path, e)
            return None

    def _write(self, key: str, sims: torch.Tensor, columns: torch.Tensor) -> None:
        if self.dir is None:
            self._memory[key] = (sims, columns)
            while len(self._memory) > _MEMORY:
                self._memory.popitem(last=False)
            return
        atomic_write(self.dir / f"{key}.pt", {"sims": sims.contiguous(), "columns": columns.int().contiguous()})
        files = sorted(self.dir.glob("*.pt"), key=_mtime, reverse=True)
        for old in files[KEEP:]:
            old.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
