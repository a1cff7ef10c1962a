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
}


def kind_class(name: str):
    """The ``Kind`` class registered under ``name``; ValueError for an unknown name."""
    if name not in KINDS:
        raise ValueError(f"unknown model kind {name!r}; choose from {', '.join(KINDS)}")
    return importlib.import_module(KINDS[name]).Kind
