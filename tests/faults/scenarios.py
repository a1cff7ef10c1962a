"""Steps the fault tests share: a trained project, "Start Training", and a publish held at the proxy."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from tests.faults.lsproject import Project, VersionWatch
from tests.faults.proxy import Fault, FaultProxy
from tests.faults.stack import Stack

POOL, SEED_LABELS = 200, 12
ANNOTATED_READ = r"^/api/tasks\?.*total_annotations"  # the retrain's read of the annotated tasks
IMPORT = r"^/api/projects/\d+/import/predictions"  # the publish's import of the new predictions


def trained_project(api, stack: Stack, title: str, offset: int) -> tuple[Project, str]:
    """A project with SEED_LABELS annotations, connected; returns it and its first trained version."""
    project = Project.create(api, title, POOL, offset, annotate=SEED_LABELS)
    project.connect(stack.url)
    return project, project.wait_for_version()


def retrain(stack: Stack, project: Project) -> str:
    """Press "Start Training" (LS's START_TRAINING webhook); returns the retrain job's id."""
    response = stack.post("/webhook", {"action": "START_TRAINING", "project": {"id": project.id}})
    assert response.status_code == 200, response.text
    return response.json()["job_id"]


@dataclass
class HeldPublish:
    """A retrain whose publish the proxy holds, and LS's live version watched meanwhile."""

    project: Project
    first: str  # the version live before
    held: Fault
    watch: VersionWatch
    job_id: str  # the retrain's

    def assert_served_only_complete_versions(self, second: str) -> None:
        """LS went from the first version straight to ``second``, each complete whenever it was live."""
        assert self.watch.versions() == [self.first, second], self.watch.versions()
        incomplete = self.watch.incomplete(self.project.unlabelled)
        assert incomplete == [], incomplete[:5]
        print(f"{len(self.watch.samples)} samples of LS's model_version, all complete "
              f"({self.watch.missed} unanswered)")


@contextmanager
def held_publish(api, proxy: FaultProxy, stack: Stack, title: str, offset: int, action: str) -> Iterator[HeldPublish]:
    """A trained project, retrained, with the new version's import held (``action``: HOLD or HOLD_AFTER)."""
    project, first = trained_project(api, stack, title, offset)
    held = proxy.add("POST", IMPORT, action)
    with VersionWatch(project) as watch:
        job_id = retrain(stack, project)
        assert held.hit.wait(120), "the re-score never published"
        yield HeldPublish(project, first, held, watch, job_id)
