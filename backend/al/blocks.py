"""Row-exact matrix products: a row's result never depends on the other rows in the call.

BLAS picks its kernels, and so the last bits of a row's result, by the number of rows. Going
through the products in blocks of exactly ``block`` rows (the last one zero-padded) makes a
task's values the same whether its pool is scored in one call or in shards.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def by_blocks(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], block: int) -> torch.Tensor:
    """fn over x (N, D) in blocks of exactly ``block`` rows. fn maps (block, D) -> (block, ...);
    returns (N, ...). An empty x gives fn's output shape with 0 rows."""
    return by_row_blocks(x.shape[0], lambda start, stop: x[start:stop], fn, block)


def by_row_blocks(n: int, rows: Callable[[int, int], torch.Tensor], fn: Callable[[torch.Tensor], torch.Tensor],
                  block: int) -> torch.Tensor:
    """fn over n rows built a block at a time: ``rows(start, stop)`` gives rows start..stop (stop - start, D),
    zero-padded to exactly ``block`` rows for fn. For inputs too large to hold at once (the linear kind's
    n-gram features are built per block)."""
    if n == 0:
        empty = rows(0, 0)
        return fn(empty.new_zeros(block, *empty.shape[1:]))[:0]
    parts = []
    for start in range(0, n, block):
        part = rows(start, min(start + block, n))
        parts.append(fn(F.pad(part, (0, 0, 0, block - part.shape[0])))[:part.shape[0]])
    return torch.cat(parts)
