"""The engine's configuration, validated once. Imports no torch, so the web process can hold one."""

from __future__ import annotations

from dataclasses import dataclass

from backend.al.kinds import AUTO, KINDS

STRATEGIES = ("margin", "bald", "entropy", "least_confidence", "variation_ratios", "random")
"""Acquisition functions by the name the settings and the CLI use (``acquisition.FUNCTIONS`` has them)."""
COLD_STARTS = ("clusters", "zero-shot")
"""Cold-start orders before any model: k-means representatives, or class coverage of the label names."""
PROPAGATIONS = ("auto", "on", "off")
"""Pseudo-labels from label spreading over the pool (backend.al.propagation): auto = when a k-fold
check on the labels says spreading labels them better than the plain fit."""
POSTERIORS = ("auto", "laplace", "bootstrap")
"""The linear kind's weight samples for BALD and variation ratios: a Kronecker-factored Laplace
approximation around the fit, the weighted likelihood bootstrap of the labelled items, or (auto)
the bootstrap from 5 labels a class on average and Laplace below (kinds.linear.posterior_for)."""
FULL_HEADS = ("probe", "random")
"""Full mode's starting classifier layer: a logistic regression on the frozen encoder's outputs, or random."""
PROPAGATION_CHECKS = ("deferred", "inline")
"""When ``auto``'s check runs: after a retrain, for the next one (deferred), or inside each retrain (inline)."""


