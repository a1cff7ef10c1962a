"""A local index of a project's tasks (id, text, labelled, last acquisition value) under MODEL_DIR.

Listing a 10k-task LS project takes ~12 s, so a round must not re-read it: the index fetches
only tasks with ids above the highest one it knows (``list_tasks(after_id=...)``) and drops
ids LS no longer has. Listing every id (``task_ids``, ~3 s at 10k tasks) happens only when LS's
task count (counted by LS in the project record read first, or by ``count_tasks``) differs from
the number of ids the index knows, i.e. when a task was deleted; a deletion that races with the sync is
seen by the next one. Tasks without the configured data field are kept apart (``skipped``) so
they count as known and are not listed again. Edits to an existing task's text are not seen.
SQLite in WAL mode makes it safe for several worker processes sharing MODEL_DIR.
"""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Iterable, Sequence

from backend.labeling import TaskDataError, TaskSpec, task_text

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY, text TEXT NOT NULL, hash TEXT NOT NULL,
    labelled INTEGER NOT NULL DEFAULT 0, value REAL
);
CREATE TABLE IF NOT EXISTS skipped (id INTEGER PRIMARY KEY);
"""


def text_hash(text: str) -> str:
    """Short content hash of a task text."""
    return hashlib.sha1(text.encode()).hexdigest()[:16]


_IN_CHUNK = 900  # ids per "IN (...)" query: under SQLite's default limit of 999 variables


class TaskIndex:
    """One project's index file: ``MODEL_DIR/index/project-<id>.sqlite``."""

    def __init__(self, model_dir: Path, project_id: int) -> None:
        self.path = Path(model_dir) / "index" / f"project-{int(project_id)}.sqlite"
        self.project_id = int(project_id)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        return db

    def sync(self, client, spec: TaskSpec, task_count: int | None = None) -> dict[str, int]:
        """Bring the index up to date with LS; returns counts of added and removed tasks.

        ``task_count``: LS's task count, read just before (the project record carries it), else
        read here. ``checked`` is 1 when the full id list was read to find deleted tasks, else 0.
        """
        with closing(self._connect()) as db, db:
            if _meta(db, "value_key") != spec.value_key:
                db.execute("DELETE FROM tasks")  # the config reads another field: start over
                db.execute("DELETE FROM skipped")
                _set_meta(db, "value_key", spec.value_key)
            # Count before listing: a task created in between is listed but not counted, which
            # only costs a check; a task deleted in between is caught by the next sync.
            ls_count = client.count_tasks(self.project_id) if task_count is None else int(task_count)
            max_id = db.execute("SELECT MAX(id) FROM (SELECT MAX(id) AS id FROM tasks "
                                "UNION ALL SELECT MAX(id) FROM skipped)").fetchone()[0] or 0
            tasks = client.list_tasks(self.project_id, after_id=max_id)
            rows = _rows(tasks, spec)
            db.executemany("INSERT OR REPLACE INTO tasks (id, text, hash) VALUES (?, ?, ?)", rows)
            kept = {row[0] for row in rows}
            db.executemany("INSERT OR IGNORE INTO skipped (id) VALUES (?)",
                           [(int(t["id"]),) for t in tasks if int(t["id"]) not in kept])
            known_count = db.execute("SELECT (SELECT COUNT(*) FROM tasks) + "
                                     "(SELECT COUNT(*) FROM skipped)").fetchone()[0]
            gone: list[int] = []
            if known_count != ls_count:
                live = set(client.task_ids(self.project_id))
                known = {row[0] for row in db.execute("SELECT id FROM tasks UNION SELECT id FROM skipped")}
                gone = sorted(known - live)
                db.executemany("DELETE FROM tasks WHERE id = ?", [(i,) for i in gone])
                db.executemany("DELETE FROM skipped WHERE id = ?", [(i,) for i in gone])
                # Live ids at or below the newest listed one that the index lacks are tasks it
                # could not read (an index written before `skipped` existed): remember them.
                newest = max(known, default=0)
                db.executemany("INSERT OR IGNORE INTO skipped (id) VALUES (?)",
                               [(i,) for i in sorted(live - known) if i <= newest])
        return {"added": len(rows), "removed": len(gone), "checked": int(known_count != ls_count)}

    def mark_labelled(self, task_ids: Iterable[int]) -> None:
        """Record exactly these tasks as labelled (the others become unlabelled)."""
        with closing(self._connect()) as db, db:
            db.execute("UPDATE tasks SET labelled = 0")
            db.executemany("UPDATE tasks SET labelled = 1 WHERE id = ?", [(int(i),) for i in task_ids])

    def unlabelled(self) -> tuple[list[int], list[str]]:
        """Ids and texts of the unlabelled pool, ascending by id."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT id, text FROM tasks WHERE labelled = 0 ORDER BY id").fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    def labelled_texts(self) -> list[str]:
        """Texts of the tasks marked labelled (:meth:`mark_labelled`), ascending by id."""
        with closing(self._connect()) as db:
            return [r[0] for r in db.execute("SELECT text FROM tasks WHERE labelled = 1 ORDER BY id")]

    def sample_unlabelled(self, limit: int) -> list[str]:
        """Texts of at most ``limit`` unlabelled tasks, ascending by id: those whose texts have the
        smallest SHA-1 (``hash``, its first 8 bytes; ties by id), the sample
        :func:`backend.al.propagation.sample_by_digest` draws, read without reading the others."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT id, text FROM (SELECT id, text FROM tasks WHERE labelled = 0 "
                              "ORDER BY hash, id LIMIT ?) ORDER BY id", (int(limit),)).fetchall()
        return [r[1] for r in rows]

    def texts(self, task_ids: Sequence[int]) -> list[str]:
        """Texts of the given tasks, in the given order; only those rows are read."""
        found: dict[int, str] = {}
        ids = [int(i) for i in task_ids]
        with closing(self._connect()) as db:
            for at in range(0, len(ids), _IN_CHUNK):
                part = ids[at:at + _IN_CHUNK]
                query = f"SELECT id, text FROM tasks WHERE id IN ({','.join('?' * len(part))})"
                found.update(db.execute(query, part).fetchall())
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(f"tasks not in the index: {missing[:5]}")
        return [found[i] for i in ids]

    def texts_of(self, task_ids: Iterable[int]) -> dict[int, str]:
        """Texts of the given unlabelled tasks that the index knows."""
        wanted = {int(i) for i in task_ids}
        ids, texts = self.unlabelled()
        return {i: t for i, t in zip(ids, texts, strict=True) if i in wanted}

    def set_values(self, values: dict[int, float], replace_all: bool) -> None:
        """Store acquisition values of the current model (replace_all clears older ones)."""
        with closing(self._connect()) as db, db:
            if replace_all:
                db.execute("UPDATE tasks SET value = NULL")
            db.executemany("UPDATE tasks SET value = ? WHERE id = ?",
                           [(float(v), int(i)) for i, v in values.items()])

    def values(self) -> list[float]:
        """Acquisition values stored for the unlabelled pool."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT value FROM tasks WHERE labelled = 0 AND value IS NOT NULL")
            return [r[0] for r in rows]


def _rows(tasks: list[dict], spec: TaskSpec) -> list[tuple[int, str, str]]:
    rows = []
    for task in tasks:
        try:
            text = task_text(task, spec)
        except TaskDataError:
            continue  # a task without the configured field cannot be scored; skip it
        rows.append((int(task["id"]), text, text_hash(text)))
    return rows


def _meta(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def _set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
