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
import warnings
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
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

    def cat(self, other: "Rows") -> "Rows":
        """These rows, then other's."""
        if other.width != self.width:
            raise ValueError(f"rows of {self.width} and {other.width} columns")
        indptr = torch.cat([self.indptr, other.indptr[1:] + self.indptr[-1]])
        values = torch.cat([self.values, other.values])
        return Rows(indptr, torch.cat([self.indices, other.indices]), values, self.width)

    def csr(self, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
        """``scale`` x these rows as a sparse CSR tensor (N, width) of dtype."""
        return _csr(self.indptr, self.indices, scale * self.values.to(dtype), (len(self), self.width))

    def csr_transposed(self, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
        """``scale`` x the transpose (width, N) as a sparse CSR tensor: column j's entries, by row."""
        owner = torch.repeat_interleave(torch.arange(len(self)), self.indptr[1:] - self.indptr[:-1])
        order = torch.argsort(self.indices * max(len(self), 1) + owner)  # by column, then row
        per_column = torch.bincount(self.indices, minlength=self.width)
        indptr = torch.cat([torch.zeros(1, dtype=torch.int64), per_column.cumsum(0)])
        return _csr(indptr, owner[order], scale * self.values[order].to(dtype), (self.width, len(self)))


def _csr(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(indptr, indices, values, shape, check_invariants=False)


def grams(text: str, opening: bool = True) -> list[str]:
    """A text's lexical features as strings: lower-cased words, adjacent word pairs, and (``opening``)
    the first word and first two words marked as such (``^how``, ``^how many``; a one-word text's
    first two words are its first word, so its ``^word`` comes twice)."""
    words = _WORD.findall(text.lower())
    if not words:
        return []
    pairs = [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    return words + pairs + (["^" + words[0], "^" + " ".join(words[:2])] if opening else [])


def row(text: str, bits: int = BITS, opening: bool = True) -> dict[int, float]:
    """One text's non-zero buckets -> values (the row :func:`features` gives it), for inspection."""
    rows = features([text], bits, opening)
    return dict(zip(rows.indices.tolist(), rows.values.tolist(), strict=True))


@dataclass(frozen=True)
class Counts:
    """Signed bucket counts before damping: entry k is bucket ``buckets[k]`` of text ``rows[k]``, with a
    non-zero count; sorted by row, then bucket. What :func:`finish` turns into rows."""

    rows: np.ndarray  # int64 (nnz,)
    buckets: np.ndarray  # int64 (nnz,)
    counts: np.ndarray  # int64 (nnz,)


def finish(c: Counts, n: int, bits: int) -> Rows:
    """The feature rows of n texts from their bucket counts: ``sign * log1p(|count|)``, unit length."""
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(np.bincount(c.rows, minlength=n))]).astype(np.int64))
    v = torch.from_numpy(c.counts.astype(np.float64))
    v = torch.sign(v) * torch.log1p(v.abs())
    owner = torch.from_numpy(c.rows.astype(np.int64))
    norms = torch.zeros(n, dtype=torch.float64).index_add_(0, owner, v * v).sqrt()
    return Rows(offsets, torch.from_numpy(c.buckets.astype(np.int64)), (v / norms[owner]).float(), 1 << bits)


def features(texts: Sequence[str], bits: int = BITS, opening: bool = True) -> Rows:
    """Hashed n-gram rows (N texts, 2 ** bits columns): signed hashed counts, log-damped, unit length;
    a text with no word is an all-zero row. ``opening=False`` leaves out the opening-words features
    (for measuring what they add)."""
    return finish(counts(texts, bits, opening), len(texts), bits)


def counts(texts: Sequence[str], bits: int = BITS, opening: bool = True) -> Counts:
    """The texts' signed bucket counts, what :func:`features` damps and scales.

    The gram strings of :func:`grams` are never built: CRC-32 is linear, so a pair's checksum
    follows from its words' (:func:`_crc_pairs`), and only each distinct word is hashed in Python;
    everything else runs on whole arrays. 10,001 AG News texts on one core of this 2-core CPU:
    0.23-0.34 s, against 0.47-0.56 s gram by gram (scripts/bench_lexical_hashing.py, medians of 5 in
    three runs; the word regex is about 0.09 s of it), the same rows
    bit for bit (tests/unit/al/test_al_lexical.py)."""
    mask, n = (1 << bits) - 1, len(texts)
    vocab: dict[str, int] = {}
    per_text = [_WORD.findall(text.lower()) for text in texts]
    lengths = np.fromiter(map(len, per_text), dtype=np.int64, count=n)
    ids = np.fromiter((vocab.setdefault(w, len(vocab)) for words in per_text for w in words),
                      dtype=np.int64, count=int(lengths.sum()))
    encoded = [w.encode("utf-8") for w in vocab]
    crc_word = np.fromiter(map(zlib.crc32, encoded), dtype=np.uint32, count=len(encoded))
    crc_spaced = np.fromiter((zlib.crc32(b" " + w) for w in encoded), dtype=np.uint32, count=len(encoded))
    spaced_len = np.fromiter((len(w) + 1 for w in encoded), dtype=np.int64, count=len(encoded))

    owner = np.repeat(np.arange(n), lengths)  # the text each word belongs to
    first = np.cumsum(lengths) - lengths  # position of each text's first word
    pair = np.flatnonzero(owner[:-1] == owner[1:]) if ids.size > 1 else np.zeros(0, dtype=np.int64)
    hashes = [crc_word[ids], _crc_pairs(crc_word[ids[pair]], crc_spaced[ids[pair + 1]], spaced_len[ids[pair + 1]])]
    owners = [owner, owner[pair]]
    if opening:
        worded = np.flatnonzero(lengths > 0)
        head = ids[first[worded]]  # "^w0" = "^" followed by w0
        crc_head = _crc_pairs(np.full(head.size, _CARET, dtype=np.uint32), crc_word[head], spaced_len[head] - 1)
        # "^w0 w1" = "^w0" followed by " w1"; a one-word text's "first two words" are "^w0" again
        crc_two, longer = crc_head.copy(), lengths[worded] > 1
        second = ids[first[worded[longer]] + 1]
        crc_two[longer] = _crc_pairs(crc_head[longer], crc_spaced[second], spaced_len[second])
        hashes += [crc_head, crc_two]
        owners += [worded, worded]
    h = np.concatenate(hashes).astype(np.int64)
    cell = np.concatenate(owners) * (mask + 1) + (h & mask)  # (text, bucket), sorted by text then bucket
    cells, where = np.unique(cell, return_inverse=True)
    sums = np.bincount(where, weights=np.where(h & _SIGN_BIT, -1.0, 1.0), minlength=cells.size)
    kept = sums != 0
    return Counts(cells[kept] >> bits, cells[kept] & mask, sums[kept].astype(np.int64))


PACKED_WIDTHS = (64, 128, 256, 1024)
"""Widths of the fixed-width rows :func:`pack` writes (non-zero buckets a text may have): a text is
stored in the narrowest that holds it (AG News: 58 a text at the median, 113 at the 99th percentile,
227 at most; CLINC150: 17, 35, 56); a text with more is hashed again each time. A warm read
touches every slot of the rows it reads, so the steps stay within 2x of each other."""
MAX_PACKED_BITS = 16
"""Above this many bits, rows are not packed (bucket numbers are stored as float32, exact to 2 ** 24)."""


def pack(rows: Rows, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows as fixed-width float32 rows (N, 2 x width), the embedding cache's format, and which
    texts fit (N,) bool: a text's non-zero entries' ``bucket + 1`` in its first slots, their values
    at the same slots of the second half, zeros after. A text fits when it has at most ``width``
    entries; its row is zero otherwise. What is stored is the finished row, so reading it back
    (:func:`unpack`) is a copy, not the damping and scaling again."""
    if rows.width > 1 << MAX_PACKED_BITS:
        raise ValueError(f"rows of more than {1 << MAX_PACKED_BITS} columns are not packed, got {rows.width}")
    indptr = rows.indptr.numpy()
    per_text = np.diff(indptr)
    fits = per_text <= width
    owner = np.repeat(np.arange(len(rows)), per_text)
    slot = np.arange(owner.size) - indptr[owner]
    keep = fits[owner]
    out = np.zeros((len(rows), 2 * width), dtype=np.float32)
    out[owner[keep], slot[keep]] = rows.indices.numpy()[keep] + 1
    out[owner[keep], width + slot[keep]] = rows.values.numpy()[keep]
    return out, fits


def unpack(packed: np.ndarray, bits: int) -> Rows:
    """The rows (M, 2 ** bits columns) that :func:`pack` wrote into packed (M, 2 x width)."""
    return merge([(np.arange(len(packed)), packed)], len(packed), bits)


def merge(parts: Sequence[tuple[np.ndarray, Rows | np.ndarray]], n: int, bits: int) -> Rows:
    """The rows of n texts from parts (positions (M,), the rows of those M texts): row j of a part is
    text ``positions[j]``, every text in exactly one part. A part's rows are :class:`Rows`, or packed
    rows (M, 2 x width) from :func:`pack`, unpacked straight into their place."""
    held = [None if isinstance(rows, Rows) else rows[:, :rows.shape[1] // 2] != 0 for _, rows in parts]
    sizes = [np.diff(rows.indptr.numpy()) if h is None else h.sum(axis=1)
             for (_, rows), h in zip(parts, held, strict=True)]
    covered = np.bincount(np.concatenate([np.zeros(0, dtype=np.int64)] + [p for p, _ in parts]), minlength=n)
    if len(covered) != n or (covered != 1).any():
        raise ValueError(f"parts do not cover {n} texts once each")
    per_text = np.zeros(n, dtype=np.int64)
    for (positions, _), size in zip(parts, sizes, strict=True):
        per_text[positions] = size
    indptr = np.concatenate([[0], np.cumsum(per_text)]).astype(np.int64)
    indices = np.empty(int(indptr[-1]), dtype=np.int64)
    values = np.empty(int(indptr[-1]), dtype=np.float32)
    for (positions, rows), size, h in zip(parts, sizes, held, strict=True):
        start = indptr[positions]
        if h is None:
            owner = np.repeat(np.arange(len(positions)), size)
            at = start[owner] + np.arange(owner.size) - rows.indptr.numpy()[owner]
            indices[at], values[at] = rows.indices.numpy(), rows.values.numpy()
        else:  # packing fills a row's slots from the first, so slot k goes to its text's start + k
            width = rows.shape[1] // 2
            at = (start[:, None] + np.arange(width))[h]
            indices[at] = rows[:, :width][h].astype(np.int64) - 1
            values[at] = rows[:, width:][h]
    return Rows(torch.from_numpy(indptr), torch.from_numpy(indices), torch.from_numpy(values), 1 << bits)


_CARET = zlib.crc32(b"^")
_SHIFTS: dict[int, np.ndarray] = {}


def _crc_pairs(crc_a: np.ndarray, crc_b: np.ndarray, len_b: np.ndarray) -> np.ndarray:
    """CRC-32 of each ``a + b`` from CRC-32(a), CRC-32(b) and b's length in bytes (zlib's
    ``crc32_combine``, on arrays): ``crc(a + b) = shift_len(b)(crc(a)) ^ crc(b)``, where shifting a
    checksum by n bytes is linear over GF(2) and is looked up one byte of the checksum at a time."""
    lens, at = np.unique(len_b, return_inverse=True)
    table = np.stack([_shift_table(int(k)) for k in lens]) if lens.size else np.zeros((0, 4, 256), np.uint32)
    a = crc_a.astype(np.int64)
    out = crc_b.astype(np.uint32).copy()
    for byte in range(4):
        out ^= table[at, byte, (a >> (8 * byte)) & 255]
    return out


def _shift_table(n: int) -> np.ndarray:
    """(4, 256): entry [k, v] is the checksum ``v << 8k`` shifted by n zero bytes."""
    if n not in _SHIFTS:
        zeros, base = bytes(n), zlib.crc32(bytes(n))
        _SHIFTS[n] = np.array([[zlib.crc32(zeros, v << (8 * k)) ^ base for v in range(256)] for k in range(4)],
                              dtype=np.uint32)
    return _SHIFTS[n]
