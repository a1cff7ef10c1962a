"""Ambiguity routing through real workers and Redis (LS faked): the "Ambiguous" view and the score ranges."""

from __future__ import annotations

import dataclasses

import pytest

from backend import jobqueue, projects
from backend.labeling import AMBIGUOUS_ABOVE, AMBIGUOUS_SCORE, AMBIGUOUS_VIEW, QUEUE_TOP
from tests.integration.workers_helper import drain
from workers.context import WorkerContext


@pytest.fixture
def routed(settings, ls):
    """The workers' context with AMBIGUITY=on and thresholds that mark every task: any BALD counts
    as low and any entropy as high. The tiny test encoder is random per session, so thresholds
    in between would make the outcome a coin toss; this way every task is set aside except the
    explored ones (10% of the order), which keep their slots in the queue."""
    engine = dataclasses.replace(settings.engine, mode="head", ambiguity=True, ambiguity_bald=1.0,
                                 ambiguity_entropy=1e-6)
    on = dataclasses.replace(settings, engine=engine)
    return WorkerContext.from_settings(on, client_factory=ls.client)


def _set_up(web, ls) -> None:
    assert web.post("/setup", json={"project": "1", "schema": ls.label_config}).status_code == 200


def test_first_contact_with_routing_makes_the_view_and_publishes_in_two_ranges(web, ls, r, routed):
    _set_up(web, ls)
    drain(r, routed)  # prepare -> retrain (8 labels exist) -> rescore -> publish
    assert ls.views == ["Active learning queue", AMBIGUOUS_VIEW]
    assert ls.view_filters[AMBIGUOUS_VIEW] == AMBIGUOUS_ABOVE and projects.ambiguous_view(r, 1) == 2
    live = ls.live_predictions()
    assert len(live) == len(ls.tasks) - len(ls.annotations)  # PUBLISH_TOP_K=0: all of them
    queued = [p for p in live if p["score"] <= QUEUE_TOP]
    aside = [p for p in live if p["score"] >= AMBIGUOUS_SCORE]
    assert queued and aside and len(queued) + len(aside) == len(live)
    assert len(queued) == round(routed.settings.engine.exploration * len(live))  # the explored tasks only


def test_reconcile_makes_the_view_once_when_routing_is_turned_on_later(web, ls, r, context, routed):
    _set_up(web, ls)
    drain(r, context)  # first contact with routing off: the queue view only
    assert ls.views == ["Active learning queue"] and projects.ambiguous_view(r, 1) is None
    for _ in range(2):
        jobqueue.enqueue_reconcile(r, routed.policy)
        drain(r, routed)
    assert ls.views == ["Active learning queue", AMBIGUOUS_VIEW] and projects.ambiguous_view(r, 1) == 2
    assert ls.calls["ensure_view"] == 2  # the queue view at first contact, the Ambiguous view once
