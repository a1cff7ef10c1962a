"""The engine's configuration, validated once. Imports no torch, so the web process can hold one."""

from __future__ import annotations

from dataclasses import dataclass

from backend.al.kinds import KINDS

STRATEGIES = ("margin", "bald", "entropy", "least_confidence", "variation_ratios", "random")
"""Acquisition functions by the name the settings and the CLI use (``acquisition.FUNCTIONS`` has them)."""


@dataclass(frozen=True)
class EngineConfig:
    """How the engine embeds, trains and ranks. Defaults are the benchmarked ones."""

    encoder: str = "all-MiniLM-L6-v2"
    mode: str = "head"  # a model kind: a name in backend.al.kinds.KINDS
    strategy: str = "margin"
    mc_samples: int = 20
    power_beta: float = 0.0  # 0: deterministic order; >0: PowerX sampling (Kirsch et al. 2023)
    diversity_clusters: int = 0  # 0: off
    exploration: float = 0.1
    warm_start: bool = False
    seed: int = 0
    device: str = "auto"
    hidden: int = 256
    dropout: float = 0.3
    max_length: int = 128
    batch_size: int = 64
    cold_start_clusters: int = 20
    # Ambiguity routing (acquisition.ambiguous): tasks with predictive entropy >= ambiguity_entropy
    # * log C and BALD <= ambiguity_bald * log C are marked and moved behind the rest of the order.
    # Off: it helped the default under 10% label noise but cost 1.7-4.6 points at 60-100 labels
    # without noise (docs/BENCHMARKS.md, section 4).
    ambiguity: bool = False
    ambiguity_entropy: float = 0.5
    ambiguity_bald: float = 0.005

    def __post_init__(self) -> None:
        if self.mode not in KINDS:
            raise ValueError(f"mode must be one of {', '.join(KINDS)}, got {self.mode!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}")
        if self.mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {self.mc_samples}")
        if not 0 <= self.exploration < 1:
            raise ValueError(f"exploration must be in [0, 1), got {self.exploration}")
        if not 0 <= self.power_beta <= 100:
            raise ValueError(f"power_beta must be in [0, 100], got {self.power_beta}")
        if self.diversity_clusters < 0:
            raise ValueError(f"diversity_clusters must be >= 0, got {self.diversity_clusters}")
        if not 0 < self.ambiguity_entropy <= 1 or not 0 <= self.ambiguity_bald <= 1:
            raise ValueError("ambiguity thresholds are shares of log C: need 0 < ambiguity_entropy <= 1 "
                             f"and 0 <= ambiguity_bald <= 1, got {self.ambiguity_entropy}, {self.ambiguity_bald}")
        if not 0 < self.dropout < 1:
            raise ValueError(f"dropout must be in (0, 1), got {self.dropout}")
        for name in ("hidden", "max_length", "batch_size", "cold_start_clusters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
