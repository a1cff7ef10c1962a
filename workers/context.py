"""What a job is handed: the worker's context, built once per worker process.

``python -m workers`` builds one :class:`WorkerContext` from :class:`~backend.settings.Settings`
and gives it to its worker (:mod:`workers.worker`), which passes it to every job function as
the first argument. The engine (learner and model store) is built on first use, i.e. inside the
work-horse after RQ's fork, so CUDA is never initialised in the parent. Tests build a context
with a fake LS client factory. The job's Redis connection and progress come from RQ's current job.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from redis import Redis
from rq import get_current_job
from rq.job import Job

from backend import projects
from backend.jobqueue import JobPolicy
from backend.labeling import TaskSpec, parse_label_config
from backend.settings import Settings
from workers.task_index import TaskIndex

if TYPE_CHECKING:
    from backend.al.kinds.base import Model
    from backend.al.learner import ActiveLearner
    from backend.al.store import ModelStore

ClientFactory = Callable[[str, str], object]
"""(LS URL, API key) -> a client with :class:`~backend.labelstudio.LabelStudioClient`'s methods."""
_PROGRESS_EVERY = 0.5  # seconds between progress writes to Redis
log = logging.getLogger(__name__)


def _labelstudio_client(url: str, api_key: str):
    from backend.labelstudio import LabelStudioClient

    return LabelStudioClient(url, api_key)


@dataclass(frozen=True)
class SyncedProject:
    """One LS project as a job sees it: its client, LS record, task spec and synced task index."""

    client: object
    info: dict
    spec: TaskSpec
    index: TaskIndex


@dataclass
class WorkerContext:
    """Settings, job policy and the LS client factory, plus the engine built on first use."""

    settings: Settings
    policy: JobPolicy
    client_factory: ClientFactory
    _learner: ActiveLearner | None = field(default=None, init=False, repr=False)
    _store: ModelStore | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, client_factory: ClientFactory | None = None) -> WorkerContext:
        """The context of a worker with these settings; ``client_factory`` stands in for LS (tests)."""
        return cls(settings, JobPolicy.from_settings(settings), client_factory or _labelstudio_client)

    @property
    def learner(self) -> ActiveLearner:
        """The engine, created on first use (inside the job, where the device is picked)."""
        if self._learner is None:
            from backend.al.learner import ActiveLearner

            self._learner = ActiveLearner(self.settings.engine,
                                          cache_dir=Path(self.settings.model_dir) / "embeddings")
        return self._learner

    @property
    def store(self) -> ModelStore:
        """The model store under MODEL_DIR, keeping KEEP_VERSIONS checkpoints per project."""
        if self._store is None:
            from backend.al.store import ModelStore

            self._store = ModelStore(Path(self.settings.model_dir) / "models", keep=self.settings.keep_versions)
        return self._store

    def usable_model(self, project_id: int, version: str, spec: TaskSpec) -> Model | None:
        """The checkpoint of ``version`` if it can label tasks of ``spec``; None (logged) when it is
        missing, unreadable (e.g. truncated) or trained on another label set."""
        model = self.store.try_load(project_id, version)
        if model is not None and not model.fits(spec.classes, spec.multilabel):
            log.warning("project %s: %s was trained on the labels %s, the project now has %s",
                        project_id, version, model.classes, spec.classes)
            return None
        return model

    def client(self, r: Redis, project_id: int):
        """An LS client: LABEL_STUDIO_API_KEY first, else the URL and token LS sent at /setup."""
        return self.client_factory(*projects.ls_endpoint(r, project_id, self.settings.label_studio_url,
                                                         self.settings.label_studio_api_key))

    def sync_project(self, r: Redis, project_id: int) -> SyncedProject:
        """Read the project and its label config from LS and bring its task index up to date."""
        client = self.client(r, project_id)
        info = client.get_project(project_id)
        spec = parse_label_config(info["label_config"])
        index = TaskIndex(self.settings.model_dir, project_id)
        index.sync(client, spec, info.get("task_number"))  # counted by LS in the same request
        return SyncedProject(client, info, spec, index)

    def synced_project(self, r: Redis, project_id: int, info: dict) -> SyncedProject:
        """The project as a sync that read LS's record ``info`` left it: no LS read (the task index
        is the one on disk, which that sync brought up to date)."""
        return SyncedProject(self.client(r, project_id), info, parse_label_config(info["label_config"]),
                             TaskIndex(self.settings.model_dir, project_id))


def takes_context(func):
    """Mark a job function whose first argument is the :class:`WorkerContext` our worker passes.

    A worker without a context (a plain ``rq worker``) would call it with the job's arguments
    only: the job then fails at once, saying which worker to run, instead of deep inside.
    """

    @functools.wraps(func)
    def run(*args, **kwargs):
        if not args or not isinstance(args[0], WorkerContext):
            raise TypeError(f"{func.__module__}.{func.__name__} takes a WorkerContext first: run it with "
                            "a worker from workers.worker (`python -m workers`), not a plain rq worker")
        return func(*args, **kwargs)

    return run


def current_job() -> Job:
    """The RQ job running now; its ``connection`` is the worker's Redis."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("job functions run inside an RQ worker")
    return job


def report_progress(stage: str) -> Callable[[int, int], None]:
    """A progress callback writing {"stage", "done", "total"} to the current job's meta."""
    job, last = get_current_job(), [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if job is None or (now - last[0] < _PROGRESS_EVERY and done < total):
            return
        last[0] = now
        job.meta["progress"] = {"stage": stage, "done": int(done), "total": int(total)}
        job.save_meta()

    return report
