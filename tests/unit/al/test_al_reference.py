"""The ``reference`` baseline: the plain loop (logistic regression at scikit-learn's defaults + margin,
top-k) as a kind and as a simulation strategy, run on a real AG News slice."""

from __future__ import annotations

import csv

import pytest
import torch

from backend.al.config import EngineConfig
from backend.al.learner import ActiveLearner
from backend.al.simulate import PLAIN, REFERENCE, strategy_config


def test_the_reference_strategy_is_the_plain_loop():
    config = strategy_config(REFERENCE, EngineConfig())
    assert (config.mode, config.strategy) == ("reference", "margin")
    assert all(getattr(config, k) == v for k, v in PLAIN.items())  # top-k: no exploration, no diversity
    assert strategy_config("reference/mc_samples=3", EngineConfig()).mc_samples == 3
    with pytest.raises(ValueError, match="choose from default, reference"):
        strategy_config("nope", EngineConfig())


def test_the_reference_kind_is_one_unweighted_fit_at_c_1(agnews_pool, tiny_bert, tmp_path):
    texts, labels = agnews_pool[0][:60], agnews_pool[1][:60]
    classes = sorted(set(labels))
    learner = ActiveLearner(EngineConfig(encoder=str(tiny_bert), mode="reference", mc_samples=8), tmp_path)
    model = learner.fit(texts, labels, classes)
    assert model.kind == "reference" and model.arch["l2"] == 1.0 and model.arch["samples"] == 0
    probs = learner.mc_probs(model, agnews_pool[0][100:140])
    assert probs.shape == (40, 1, len(classes))  # T = 1: margin on it is plain margin
    assert torch.allclose(probs.sum(-1), torch.ones(40, 1), atol=1e-5)


def test_the_simulation_runs_reference_beside_the_default_on_real_data(run_simulation):
    done, out = run_simulation(300, 200, "--strategy", "reference,random,default", "--seeds", "1",
                               "--budget", "60")
    assert done.returncode == 0, done.stderr
    with open(out / "curves.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["strategy"] for r in rows} == {"reference", "random", "default"}
    reference = [r for r in rows if r["strategy"] == "reference"]
    assert [int(r["labels"]) for r in reference] == [20, 40, 60]
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in reference)
    assert "reference" in done.stdout and "ratio" in done.stdout
