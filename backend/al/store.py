"""Versioned model store: checkpoints per project, written atomically.

Layout under root::

    project-<id>/<version>.pt   one checkpoint per version
    project-<id>/CURRENT        the current version's name

Versions are ``p<id>-v<NNNN>-<6 hex>``: a counter for humans and a random suffix so
two workers saving at once never overwrite each other. Every file is written to a temp
file in the same folder and renamed over the target, so a reader sees the old file or
the new one, never half of one. The newest ``keep`` versions (and the current one)
are kept.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
from pathlib import Path

import torch

from backend.al.embeddings import atomic_write
from backend.al.kinds.base import Model

log = logging.getLogger(__name__)
_VERSION = re.compile(r"^p(\d+)-v(\d{4,})-([0-9a-f]{6})$")


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read back (truncated, overwritten, not ours)."""


class ModelStore:
    """Checkpoints of every project's models under one root folder."""

    def __init__(self, root: Path, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep = keep

    def __repr__(self) -> str:
        return f"ModelStore(root={str(self.root)!r}, keep={self.keep})"

    def _dir(self, project_id: int) -> Path:
        return self.root / f"project-{int(project_id)}"

    def versions(self, project_id: int) -> list[str]:
        """Saved versions of a project, oldest first."""
        folder = self._dir(project_id)
        if not folder.is_dir():
            return []
        names = [p.stem for p in folder.glob("*.pt") if _VERSION.match(p.stem)]
        return sorted(names, key=lambda v: (int(_VERSION.match(v).group(2)), v))

    def current(self, project_id: int) -> str | None:
        """The current version, or None when the project has none."""
        try:
            version = (self._dir(project_id) / "CURRENT").read_text().strip()
        except FileNotFoundError:
            return None
        return version or None

    def save(self, project_id: int, model: Model) -> str:
        """Save model as a new version, make it current, prune old versions; return the version."""
        folder = self._dir(project_id)
        folder.mkdir(parents=True, exist_ok=True)
        existing = self.versions(project_id)
        number = int(_VERSION.match(existing[-1]).group(2)) + 1 if existing else 1
        version = f"p{int(project_id)}-v{number:04d}-{secrets.token_hex(3)}"
        atomic_write(folder / f"{version}.pt", model.to_dict())
        self._write_current(folder, version)
        self._prune(project_id, version)
        return version

    def load(self, project_id: int, version: str | None = None) -> Model | None:
        """The model of a version (default: current), or None when there is none.

        Raises :class:`CheckpointError` when the file is there but unreadable.
        """
        version = version or self.current(project_id)
        if version is None:
            return None
        if not _VERSION.match(version):
            raise ValueError(f"not a model version: {version!r}")
        path = self._dir(project_id) / f"{version}.pt"
        if not path.exists():
            return None
        try:
            return Model.from_dict(torch.load(path, weights_only=True, map_location="cpu"))
        except Exception as exc:  # torch raises a zoo of types for a damaged file: OSError, RuntimeError, ...
            raise CheckpointError(f"checkpoint {version} of project {int(project_id)} is unreadable "
                                  f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from exc

    def try_load(self, project_id: int, version: str | None = None) -> Model | None:
        """Like :meth:`load`, but an unreadable checkpoint is logged and answered with None:
        for callers that treat it as "no model" (a retrain writes a new one)."""
        try:
            return self.load(project_id, version)
        except CheckpointError as exc:
            log.warning("project %s: %s", int(project_id), exc)
            return None

    def reset(self, project_id: int) -> None:
        """Forget the current version (e.g. the label config changed); checkpoints stay until pruned."""
        (self._dir(project_id) / "CURRENT").unlink(missing_ok=True)

    def _write_current(self, folder: Path, version: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".CURRENT.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / "CURRENT")

    def _prune(self, project_id: int, current: str) -> None:
        for old in self.versions(project_id)[:-self.keep]:
            if old != current:
                (self._dir(project_id) / f"{old}.pt").unlink(missing_ok=True)
