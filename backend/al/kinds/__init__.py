"""Model kinds: one module per way of turning labelled texts into MC-dropout probabilities.

Every kind implements :class:`backend.al.kinds.base.ModelKind`. ``KINDS`` maps the
``MODEL_MODE`` name to the module that defines it; modules are imported on first use,
so naming a kind (in settings, in the web process) never imports torch.

Adding a kind: write ``backend/al/kinds/<name>.py`` with a ``Kind`` class, add one line here.
"""

from __future__ import annotations

import importlib
import statistics

KINDS: dict[str, str] = {
    "head": "backend.al.kinds.head",  # frozen encoder + MC-dropout MLP on cached embeddings
    "full": "backend.al.kinds.full",  # the whole transformer fine-tuned, MC dropout throughout
    "linear": "backend.al.kinds.linear",  # frozen encoder + logistic regression, Laplace posterior
    "reference": "backend.al.kinds.reference",  # the plain baseline: logistic regression, C = 1, no posterior
    "setfit": "backend.al.kinds.setfit",  # encoder tuned on pairs of the labels (SetFit), then ``linear`` on it
}

AUTO = "auto"
"""``MODEL_MODE=auto``: :func:`choose_kind` picks the kind from the device and the labelled set."""
CPU_KIND = "linear"
"""What ``auto`` trains on a CPU, and on a GPU while the labelled set is too small to fine-tune:
it saved the most labels of the CPU kinds on AG News and CLINC150 (docs/BENCHMARKS.md, "Labels
saved against the reference loop"; the MLP ``head`` saved more on TREC-6)."""
FULL_MIN_MEAN = 8.0
"""``auto`` fine-tunes (``full``) from this many labels per class on average ..."""
FULL_MIN_MEDIAN = 2
"""... and at least this many in the median class. The H100 table of issue 7 shows full mode losing
to the head at 1-2 labels per class (CLINC150, ~40 intents, 300 labels) and winning from ~10 per
class (AG News, TREC-6, 60 labels). Checked on an H100 (docs/BENCHMARKS.md, "Labels saved on a
GPU"): once it fine-tunes, full mode is far above the CPU kind on TREC-6 and level with it on AG
News. The median, not every class: with "every class", TREC-6's rare class (ABBR, 1.5% of the
pool; 0-1 labels until 160-240 labels) kept two of three seeds on ``linear`` for 140 labels and
more, 10-15 points below a run fine-tuned from 20 labels with the same rare class."""


def choose_kind(mode: str, device_type: str, class_counts: list[int] | tuple[int, ...]) -> str:
    """The kind to train: ``mode`` itself unless it is ``auto``; then ``full`` on CUDA when the mean
    labels per class is >= FULL_MIN_MEAN and the median class has >= FULL_MIN_MEDIAN, else CPU_KIND.

    A pure function of (device type, labels per class), so the choice is testable without a GPU.
    """
    if mode != AUTO:
        return mode
    counts = list(class_counts)
    if device_type != "cuda" or not counts:
        return CPU_KIND
    enough = statistics.median(counts) >= FULL_MIN_MEDIAN and statistics.mean(counts) >= FULL_MIN_MEAN
    return "full" if enough else CPU_KIND


def kind_class(name: str):
    """The ``Kind`` class registered under ``name``; ValueError for an unknown name."""
    if name not in KINDS:
        raise ValueError(f"unknown model kind {name!r}; choose from {', '.join(KINDS)}")
    return importlib.import_module(KINDS[name]).Kind
