"""Hashed word n-grams: the lexical features the ``linear`` kind puts beside a text's embedding.

A sentence embedding keeps what a text is about and loses much of how it is put: "how many
people ..." and "who are the people ..." embed close together, yet they are different TREC
question types. Word unigrams and bigrams (plus the text's first word and first two words)
carry that, and a linear model can weigh them from a few labels per class. Random labelled
sets, logistic regression on the embedding alone against embedding + these features
(docs/BENCHMARKS.md, "Lexical features"): TREC-6 +1.9 to +3.1 points at 40-500 labels,
AG News and CLINC150 within 0.2 points, once the features' weight follows the labels per class
(``kinds.linear.lexical_scale``).

Features are hashed ("the hashing trick", Weinberger et al. 2009) into ``2 ** bits`` signed
buckets with CRC-32, which is stable across processes and machines (Python's ``hash`` is salted
per process), so a model trained by one worker scores the same on another. Each text's row is
``sign(v) * log(1 + |v|)`` of its bucket sums, scaled to unit length like the embeddings. Pure
compute, no state: the same text always gives the same row.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Sequence

import torch

BITS = 10
"""2 ** BITS = 1,024 buckets: 11 bits (2,048) gave the same accuracy on TREC-6, AG News and
CLINC150 (within 0.1 points), and the linear kind's posterior costs O(D^3) in the feature count."""
_WORD = re.compile(r"\w+")
_SIGN_BIT = 1 << 31


@dataclass(frozen=True)
class Rows:
    """N texts' feature rows in compressed sparse row form: row i holds ``values[indptr[i]:indptr[i + 1]]``
    at columns ``indices[...]`` of ``width`` columns."""

    indptr: torch.Tensor  # int64 (N + 1,)
    indices: torch.Tensor  # int64 (nnz,)
    values: torch.Tensor  # float32 (nnz,)
    width: int

    def __len__(self) -> int:
        return self.indptr.numel() - 1

    def dense(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows start..stop as a dense float32 (stop - start, width) tensor."""
        stop = len(self) if stop is None else min(stop, len(self))
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        out = torch.zeros(stop - start, self.width)
        counts = self.indptr[start + 1:stop + 1] - self.indptr[start:stop]
        rows = torch.repeat_interleave(torch.arange(stop - start), counts)
        out[rows, self.indices[lo:hi]] = self.values[lo:hi]
        return out

    def take(self, rows: Sequence[int] | torch.Tensor) -> "Rows":
        """The given rows, in that order."""
        rows = torch.as_tensor(rows, dtype=torch.int64).reshape(-1)
        first, counts = self.indptr[rows], self.indptr[rows + 1] - self.indptr[rows]
        indptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        # entry k of the result is entry first[row] + (k - indptr[row]) of this one
        at = torch.repeat_interleave(first - indptr[:-1], counts) + torch.arange(int(indptr[-1]))
        return Rows(indptr, self.indices[at], self.values[at], self.width)


def grams(text: str, opening: bool = True) -> list[str]:
    """A text's lexical features as strings: lower-cased words, adjacent word pairs, and (``opening``)
    the first word and first two words marked as such (``^how``, ``^how many``)."""
    words = _WORD.findall(text.lower())
    if not words:
        return []
    pairs = [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    return words + pairs + (["^" + words[0], "^" + " ".join(words[:2])] if opening else [])


def row(text: str, bits: int = BITS, opening: bool = True) -> dict[int, float]:
    """One text's non-zero buckets -> values (the row :func:`features` gives it), for inspection."""
    rows = features([text], bits, opening)
    return dict(zip(rows.indices.tolist(), rows.values.tolist(), strict=True))


def features(texts: Sequence[str], bits: int = BITS, opening: bool = True) -> Rows:
    """Hashed n-gram rows (N texts, 2 ** bits columns): signed hashed counts, log-damped, unit length;
    a text with no word is an all-zero row. ``opening=False`` leaves out the opening-words features
    (for measuring what they add). The per-gram hashing is the only Python loop (about 0.07 ms a
    text of AG News); damping and scaling run on all rows at once, in float64, each row on its own."""
    mask, crc = (1 << bits) - 1, zlib.crc32
    indptr, indices, counts = [0], [], []
    for text in texts:
        buckets: dict[int, int] = {}
        for gram in grams(text, opening):
            h = crc(gram.encode("utf-8"))
            buckets[h & mask] = buckets.get(h & mask, 0) + (-1 if h & _SIGN_BIT else 1)
        kept = sorted((j, v) for j, v in buckets.items() if v != 0)
        indices.extend(j for j, _ in kept)
        counts.extend(v for _, v in kept)
        indptr.append(len(indices))
    offsets = torch.tensor(indptr, dtype=torch.int64)
    v = torch.tensor(counts, dtype=torch.float64)
    v = torch.sign(v) * torch.log1p(v.abs())
    owner = torch.repeat_interleave(torch.arange(len(texts)), offsets[1:] - offsets[:-1])
    norms = torch.zeros(len(texts), dtype=torch.float64).index_add_(0, owner, v * v).sqrt()
    return Rows(offsets, torch.tensor(indices, dtype=torch.int64), (v / norms[owner]).float(), 1 << bits)
