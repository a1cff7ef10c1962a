"""The only module that talks to Label Studio (LS), through label-studio-sdk 2.x.

LS is the slow part of every round (LS 1.23 on SQLite, 2 cores, 10k tasks: listing
``id,data`` ~3 s, importing 10k predictions 20-37 s, deleting a version's 10k in one
request 31-40 s; see scripts/bench_publish.py), so each method asks for exactly what it
needs: ``include=`` trims task and project fields on the server (counters included), a
Data Manager filter (``tasks:id > after_id``) lists only new tasks, predictions are
imported in chunks and deleted by model version in one call. Every failure raises
:class:`LabelStudioError` with a one-line reason.

Authentication: ``api_key`` is either a personal access token (a JWT refresh token;
the SDK exchanges it for short-lived access tokens and refreshes them) or a legacy
token (``Authorization: Token ...``). The SDK tells them apart by their shape.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.types.prediction_request import PredictionRequest

SAMPLINGS = ("Sequential sampling", "Uniform sampling", "Uncertainty sampling")
PROJECT_FIELDS = ("id", "title", "label_config", "model_version", "sampling", "task_number", "total_annotations_number")
QUEUE_COLUMNS = ("id", "total_annotations", "predictions_score", "predictions_model_versions")
"""Columns the "Active learning queue" view shows besides the task data."""
IMPORT_CHUNK = 2000
"""Predictions per import request: big enough to amortise a request, small enough to stay well under timeouts."""
DELETE_TIMEOUT = 900.0
"""LS deletes predictions one row at a time (a per-row signal updates task counters): ~4 ms each on SQLite."""
DELETE_CHUNK = 50
"""Predictions :meth:`LabelStudioClient.delete_predictions_in_chunks` deletes between two checks whether to stop."""
LIST_PAGE = 10_000
"""Tasks per listing request: one page up to 10k tasks; larger projects in pages, so that no single
request outgrows the client timeout (listing 50k tasks in one page took LS over 60 s on a busy
2-core machine, scripts/bench_loop.py)."""


class LabelStudioError(RuntimeError):
    """A call to Label Studio failed; the message is one line saying which call and why."""


def _one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _detail(body: object) -> str:
    """The useful part of an LS error body (DRF puts it in `detail` or `validation_errors`)."""
    if isinstance(body, dict):
        for key in ("validation_errors", "detail", "error", "message"):
            if body.get(key):
                return _one_line(body[key])
    return _one_line(body)


class LabelStudioClient:
    """Label Studio REST API, reduced to what the active-learning service needs."""

    def __init__(self, url: str, api_key: str, timeout: float = 60.0):
        if not url:
            raise LabelStudioError("no Label Studio URL configured (set LABEL_STUDIO_URL)")
        if not api_key:
            raise LabelStudioError("no Label Studio API key configured (set LABEL_STUDIO_API_KEY)")
        self.url = url.rstrip("/")
        self.timeout = timeout
        with self._call("connect"):
            self._sdk = LabelStudio(base_url=self.url, api_key=api_key, timeout=timeout)

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self.url!r}, timeout={self.timeout})"

    # -- projects --------------------------------------------------------------------------

    def get_project(self, project_id: int) -> dict:
        """The project's id, title, label_config, model_version ("" if none), sampling, and its task and
        annotation counts as :meth:`count_tasks` and :meth:`count_annotations` give them (None when
        LS sends none), in one request."""
        with self._call(f"get project {project_id}"):
            project = self._sdk.projects.get(project_id, request_options=_include(PROJECT_FIELDS))
        return {
            "id": project.id,
            "title": project.title or "",
            "label_config": project.label_config or "",
            "model_version": project.model_version or "",
            "sampling": str(getattr(project.sampling, "value", project.sampling) or ""),
            "task_number": _count(project.task_number),
            "total_annotations_number": _count(project.total_annotations_number),
        }

    def count_annotations(self, project_id: int) -> int:
        """Non-cancelled annotations in the project, counted by LS in one query."""
        with self._call(f"count annotations of project {project_id}"):
            project = self._sdk.projects.get(
                project_id, request_options=_include(("id", "total_annotations_number"))
            )
        if project.total_annotations_number is None:
            raise LabelStudioError(f"count annotations of project {project_id}: LS returned no total")
        return int(project.total_annotations_number)

    def count_tasks(self, project_id: int) -> int:
        """Tasks in the project, counted by LS in one query (a cheap check for deleted tasks)."""
        with self._call(f"count tasks of project {project_id}"):
            project = self._sdk.projects.get(project_id, request_options=_include(("id", "task_number")))
        if project.task_number is None:
            raise LabelStudioError(f"count tasks of project {project_id}: LS returned no total")
        return int(project.task_number)

    def set_model_version(self, project_id: int, version: str) -> None:
        """Make `version`'s predictions the ones LS orders "Label All Tasks" by (LS refuses a version without any)."""
        with self._call(f"set model_version of project {project_id} to {version!r}"):
            self._sdk.projects.update(project_id, model_version=version)

    def set_sampling(self, project_id: int, sampling: str = "Uncertainty sampling") -> None:
        """Set the project's task sampling; "Uncertainty sampling" serves the lowest score first."""
        if sampling not in SAMPLINGS:
            raise LabelStudioError(f"sampling {sampling!r} is not one of {', '.join(SAMPLINGS)}")
        with self._call(f"set sampling of project {project_id}"):
            self._sdk.projects.update(project_id, sampling=sampling)

    def ensure_view(self, project_id: int, title: str = "Active learning queue",
                    score_above: float | None = None) -> int:
        """Id of the Data Manager tab `title` ordered by prediction score; created if missing.

        With `score_above` the tab shows only tasks whose prediction score (of the project's
        model_version) is above it: the "Ambiguous" tab, see ``labeling.AMBIGUOUS_SCORE``.
        """
        with self._call(f"list views of project {project_id}"):
            views = self._sdk.views.list(project=project_id)
        for view in views:
            if (view.data or {}).get("title") == title:
                return int(view.id)
        data = {"title": title, "ordering": ["tasks:predictions_score"], "type": "list",
                "hiddenColumns": self._queue_hidden_columns(project_id)}
        if score_above is not None:
            data["filters"] = {"conjunction": "and", "items": [
                {"filter": "filter:tasks:predictions_score", "operator": "greater", "type": "Number",
                 "value": score_above},
            ]}
        with self._call(f"create view {title!r} in project {project_id}"):
            view = self._sdk.views.create(project=project_id, data=data)
        return int(view.id)

    def _queue_hidden_columns(self, project_id: int) -> dict:
        """Hide every Data Manager column but the task data, id, annotations, priority and model version."""
        body = self._request("GET", "/api/dm/columns", f"list Data Manager columns of project {project_id}",
                             params={"project": project_id})
        columns = body.get("columns") if isinstance(body, dict) else None
        if not isinstance(columns, list):
            raise LabelStudioError(f"list Data Manager columns of project {project_id}: unexpected answer")
        hidden = [f"tasks:{c['id']}" for c in columns
                  if c.get("parent") is None and c.get("id") not in QUEUE_COLUMNS and c.get("id") != "data"]
        return {"explore": hidden, "labeling": hidden + ["tasks:total_annotations"]}

    # -- tasks -----------------------------------------------------------------------------

    def list_tasks(self, project_id: int, after_id: int = 0) -> list[dict]:
        """Tasks with id > after_id as [{"id", "data"}], ascending by id; the filter runs in LS."""
        query = None
        if after_id > 0:
            query = {"filters": {"conjunction": "and", "items": [
                {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": after_id},
            ]}}
        tasks = self._tasks(project_id, "id,data", query, f"list tasks of project {project_id}")
        return sorted(({"id": t["id"], "data": t.get("data") or {}} for t in tasks), key=lambda t: t["id"])

    def task_ids(self, project_id: int) -> set[int]:
        """Ids of all tasks in the project (to notice deleted tasks)."""
        tasks = self._tasks(project_id, "id", None, f"list task ids of project {project_id}")
        return {int(t["id"]) for t in tasks}

    def annotated_tasks(self, project_id: int) -> list[dict]:
        """[{"id", "data", "result"}] per task with a non-cancelled annotation: the latest one's result."""
        query = {"filters": {"conjunction": "and", "items": [
            {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0},
        ]}}
        # `include` filters the nested annotations' fields too, so it names theirs as well.
        tasks = self._tasks(project_id, "id,data,annotations,result,was_cancelled,updated_at", query,
                            f"list annotated tasks of project {project_id}", all_fields=True)
        annotated = []
        for task in sorted(tasks, key=lambda t: t["id"]):
            kept = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
            if kept:
                latest = max(kept, key=lambda a: (a.get("updated_at") or "", a.get("id") or 0))
                annotated.append({"id": task["id"], "data": task.get("data") or {},
                                  "result": latest.get("result") or []})
        return annotated

    # -- predictions -----------------------------------------------------------------------

    def import_predictions(self, project_id: int, predictions: list[dict]) -> int:
        """Bulk-create predictions ({"task", "result", "score", "model_version"}), chunked; returns how many."""
        created = 0
        for start in range(0, len(predictions), IMPORT_CHUNK):
            chunk = [PredictionRequest(**p) for p in predictions[start:start + IMPORT_CHUNK]]
            what = (f"import predictions {start}..{start + len(chunk) - 1} of {len(predictions)} "
                    f"into project {project_id}")
            with self._call(what):
                # No retry: a retried import that had succeeded would create every prediction twice.
                response = self._sdk.projects.import_predictions(
                    project_id, request=chunk, request_options={"max_retries": 0})
            created += int(getattr(response, "created", None) or 0)
        return created

    def model_versions(self, project_id: int) -> dict[str, int]:
        """{model_version: prediction count} of the project, counted by LS in one query."""
        body = self._request("GET", f"/api/projects/{project_id}/model-versions/",
                             f"list model versions of project {project_id}")
        if not isinstance(body, dict):
            raise LabelStudioError(f"list model versions of project {project_id}: unexpected answer "
                                   f"{_one_line(body)}")
        return {str(version): int(count or 0) for version, count in body.items() if version}

    def delete_predictions(self, project_id: int, model_version: str) -> int:
        """Delete every prediction of `model_version` in one request; returns how many.

        Deleting the project's current model_version also makes LS clear project.model_version.
        """
        if not model_version:
            raise LabelStudioError("delete predictions: an empty model_version would delete all predictions")
        body = self._request(
            "DELETE", f"/api/projects/{project_id}/model-versions/",
            f"delete predictions of {model_version!r} in project {project_id}",
            json={"model_version": model_version}, timeout=max(self.timeout, DELETE_TIMEOUT),
        )
        if not isinstance(body, dict) or "deleted_predictions" not in body:
            raise LabelStudioError(f"delete predictions of {model_version!r}: unexpected answer {_one_line(body)}")
        return int(body["deleted_predictions"])

    def prediction_ids(self, project_id: int, model_version: str) -> list[int]:
        """Ids of `model_version`'s predictions in the project, ascending (LS lists all, unpaged)."""
        what = f"list predictions of {model_version!r} in project {project_id}"
        body = self._request("GET", "/api/predictions/", what, params={"project": project_id},
                             timeout=max(self.timeout, DELETE_TIMEOUT))
        if not isinstance(body, list):
            raise LabelStudioError(f"{what}: unexpected answer {_one_line(body)}")
        return sorted(int(p["id"]) for p in body if isinstance(p, dict) and p.get("model_version") == model_version)

    def delete_predictions_in_chunks(self, project_id: int, model_version: str, chunk: int = DELETE_CHUNK,
                                     should_stop: Callable[[], bool] = lambda: False) -> tuple[int, bool]:
        """Delete `model_version`'s predictions one per request, asking ``should_stop()`` every
        `chunk`; returns (how many were deleted, whether none is left).

        LS deletes a whole version in one transaction, and on SQLite that locks the database
        for all of it (~4-20 ms a prediction): LS's other writes (an annotator's submit, our
        next import) wait, or fail with "database is locked" after SQLite's 5 s. One request
        per prediction holds the lock for one row, so a caller that stops when other work
        waits (and re-queues the rest) delays that work by at most one chunk. Project.model_version
        is never cleared by this path.
        """
        if not model_version:
            raise LabelStudioError("delete predictions: an empty model_version would delete all predictions")
        if chunk < 1:
            raise LabelStudioError(f"delete predictions: chunk={chunk} must be >= 1")
        ids = self.prediction_ids(project_id, model_version)
        for done, prediction_id in enumerate(ids):
            if done and done % chunk == 0 and should_stop():
                return done, False
            what = f"delete prediction {prediction_id} of {model_version!r} in project {project_id}"
            try:
                self._request("DELETE", f"/api/predictions/{prediction_id}/", what)
            except LabelStudioError as exc:
                if "HTTP 404" not in str(exc):  # gone already (a concurrent clean-up): that is the goal
                    raise
        return len(ids), True

    # -- plumbing --------------------------------------------------------------------------

    def _tasks(self, project_id: int, include: str, query: dict | None, what: str,
               all_fields: bool = False) -> list[dict]:
        """Every matching task, with only the `include`d fields serialized, in pages of LIST_PAGE.

        The SDK's pager would parse every task into a model and ask for a page past the end;
        at 10k tasks that doubles the time. `review=true` keeps LS from calling a connected ML
        backend for tasks without predictions while listing (evaluate_predictions_automatically).
        """
        params: dict[str, Any] = {"project": project_id, "include": include, "page_size": LIST_PAGE,
                                  "review": "true", "fields": "all" if all_fields else "task_only"}
        if query is not None:
            params["query"] = json.dumps(query)
        tasks: list[dict] = []
        page = 1
        while True:  # LIST_PAGE at a time, or less where the server caps page sizes (TASK_API_PAGE_SIZE_MAX)
            body = self._request("GET", "/api/tasks", what, params={**params, "page": page})
            batch = body.get("tasks") if isinstance(body, dict) else None
            if not isinstance(batch, list):
                raise LabelStudioError(f"{what}: unexpected answer {_one_line(body)}")
            tasks += batch
            if not batch or len(tasks) >= int(body.get("total") or 0):
                return tasks
            page += 1

    def _request(self, method: str, path: str, what: str, *, params: dict | None = None,
                 json: Any = None, timeout: float | None = None) -> Any:
        """A call the SDK has no method for, through the SDK's own HTTP client (auth, token refresh)."""
        options: dict[str, Any] = {"timeout_in_seconds": timeout or self.timeout}
        with self._call(what):
            response = self._sdk._client_wrapper.httpx_client.request(
                path.lstrip("/"), method=method, params=params, json=json, request_options=options)
        if response.status_code >= 400:
            try:
                body: object = response.json()
            except ValueError:
                body = response.text
            raise LabelStudioError(f"{what}: HTTP {response.status_code}: {_detail(body)}")
        try:
            return response.json() if response.content else None
        except ValueError:
            raise LabelStudioError(f"{what}: LS answered with non-JSON {_one_line(response.text)}") from None

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """Turn the SDK's and httpx's exceptions into one-line LabelStudioErrors."""
        try:
            yield
        except LabelStudioError:
            raise
        except ApiError as exc:
            status = f"HTTP {exc.status_code}" if exc.status_code else "error"
            raise LabelStudioError(f"{what}: {status}: {_detail(exc.body)}") from exc
        except httpx.TimeoutException as exc:
            raise LabelStudioError(f"{what}: Label Studio did not answer in time ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise LabelStudioError(f"{what}: cannot reach Label Studio: {_one_line(exc)}") from exc
        except (ValueError, TypeError) as exc:  # pydantic validation of requests/answers
            raise LabelStudioError(f"{what}: {_one_line(exc)}") from exc


def _count(value: object) -> int | None:
    return None if value is None else int(value)


def _include(fields: tuple[str, ...]) -> dict:
    """Request options asking LS to compute and send only these project fields."""
    return {"additional_query_parameters": {"include": ",".join(fields)}}
