"""Model kinds: one module per way of turning labelled texts into MC-dropout probabilities.

Every kind implements :class:`backend.al.kinds.base.ModelKind`. ``KINDS`` maps the
``MODEL_MODE`` name to the module that defines it; modules are imported on first use,
so naming a kind (in settings, in the web process) never imports torch.

Adding a kind: write ``backend/al/kinds/<name>.py`` with a ``Kind`` class, add one line here.
"""

from __future__ import annotations

import importlib

KINDS: dict[str, str] = {
    "head": "backend.al.kinds.head",  # frozen encoder + MC-dropout MLP on cached embeddings
    "full": "backend.al.kinds.full",  # the whole transformer fine-tuned, MC dropout throughout
    "linear": "backend.al.kinds.linear",  # frozen encoder + logistic regression, Laplace posterior
    "reference": "backend.al.kinds.reference",  # the plain baseline: logistic regression, C = 1, no posterior
}

AUTO = "auto"
"""``MODEL_MODE=auto``: :func:`choose_kind` picks the kind from the device and the labelled set."""
CPU_KIND = "linear"
"""What ``auto`` trains on a CPU, and on a GPU while the labelled set is too small to fine-tune:
it saved the most labels of the CPU kinds on AG News and CLINC150 (docs/BENCHMARKS.md, "Labels
saved against the reference loop"; the MLP ``head`` saved more on TREC-6)."""
FULL_MIN_MEAN = 8.0
"""``auto`` fine-tunes (``full``) from this many labels per class on average ..."""
FULL_MIN_EACH = 2
"""... and at least this many in every class. The H100 table of issue 7 shows full mode losing to the
head at 1-2 labels per class (CLINC150, ~40 intents, 300 labels) and winning from ~10 per class
(AG News, TREC-6, 60 labels). Checked on an H100 (docs/BENCHMARKS.md, "Labels saved on a GPU"):
from the switch on, full mode is far above the CPU kind on TREC-6 and level with it on AG News; a
mean of 6 did not do better on 2 seeds and left one TREC-6 seed on ``linear`` (a class with fewer
than 2 labels)."""


def choose_kind(mode: str, device_type: str, class_counts: list[int] | tuple[int, ...]) -> str:
    """The kind to train: ``mode`` itself unless it is ``auto``; then ``full`` on CUDA when every class
    has >= FULL_MIN_EACH labels and the mean is >= FULL_MIN_MEAN, else CPU_KIND.

    A pure function of (device type, labels per class), so the choice is testable without a GPU.
    """
    if mode != AUTO:
        return mode
    counts = list(class_counts)
    if device_type == "cuda" and counts and min(counts) >= FULL_MIN_EACH and sum(counts) / len(counts) >= FULL_MIN_MEAN:
        return "full"
    return CPU_KIND


def kind_class(name: str):
    """The ``Kind`` class registered under ``name``; ValueError for an unknown name."""
    if name not in KINDS:
        raise ValueError(f"unknown model kind {name!r}; choose from {', '.join(KINDS)}")
    return importlib.import_module(KINDS[name]).Kind
