"""Model kinds as peers: the registry, a test-only extra kind, checkpoints, a torch-free config."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from backend.al import acquisition
from backend.al.config import STRATEGIES, EngineConfig
from backend.al.kinds import KINDS, kind_class
from backend.al.kinds.base import Model
from backend.al.learner import ActiveLearner
from backend.al.store import ModelStore

TEXTS = ["stocks fell sharply today", "the team won the cup final", "new chip doubles battery life",
         "election results are in", "quarterly profits beat forecasts", "striker scores twice"]
LABELS = ["Business", "Sports", "Sci/Tech", "World", "Business", "Sports"]
CLASSES = ["Business", "Sci/Tech", "Sports", "World"]


def test_every_registered_kind_loads_and_names_itself():
    for name in KINDS:
        assert kind_class(name).name == name
    with pytest.raises(ValueError, match="unknown model kind 'nope'"):
        kind_class("nope")
    with pytest.raises(ValueError, match="mode must be one of head, full"):
        EngineConfig(mode="nope")


def test_a_new_kind_is_one_module_and_one_registry_line(monkeypatch, tiny_bert, tmp_path):
    monkeypatch.setitem(KINDS, "centroid", "tests.unit.al.centroid_kind")
    learner = ActiveLearner(EngineConfig(encoder=str(tiny_bert), mode="centroid", mc_samples=6), tmp_path)
    model = learner.fit(TEXTS, LABELS, CLASSES)
    assert model.kind == "centroid"
    store = ModelStore(tmp_path / "models")
    loaded = store.load(1, store.save(1, model))
    probs = learner.mc_probs(loaded, TEXTS)
    assert probs.shape == (6, 6, 4) and probs.std(dim=1).max() > 0
    ranking = learner.rank(loaded, TEXTS)
    assert torch.equal(torch.sort(ranking.order).values, torch.arange(6))
    # A head learner scores a saved centroid model with the model's own kind.
    head = ActiveLearner(EngineConfig(encoder=str(tiny_bert), mc_samples=6), tmp_path)
    assert torch.equal(head.mc_probs(loaded, TEXTS), probs)


def test_format_1_checkpoints_still_load(tmp_path):
    old = {"format": 1, "classes": ["a", "b"], "multilabel": False, "encoder": "enc", "mode": "head",
           "state": {"w": torch.ones(2)}, "n_train": 4,
           "meta": {"dim": 8, "hidden": 16, "dropout": 0.3, "warm_start": False, "steps": 200}}
    model = Model.from_dict(old)
    assert model.kind == "head" and model.arch == {"dim": 8, "hidden": 16, "dropout": 0.3}
    assert model.stats == {"warm_start": False, "steps": 200}
    assert Model.from_dict(model.to_dict()) == model


def test_strategy_names_match_the_functions():
    assert tuple(acquisition.STRATEGIES) == STRATEGIES


def test_config_and_kind_registry_import_no_torch():
    code = ("import sys; import backend.al.config, backend.al.kinds; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=".").returncode == 0
