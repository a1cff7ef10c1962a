"""An in-memory stand-in for ``backend.labelstudio.LabelStudioClient`` (only that class).

Used where a real Label Studio is not the point of the test (the e2e tests cover the real
server). It keeps tasks, annotations and predictions, records calls, and can be told to fail.
"""

from __future__ import annotations

import threading
from collections import Counter

from backend.labelstudio import LabelStudioError

CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text"><Choice value="pos"/><Choice value="neg"/></Choices></View>"""

POS = ["good great film", "great fun", "lovely good", "fine great acting", "good good"]
NEG = ["bad awful film", "awful boring", "poor bad", "terrible bad acting", "bad bad"]


class FakeLabelStudio:
    """One fake LS server's state; ``client(url, key)`` returns a client bound to it."""

    def __init__(self, project_id: int = 1, label_config: str = CONFIG) -> None:
        self.project_id = project_id
        self.label_config = label_config
        self.tasks: dict[int, object] = {}  # a text; None: no "text" field; NULL: "text": null
        self.annotations: dict[int, str] = {}  # task id -> choice
        self.predictions: list[dict] = []
        self.model_version = ""
        self.sampling = "Sequential sampling"
        self.views: list[str] = []
        self.view_filters: dict[str, float | None] = {}  # view title -> its prediction-score filter
        self.calls: Counter = Counter()
        self.fail: dict[str, Exception] = {}  # method name -> exception raised (once)
        self.import_fail_after: int | None = None  # import this many, then fail (once)
        self.down = False  # an outage: every call raises until it is cleared
        self.crash_during_import: int | None = None  # import this many, then go down (once)
        self.block_annotated: threading.Event | None = None  # annotated_tasks waits on it
        self.block_import: threading.Event | None = None  # import_predictions waits on it
        self.listed_after: list[int] = []  # after_id of every list_tasks call
        self.switch_then_fail = False  # set_model_version applies, then the reply is lost (once)
        self.lock = threading.Lock()

    def add_tasks(self, texts: list) -> list[int]:
        start = max(self.tasks, default=0) + 1
        ids = list(range(start, start + len(texts)))
        self.tasks.update(zip(ids, texts, strict=True))
        return ids

    def client(self, url: str, api_key: str) -> "FakeClient":
        return FakeClient(self)

    @classmethod
    def reviews(cls) -> "FakeLabelStudio":
        """Project 1 with 30 short reviews (POS and NEG, three times), four of each labelled."""
        fake = cls(project_id=1)
        ids = fake.add_tasks(POS * 3 + NEG * 3)
        fake.annotations.update({i: "pos" for i in ids[:4]} | {i: "neg" for i in ids[15:19]})
        return fake

    def live_predictions(self, version: str | None = None) -> list[dict]:
        version = self.model_version if version is None else version
        return [p for p in self.predictions if p["model_version"] == version]


NULL = object()
"""A task text that is JSON null ({"text": null}); None stands for a task without the field."""


def _data(text: object) -> dict:
    if text is None:
        return {"other": "no text field"}
    return {"text": None if text is NULL else text}


class FakeClient:
    """The contract API of LabelStudioClient over a FakeLabelStudio."""

    def __init__(self, ls: FakeLabelStudio) -> None:
        self.ls = ls

    def _enter(self, name: str, project_id: int) -> None:
        self.ls.calls[name] += 1
        if self.ls.down:
            raise LabelStudioError(f"{name}: cannot reach Label Studio (fake outage)")
        if name in self.ls.fail:
            raise self.ls.fail.pop(name)
        if project_id != self.ls.project_id:
            raise LabelStudioError(f"project {project_id} not found")

    def get_project(self, project_id):
        self._enter("get_project", project_id)
        return {"id": project_id, "title": "t", "label_config": self.ls.label_config,
                "model_version": self.ls.model_version, "sampling": self.ls.sampling,
                "task_number": len(self.ls.tasks), "total_annotations_number": len(self.ls.annotations)}

    def list_tasks(self, project_id, after_id=0):
        self._enter("list_tasks", project_id)
        self.ls.listed_after.append(after_id)
        return [{"id": i, "data": _data(t)} for i, t in sorted(self.ls.tasks.items()) if i > after_id]

    def count_tasks(self, project_id):
        self._enter("count_tasks", project_id)
        return len(self.ls.tasks)

    def task_ids(self, project_id):
        self._enter("task_ids", project_id)
        return set(self.ls.tasks)

    def annotated_tasks(self, project_id):
        self._enter("annotated_tasks", project_id)
        if self.ls.block_annotated is not None:
            self.ls.block_annotated.wait(30)
        return [{"id": i, "data": _data(self.ls.tasks[i]),
                 "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                             "value": {"choices": [c]}}]}
                for i, c in sorted(self.ls.annotations.items()) if i in self.ls.tasks]

    def count_annotations(self, project_id):
        self._enter("count_annotations", project_id)
        return len(self.ls.annotations)

    def import_predictions(self, project_id, predictions):
        self._enter("import_predictions", project_id)
        if self.ls.block_import is not None:
            self.ls.block_import.wait(30)
        with self.ls.lock:
            if self.ls.import_fail_after is not None:
                keep, self.ls.import_fail_after = self.ls.import_fail_after, None
                self.ls.predictions.extend(dict(p) for p in predictions[:keep])
                raise LabelStudioError("import failed midway (fake)")
            if self.ls.crash_during_import is not None:
                keep, self.ls.crash_during_import = self.ls.crash_during_import, None
                self.ls.predictions.extend(dict(p) for p in predictions[:keep])
                self.ls.down = True
                raise LabelStudioError("Label Studio went down during the import (fake)")
            self.ls.predictions.extend(dict(p) for p in predictions)
        return len(predictions)

    def set_model_version(self, project_id, version):
        self._enter("set_model_version", project_id)
        self.ls.model_version = version
        if self.ls.switch_then_fail:
            self.ls.switch_then_fail = False
            raise LabelStudioError("read timed out (fake), after LS applied the switch")

    def delete_predictions(self, project_id, model_version):
        self._enter("delete_predictions", project_id)
        with self.ls.lock:
            before = len(self.ls.predictions)
            self.ls.predictions = [p for p in self.ls.predictions if p["model_version"] != model_version]
            return before - len(self.ls.predictions)

    def model_versions(self, project_id):
        self._enter("model_versions", project_id)
        with self.ls.lock:
            counts = Counter(p["model_version"] for p in self.ls.predictions)
        return dict(counts)

    def set_sampling(self, project_id, sampling="Uncertainty sampling"):
        self._enter("set_sampling", project_id)
        self.ls.sampling = sampling

    def ensure_view(self, project_id, title="Active learning queue", score_above=None):
        self._enter("ensure_view", project_id)
        if title not in self.ls.views:
            self.ls.views.append(title)
            self.ls.view_filters[title] = score_above
        return self.ls.views.index(title) + 1