@dataclass(frozen=True)
class EngineConfig:
    """How the engine embeds, trains and ranks. Defaults are the benchmarked ones."""

    encoder: str = "all-MiniLM-L6-v2"
    mode: str = "auto"  # a model kind: a name in backend.al.kinds.KINDS, or "auto" (kinds.choose_kind)
    strategy: str = "margin"
    mc_samples: int = 20
    # Full mode: 0 samples dropout in every encoder layer; k only in the last k layers and the
    # classifier, the layers below running once per text (issue 14: cheaper MC).
    mc_layers: int = 0
    # Full mode: each fine-tune runs at least this many epochs over the labels (and at least 60
    # steps of 16), from the pretrained encoder. BaaL's examples train 20 (docs/BENCHMARKS.md, "The
    # real BaaL, side by side": its loop led ours by 2.6-4.4 points at 80-120 AG News labels).
    full_epochs: int = 5
    # Full mode: the classifier layer a fine-tune starts from: "probe", a logistic regression on the
    # pretrained encoder's pooled outputs of the labels (linear probing, then fine-tuning), or "random"
    # (docs/BENCHMARKS.md, "Full mode from a probed head").
    full_head: str = "random"
    power_beta: float = 0.0  # 0: deterministic order; >0: PowerX sampling (Kirsch et al. 2023)
    diversity_clusters: int = 0  # 0: off
    exploration: float = 0.1
    warm_start: bool = False
    seed: int = 0
    device: str = "auto"
    hidden: int = 256
    dropout: float = 0.3
    # The linear kind's pseudo-labels from label spreading over the unlabelled pool (backend.al.propagation):
    # "auto" checks on the labels (k-fold) that the fit labels held-out ones better with them than
    # without, and uses them only then, and only from 5 labels a class on average (below, the check
    # let harmful pseudo-labels through on CLINC150's 150 intents); at most propagation_pool pool
    # texts (those with the smallest digests: propagation.sample_by_digest) join the graph. The
    # default: AG News's ratio 1.92 -> 4.17, TREC-6
    # and CLINC150 unchanged to 500 labels (docs/BENCHMARKS.md, "Label propagation").
    propagation: str = "auto"
    propagation_pool: int = 20000
    # When auto's k-fold check runs. "deferred": after a fit, on its labels, off the loop (the worker's
    # check job; the simulation after each round), and the next fit uses that verdict, so a retrain runs
    # no check (AG News, 10k pool: 1.2-1.6 s of a 10-label round); "inline": inside every fit, on its own
    # labels, as before 2026-11-24 (docs/BENCHMARKS.md, "The check off the loop").
    propagation_check: str = "deferred"
    l2: float = 0.0  # prior precision of the linear kind's weights; 0: by the labelled set's shape (kinds.linear)
    # The linear kind's hashed word n-grams beside the embedding (backend/al/lexical.py): their scale grows
    # with the labels per class up to this cap (kinds.linear.lexical_scale); 0: the embedding alone.
    lexical: float = 0.5
    max_length: int = 128
    batch_size: int = 64
    cold_start_clusters: int = 20
    # The order before any model. Zero-shot pre-annotations are published with either when the label
    # names mean something; "clusters": the zero-shot order trained no better first models on AG News,
    # TREC-6 or CLINC150 (docs/BENCHMARKS.md, "Zero-shot cold start").
    cold_start: str = "clusters"
    # Ambiguity routing (acquisition.ambiguous): tasks with predictive entropy >= ambiguity_entropy
    # * log C and BALD <= ambiguity_bald * log C are marked and moved behind the rest of the order.
    # Off: it helped the default under 10% label noise but cost 1.7-4.6 points at 60-100 labels
    # without noise (docs/BENCHMARKS.md, section 4).
    ambiguity: bool = False
    # The linear kind's Laplace samples (BALD, variation ratios): False keeps the n-gram weights at the
    # fit and samples the embedding's only (an experiment of issue 7, item 3: docs/BENCHMARKS.md, "BALD").
    posterior_lexical: bool = True
    # How the linear kind draws its T weight samples (POSTERIORS): "laplace" around the fit (the curvature
    # of the labelled items, the prior's variance where no label constrains a direction), "bootstrap"
    # (T refits with the labelled items reweighted by Exp(1) draws: the spread where the labels disagree),
    # or "auto": the bootstrap from 5 labels a class on average, Laplace below (docs/BENCHMARKS.md, "BALD").
    posterior: str = "auto"
    ambiguity_entropy: float = 0.5
    ambiguity_bald: float = 0.005

    def __post_init__(self) -> None:
        if self.mode not in KINDS and self.mode != AUTO:
            raise ValueError(f"mode must be one of {', '.join(KINDS)}, {AUTO}, got {self.mode!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}")
        if self.cold_start not in COLD_STARTS:
            raise ValueError(f"cold_start must be one of {', '.join(COLD_STARTS)}, got {self.cold_start!r}")
        if self.propagation not in PROPAGATIONS:
            raise ValueError(f"propagation must be one of {', '.join(PROPAGATIONS)}, got {self.propagation!r}")
        if self.posterior not in POSTERIORS:
            raise ValueError(f"posterior must be one of {', '.join(POSTERIORS)}, got {self.posterior!r}")
        if self.propagation_check not in PROPAGATION_CHECKS:
            raise ValueError(f"propagation_check must be one of {', '.join(PROPAGATION_CHECKS)}, "
                             f"got {self.propagation_check!r}")
        if self.full_head not in FULL_HEADS:
            raise ValueError(f"full_head must be one of {', '.join(FULL_HEADS)}, got {self.full_head!r}")
        if self.mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {self.mc_samples}")
        if self.mc_layers < 0:
            raise ValueError(f"mc_layers must be >= 0 (0 = all layers), got {self.mc_layers}")
        if not 1 <= self.full_epochs <= 1000:
            raise ValueError(f"full_epochs must be in 1..1000, got {self.full_epochs}")
        if not 0 <= self.exploration < 1:
            raise ValueError(f"exploration must be in [0, 1), got {self.exploration}")
        if not 0 <= self.power_beta <= 100:
            raise ValueError(f"power_beta must be in [0, 100], got {self.power_beta}")
        if self.diversity_clusters < 0:
            raise ValueError(f"diversity_clusters must be >= 0, got {self.diversity_clusters}")
        if not 0 < self.ambiguity_entropy <= 1 or not 0 <= self.ambiguity_bald <= 1:
            raise ValueError("ambiguity thresholds are shares of log C: need 0 < ambiguity_entropy <= 1 "
                             f"and 0 <= ambiguity_bald <= 1, got {self.ambiguity_entropy}, {self.ambiguity_bald}")
        if not 0 <= self.lexical <= 10:
            raise ValueError(f"lexical must be in [0, 10] (0: off), got {self.lexical}")
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0 (0: by shape), got {self.l2}")
        if not 0 < self.dropout < 1:
            raise ValueError(f"dropout must be in (0, 1), got {self.dropout}")
        for name in ("hidden", "max_length", "batch_size", "cold_start_clusters", "propagation_pool"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
