"""A retrain through the real worker hands the project's unlabelled tasks to the learner for
pseudo-labels when PROPAGATION is on, and nothing when it is off (the default)."""

from __future__ import annotations

import dataclasses

import pytest

from backend.al.store import ModelStore
from backend.app import create_app
from tests.integration.workers_helper import drain
from workers.context import WorkerContext


@pytest.mark.parametrize("setting", ["on", "off"])
def test_first_contact_trains_with_the_unlabelled_tasks_only_when_propagation_is_on(setting, ls, r, settings):
    settings = dataclasses.replace(settings, engine=dataclasses.replace(settings.engine, propagation=setting))
    context = WorkerContext.from_settings(settings, client_factory=ls.client)
    web = create_app(settings).test_client()
    assert web.post("/setup", json={"project": "1.17", "schema": ls.label_config}).status_code == 200
    drain(r, context)  # prepare -> cold-start rescore -> first retrain (8 tasks are labelled) -> rescore
    model = ModelStore(settings.model_dir / "models").load(1)
    assert model is not None and model.kind == "linear" and model.n_train == len(ls.annotations)
    if setting == "on":
        assert model.stats["propagation_pool"] == len(ls.tasks) - len(ls.annotations)  # every unlabelled task
        assert model.stats["pseudo_labels"] > 0
    else:
        assert "propagation_pool" not in model.stats and "pseudo_labels" not in model.stats
    assert ls.model_version == ModelStore(settings.model_dir / "models").current(1)  # and it was published
