"""Pre-annotations for /predict: the engine is loaded lazily, models cached per project+version.

The web process always runs the engine on the CPU: gunicorn forks its workers and CUDA must
not be initialised before a fork; /predict batches are small and the head is cheap.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

from redis import Redis

from backend import projects
from backend.labeling import TaskSpec, predictions, task_text
from backend.settings import Settings

_MODEL_CACHE_SIZE = 4


def confidence(probs: list[float], multilabel: bool) -> float:
    """Score for a served pre-annotation: confidence in [0, 1] (lower = less sure = label sooner)."""
    if not probs:
        return 0.0
    if multilabel:
        return sum(max(p, 1.0 - p) for p in probs) / len(probs)
    return max(probs)


class Predictor:
    """Holds the engine and a small LRU of loaded models for one web worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._learner = None
        self._store = None
        self._models: OrderedDict[tuple[int, str], object] = OrderedDict()

    def _engine(self):
        """Create the learner and store on first use (never at import, never in /setup)."""
        with self._lock:
            if self._learner is None:
                from backend.al.learner import ActiveLearner
                from backend.al.store import ModelStore

                root = Path(self.settings.model_dir)
                config = replace(self.settings.engine, device="cpu")
                self._learner = ActiveLearner(config, cache_dir=root / "embeddings")
                self._store = ModelStore(root / "models", keep=self.settings.keep_versions)
            return self._learner, self._store

    def _model(self, project_id: int, version: str):
        cache_key = (project_id, version)
        with self._lock:
            if cache_key in self._models:
                self._models.move_to_end(cache_key)
                return self._models[cache_key]
        model = self._store.try_load(project_id, version)  # unreadable: answered like "no model yet"
        if model is None:
            return None
        with self._lock:
            self._models[cache_key] = model
            while len(self._models) > _MODEL_CACHE_SIZE:
                self._models.popitem(last=False)
        return model

    def predict(self, r: Redis, project_id: int, tasks: list[dict], spec: TaskSpec) -> list[dict]:
        """One LS result per task: the live model's choice, or an empty answer named by the
        project's cold-start version before there is a model for this label config."""
        texts = [task_text(task, spec) for task in tasks]
        learner, store = self._engine()
        version = projects.published_version(r, project_id)
        if not version or projects.is_cold_start(version):
            version = store.current(project_id)
        model = self._model(project_id, version) if version else None
        if model is None or not model.fits(spec.classes, spec.multilabel):
            return predictions(spec, projects.cold_start_version(project_id), [0.0] * len(texts))
        probs = learner.predict_proba(model, texts).tolist() if texts else []
        scores = [round(confidence(row, spec.multilabel), 6) for row in probs]
        return predictions(spec, version, scores, probs)
