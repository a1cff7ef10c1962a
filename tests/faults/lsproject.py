"""A Label Studio project under test, and a watcher of which model version LS serves by.

What "never an incomplete live version" means here: every time LS's ``model_version`` is
sampled (twice, around a read of the per-version prediction counts, so that a switch in
between is not mistaken for a gap), the live version has a prediction for every task it was
published for: the unlabelled pool at its training.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import httpx

from tests.e2e.lsserver import LSApi
from tests.e2e.service import wait_for
from tests.periodic import Periodic

SAMPLE_EVERY = 0.25  # seconds between samples of LS's model_version


@dataclass
class Project:
    """One AG News project in LS: its id, the true label of every task, the tasks annotated so far."""

    api: LSApi
    id: int
    labels: dict[int, str]
    annotated: list[int] = field(default_factory=list)
    ml_backend: int | None = None

    @classmethod
    def create(cls, api: LSApi, title: str, tasks: int, offset: int, annotate: int = 0) -> "Project":
        pid, ids, rows = api.create_agnews_project(title, tasks, offset=offset)
        project = cls(api, pid, dict(zip(ids, (label for _, label in rows), strict=True)))
        project.annotate(annotate)
        return project

    @property
    def pattern(self) -> str:
        return rf"p{self.id}-v\d{{4}}-\w+"

    @property
    def unlabelled(self) -> int:
        return len(self.labels) - len(self.annotated)

    def annotate(self, n: int) -> list[int]:
        """Annotate the next n unlabelled tasks (by id) with their true label; returns the annotation ids."""
        todo = [t for t in sorted(self.labels) if t not in self.annotated][:n]
        ids = [self.api.annotate(task, self.labels[task]) for task in todo]
        self.annotated += todo
        return ids

    def connect(self, backend_url: str) -> None:
        """Connect the backend through LS (LS calls /setup and creates the webhook)."""
        self.ml_backend = self.api.connect_backend(self.id, backend_url)

    def live_version(self) -> str:
        body = self.api.call("GET", f"/api/projects/{self.id}/", params={"include": "id,model_version"})
        return body["model_version"] or ""

    def version_counts(self) -> dict[str, int]:
        """Predictions per model version in LS."""
        return self.api.call("GET", f"/api/projects/{self.id}/model-versions/")

    def wait_for_version(self, other_than: str = "", timeout: float = 180.0) -> str:
        """Wait until LS serves a trained or cold-start version of ours other than ``other_than``."""
        def switched():
            version = self.live_version()
            return version if re.fullmatch(self.pattern, version) and version != other_than else None
        return wait_for(switched, timeout, what=f"project {self.id}: a live version other than {other_than!r}")

    def assert_complete(self, version: str) -> None:
        """``version`` is live with exactly one prediction per unlabelled task, and nothing else is left."""
        assert self.live_version() == version
        wait_for(lambda: self.version_counts() == {version: self.unlabelled}, 60,
                 what=f"project {self.id}: only {version}'s {self.unlabelled} predictions ({self.version_counts()})")


class VersionWatch(Periodic):
    """Samples LS's live model_version of a project, with its prediction count, in a thread."""

    def __init__(self, project: Project) -> None:
        super().__init__(self._sample, SAMPLE_EVERY)
        self.project = project
        self.samples: list[tuple[float, str, int]] = []  # (time, live version, its predictions)
        self.missed = 0  # samples LS did not answer (it was down or frozen)
        self._api = LSApi(str(project.api.http.base_url), project.api.http.headers["Authorization"][6:],
                          timeout=5)

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self._api.http.close()

    def _sample(self) -> None:
        path = f"/api/projects/{self.project.id}/"
        try:
            before = self._api.call("GET", path, params={"include": "id,model_version"})["model_version"]
            counts = self._api.call("GET", path + "model-versions/")
            after = self._api.call("GET", path, params={"include": "id,model_version"})["model_version"]
        except (httpx.HTTPError, AssertionError):
            self.missed += 1
            return
        if before == after:  # no switch in between: the count belongs to the live version
            self.samples.append((time.monotonic(), before, int(counts.get(before, 0))))

    def versions(self) -> list[str]:
        """Live versions in the order LS served them."""
        seen: list[str] = []
        for _, version, _ in self.samples:
            if not seen or seen[-1] != version:
                seen.append(version)
        return seen

    def incomplete(self, expected: int) -> list[tuple[float, str, int]]:
        """Samples where the live version had other than ``expected`` predictions."""
        return [s for s in self.samples if s[2] != expected]
