"""Fit classifiers from (inputs, targets): seeded, class-weighted, with early stopping.

Targets are a float matrix ``(N, C)``: one-hot rows for single-label, 0/1 rows for
multi-label. Class weights are inverse frequencies over the classes present, so an
imbalanced label set does not collapse onto its majority class.

Schedule: label sets smaller than ``min_val`` train a fixed number of steps (at
least ``tiny_steps``, at least ``min_epochs`` epochs): there a held-out split costs
labels and its loss is too noisy to stop on (on TREC-6, early stopping at 500 labels
reached 73% against 83% for fixed steps). Larger sets hold out ``val_fraction`` and
stop when validation loss stops improving, keeping the best weights.

Steps run eagerly, or (``StaticBatches`` on a CUDA model) each replayed from a CUDA graph
captured per input shape (:class:`GraphedSteps`), with the same arithmetic.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings for the head (and, with smaller lr, for full fine-tuning)."""

    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 32
    tiny_steps: int = 200
    min_epochs: int = 5
    max_epochs: int = 100
    patience: int = 5
    min_val: int = 2000
    val_fraction: float = 0.15
    class_weights: bool = True
    seed: int = 0
    threads: int | None = None  # intra-op threads while training; None leaves torch's setting


def class_weights(targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Per-class weights from targets (N, C) -> (C,).

    Single-label: N / (C_present * count_c) for present classes, 1 for absent ones.
    Multi-label: positive weights neg_c / pos_c, clamped to [1, 20].
    """
    counts = targets.sum(dim=0)
    if multilabel:
        negatives = targets.shape[0] - counts
        return torch.where(counts > 0, negatives / counts.clamp_min(1), torch.ones_like(counts)).clamp(1, 20)
    present = (counts > 0).sum().clamp_min(1)
    weights = targets.shape[0] / (present * counts.clamp_min(1))
    return torch.where(counts > 0, weights, torch.ones_like(counts))


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool,
            weights: torch.Tensor | None) -> torch.Tensor:
    """Weighted cross-entropy (single-label) or BCE with positive weights (multi-label)."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights)
    return F.cross_entropy(logits, targets.argmax(dim=1), weight=weights)


def split_validation(n: int, config: TrainConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val); val is empty for sets smaller than config.min_val."""
    perm = torch.randperm(n, generator=generator)
    if n < config.min_val:
        return perm, perm[:0]
    n_val = max(1, int(n * config.val_fraction))
    return perm[n_val:], perm[:n_val]


@dataclass(frozen=True)
class StaticBatches:
    """Training batches cut into device tensors of a few shapes, so that steps can replay CUDA graphs.

    ``inputs(idx)`` gives the tensors of items idx, padded to one of a few shapes (a CUDA graph is
    captured per shape); ``logits(model, tensors)`` the logits from them. Used in place of
    ``fit``'s ``forward`` where ``capture`` holds and the model is on CUDA.
    """

    inputs: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
    logits: Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]
    capture: bool = True
    """False runs the same static-buffer steps without capturing them (on any device): for tests."""


def fit(
    model: nn.Module,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    n: int,
    targets: torch.Tensor,
    multilabel: bool,
    config: TrainConfig,
    progress: Callable[[int, int], None] | None = None,
    static: StaticBatches | None = None,
) -> dict:
    """Train model in place; forward(model, idx) gives logits for items idx. Returns stats.

    Seeded: the same inputs, config and initial weights give the same weights, and
    the global RNG state is left as it was. With ``static`` on a CUDA model (or
    ``static.capture`` off), each training step is one replay of a CUDA graph
    (:class:`GraphedSteps`); validation still runs ``forward``.
    """
    if n == 0:
        raise ValueError("cannot train on an empty label set")
    with torch.random.fork_rng(devices=[]), _threads(config.threads):
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        train_idx, val_idx = split_validation(n, config, generator)
        weights = class_weights(targets[train_idx], multilabel) if config.class_weights else None
        weights = weights.to(targets.device) if weights is not None else None
        # Fused on CUDA: one kernel per step instead of several per parameter tensor.
        fused = all(p.is_cuda for p in model.parameters())
        graphed = static is not None and (fused or not static.capture)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                      fused=fused or None, capturable=graphed and fused)
        if graphed:
            step: Callable[[torch.Tensor], torch.Tensor] = GraphedSteps(model, static, optimizer, targets,
                                                                        multilabel, weights)
        else:
            def step(idx: torch.Tensor) -> torch.Tensor:
                return _step(model, forward, idx, targets, multilabel, weights, optimizer)
        try:
            if val_idx.numel() == 0:
                stats = _fit_fixed(model, step, train_idx, config, progress)
            else:
                stats = _fit_early_stopping(model, step, forward, train_idx, val_idx, targets, multilabel, weights,
                                            config, generator, progress)
        finally:
            if graphed:  # the gradients live in the graphs' memory: let it go with them
                model.zero_grad(set_to_none=True)
        if graphed:
            stats["graphs"] = len(step.shapes)
        return stats


@contextmanager
def _threads(count: int | None):
    """Temporarily run torch ops on `count` threads."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _step(model, forward, idx, targets, multilabel, weights, optimizer) -> torch.Tensor:
    """One optimiser step; the loss stays a device tensor (no host sync per step)."""
    model.train()
    optimizer.zero_grad()
    loss = loss_fn(forward(model, idx), targets[idx], multilabel, weights)
    loss.backward()
    optimizer.step()
    return loss.detach()


class GraphedSteps:
    """Optimiser steps (forward, loss, backward, AdamW) each replayed from a CUDA graph, one graph per
    input shape, captured on first use: a step costs one launch instead of hundreds of kernel
    launches from Python, which bound the fine-tune of small batches (docs/BENCHMARKS.md, section 6).

    The same arithmetic as eager steps: the optimiser's state is made before the first capture by a
    step with learning rate 0 on zero gradients (it changes no weight) and its step count reset, so
    bias corrections match; the optimiser must be ``capturable``. Dropout draws from the CUDA
    generator as replays advance it, so the masks differ from an eager run's. Each batch's inputs
    are cut once (memoised by its items) and copied into the graph's static buffers.
    """

    def __init__(self, model: nn.Module, static: StaticBatches, optimizer: torch.optim.Optimizer,
                 targets: torch.Tensor, multilabel: bool, weights: torch.Tensor | None) -> None:
        self.model, self.static, self.optimizer = model, static, optimizer
        self.targets, self.multilabel, self.weights = targets, multilabel, weights
        self._graphs: dict[tuple, tuple] = {}
        self._inputs: dict[tuple[int, ...], tuple[torch.Tensor, ...]] = {}
        self._state_made = False

    @property
    def shapes(self) -> list[tuple]:
        """The input shapes a graph was captured for."""
        return list(self._graphs)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        key = tuple(idx.tolist())
        if key not in self._inputs:
            if len(self._inputs) >= 4096:  # new batches every epoch when stopping early: bound the memo
                self._inputs.clear()
            self._inputs[key] = (*self.static.inputs(idx), self.targets[idx])
        inputs = self._inputs[key]
        shape = tuple((tuple(x.shape), x.dtype) for x in inputs)
        if shape not in self._graphs:
            self._graphs[shape] = self._capture(inputs)
        run, buffers, loss = self._graphs[shape]
        for buffer, x in zip(buffers, inputs, strict=True):
            buffer.copy_(x)
        run()
        return loss.detach().clone()

    def _loss(self, buffers: Sequence[torch.Tensor]) -> torch.Tensor:
        logits = self.static.logits(self.model, buffers[:-1])
        return loss_fn(logits, buffers[-1], self.multilabel, self.weights)

    def _make_state(self) -> None:
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["lr"] = 0.0
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        self.optimizer.step()
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
            for p in group["params"]:
                self.optimizer.state[p]["step"].zero_()
        self.optimizer.zero_grad(set_to_none=True)
        self._state_made = True

    def _capture(self, inputs: tuple[torch.Tensor, ...]):
        """(run, static buffers, static loss) for one input shape."""
        if not self._state_made:
            self._make_state()
        self.model.train()
        buffers = tuple(x.clone() for x in inputs)
        if not self.static.capture:
            holder = {}

            def run() -> None:
                self.model.train()
                self.optimizer.zero_grad(set_to_none=True)
                loss = self._loss(buffers)
                loss.backward()
                self.optimizer.step()
                holder["loss"].copy_(loss.detach())

            holder["loss"] = torch.zeros((), device=inputs[-1].device)
            return run, buffers, holder["loss"]
        # Warm up on a side stream (lazy initialisations must not be captured), then capture one
        # step whose backward writes gradients into memory of the graph's own.
        self.optimizer.zero_grad(set_to_none=True)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._loss(buffers).backward()
        torch.cuda.current_stream().wait_stream(side)
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = self._loss(buffers)
            loss.backward()
            self.optimizer.step()
        return graph.replay, buffers, loss


def _fit_fixed(model, step_fn, train_idx, config, progress) -> dict:
    loss = float("nan")
    batches = train_idx.split(config.batch_size)
    steps = max(config.tiny_steps, config.min_epochs * len(batches))
    for step in range(steps):
        loss = step_fn(batches[step % len(batches)])
        if progress and (step + 1) % 50 == 0:
            progress(step + 1, steps)
    model.eval()
    return {"steps": steps, "train_loss": float(loss), "val_loss": None, "epochs": None}


def _fit_early_stopping(model, step_fn, forward, train_idx, val_idx, targets, multilabel, weights,
                        config, generator, progress) -> dict:
    best, best_state, bad, epoch, steps = float("inf"), None, 0, 0, 0
    loss = float("nan")
    for epoch in range(1, config.max_epochs + 1):
        perm = train_idx[torch.randperm(train_idx.numel(), generator=generator)]
        for idx in perm.split(config.batch_size):
            loss = step_fn(idx)
            steps += 1
        model.eval()
        with torch.no_grad():
            val = float(loss_fn(forward(model, val_idx), targets[val_idx], multilabel, weights))
        if progress:
            progress(epoch, config.max_epochs)
        if val < best - 1e-4:
            best, best_state, bad = val, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"steps": steps, "train_loss": float(loss), "val_loss": best, "epochs": epoch}
