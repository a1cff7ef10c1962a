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
    n = x.shape[0]
    if n == 0:
        return fn(x.new_zeros(block, *x.shape[1:]))[:0]
    parts = []
    for start in range(0, n, block):
        part = x[start:start + block]
        if part.shape[0] < block:  # only the last block is padded: a full one goes in as it is, uncopied
            part = F.pad(part, (0, 0, 0, block - part.shape[0]))
        parts.append(fn(part)[:min(block, n - start)])
    return torch.cat(parts)
