"""Full mode's training loop against a bare one: milliseconds a step where the arithmetic is negligible.

    .venv/bin/python scripts/bench_step_overhead.py

A tiny random 6-layer BERT (hidden 32, MiniLM's tokenizer) fine-tuned on 500 AG News pool texts, one
thread: first through ``ActiveLearner.fit`` (full mode: 160 steps of 16), then the same number of
steps in a bare loop (forward, cross-entropy, backward, AdamW) over the same token batches. With a
model this small a step is mostly the framework's per-operation cost, as it is on a GPU where the
kernels are launch-bound; equal times mean our loop adds nothing to cut there.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.al.config import EngineConfig  # noqa: E402
from backend.al.datasets import load_tsv  # noqa: E402
from backend.al.kinds.full import FullClassifier  # noqa: E402
from backend.al.learner import ActiveLearner  # noqa: E402
from tests.tinybert import make_tiny_bert  # noqa: E402


def main() -> int:
    torch.set_num_threads(1)
    encoder = make_tiny_bert(Path(tempfile.mkdtemp()) / "tiny", hidden=32, layers=6)
    texts, labels = load_tsv(ROOT.parent / "shared" / "data" / "agnews" / "pool.tsv")
    texts, labels = texts[:500], labels[:500]
    classes = sorted(set(labels))
    learner = ActiveLearner(EngineConfig(encoder=str(encoder), mode="full", device="cpu"))
    learner.fit(texts[:40], labels[:40], classes)  # imports and first-use costs, untimed
    start = time.perf_counter()
    model = learner.fit(texts, labels, classes)
    ours, steps = time.perf_counter() - start, model.stats["steps"]

    kind = learner.kind("full")
    tokens, pad = kind.tokens(texts), kind.tokenizer.pad_token_id or 0
    net = FullClassifier(str(encoder), len(classes))
    optimizer = torch.optim.AdamW(net.parameters(), lr=5e-5)
    targets = torch.tensor([classes.index(y) for y in labels])
    rows = torch.arange(len(texts)).split(16)
    batches = [(tokens.batch(idx, pad), targets[idx]) for idx in rows]
    net.train()
    start = time.perf_counter()
    for step in range(steps):
        (ids, mask), y = batches[step % len(batches)]
        optimizer.zero_grad()
        F.cross_entropy(net(ids, mask), y).backward()
        optimizer.step()
    bare = time.perf_counter() - start
    print(f"{steps} steps of 16: ActiveLearner.fit {1000 * ours / steps:.1f} ms a step "
          f"(tokenizing and loading included), bare loop {1000 * bare / steps:.1f} ms a step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
