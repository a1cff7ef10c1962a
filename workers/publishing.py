"""Publishing priorities to Label Studio: predictions first, then the model_version switch.

``build_predictions`` and ``percentile_scores`` are pure; ``publish`` is the one write path,
ordered so that a failure at any point leaves LS sampling by the previous version.
"""

from __future__ import annotations

import bisect
from typing import Callable

from redis import Redis

from backend import projects
from backend.labeling import TaskSpec, labels_from_probs, prediction_for
from backend.queue import JobPolicy, enqueue_cleanup

Progress = Callable[[int, int], None]


def build_predictions(ids: list[int], ranking, spec: TaskSpec, version: str, top_k: int) -> list[dict]:
    """LS predictions for the top_k tasks of a ranking (0 = all): score = priority."""
    order = ranking.order.tolist()
    if top_k > 0:
        order = order[:top_k]
    scores = ranking.scores.tolist()
    probs = ranking.probs.tolist() if ranking.probs is not None else None
    return [
        prediction_for(ids[i], labels_from_probs(probs[i], spec) if probs else [], spec,
                       scores[i], version)
        for i in order
    ]


def publish(r: Redis, client, project_id: int, version: str, predictions: list[dict],
            policy: JobPolicy, ls_version: str | None = None, progress: Progress | None = None) -> None:
    """Import a version's predictions, then switch LS to it, then clean the old one up.

    A failure before the switch leaves the previous priorities live. A retry first deletes
    whatever a failed attempt imported for this version, so it never duplicates; if the
    failed attempt got as far as the switch (``ls_version``: LS's model_version), it only
    records it.
    """
    progress = progress or (lambda done, total: None)
    if projects.published_version(r, project_id) == version:
        return  # an earlier attempt switched already
    unfinished = projects.importing_version(r, project_id)
    if not (unfinished == version and ls_version == version):
        if unfinished == version:
            client.delete_predictions(project_id, version)
        elif unfinished is not None:
            enqueue_cleanup(r, project_id, unfinished, policy)
        projects.set_importing_version(r, project_id, version)
        progress(0, len(predictions))
        client.import_predictions(project_id, predictions)
        client.set_model_version(project_id, version)
    previous = projects.published_version(r, project_id)
    projects.set_published_version(r, project_id, version)
    projects.set_importing_version(r, project_id, None)
    progress(len(predictions), len(predictions))
    if previous and previous != version:
        enqueue_cleanup(r, project_id, previous, policy)


def percentile_scores(pool_values: list[float], new_values: list[float]) -> list[float]:
    """Place new tasks in the live order: score = share of the pool more informative than them.

    Lower score = label sooner, as in a full ranking. With an empty pool every score is 0.
    """
    ranked = sorted(pool_values)
    n = len(ranked)
    if n == 0:
        return [0.0 for _ in new_values]
    return [(n - bisect.bisect_right(ranked, v)) / n for v in new_values]
