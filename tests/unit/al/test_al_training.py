"""Training on real data, class weights, and the simulation CLI."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend.al import simulate
from backend.al.datasets import clean_text, load_trec, load_tsv, write_tsv
from backend.al.learner import ActiveLearner, EngineConfig
from backend.al.training import class_weights

ROOT = Path(__file__).resolve().parents[3]


def test_learns_a_small_real_agnews_subset_well_above_chance(agnews_pool, tmp_path):
    texts, labels = agnews_pool
    classes = sorted(set(labels))
    learner = ActiveLearner(EngineConfig(), cache_dir=tmp_path)  # the real default encoder
    model = learner.fit(texts[:240], labels[:240], classes)
    test_texts, test_labels = texts[5000:5200], labels[5000:5200]
    pred = learner.predict_proba(model, test_texts).argmax(dim=1)
    accuracy = float((pred == torch.tensor([classes.index(y) for y in test_labels])).float().mean())
    assert accuracy > 0.70, accuracy  # chance is 0.25 on four balanced classes


def test_class_weights_pinned():
    targets = torch.tensor([[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=torch.float32)
    # 4 items, 2 classes present: 4 / (2 * 3) and 4 / (2 * 1); absent class gets 1
    assert class_weights(targets, False).tolist() == pytest.approx([2 / 3, 2.0, 1.0])
    assert class_weights(targets, True).tolist() == pytest.approx([1.0, 3.0, 1.0])


def test_clean_text_and_trec_loader(tmp_path):
    assert clean_text("Bush #39;s plan\\ today") == "Bush's plan  today"
    src = tmp_path / "t.label"
    src.write_bytes("NUM:date When was Ozzy born ?\nHUM:ind Who is caf\xe9 ?\n".encode("latin-1"))
    texts, labels = load_trec(src)
    assert labels == ["NUM", "HUM"] and texts[1] == "Who is caf\xe9 ?"
    assert load_trec(src, fine=True) == (texts, ["NUM:date", "HUM:ind"])
    write_tsv(tmp_path / "t.tsv", texts, labels)
    assert load_tsv(tmp_path / "t.tsv") == (texts, labels)


def test_load_tsv_names_the_bad_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("good text\tA\nno label here\n")
    with pytest.raises(ValueError, match="bad.tsv:2"):
        load_tsv(bad)


def test_summary_ratio_and_gap():
    rows = []
    for labels, r, m in [(20, 0.5, 0.5), (40, 0.6, 0.7), (60, 0.7, 0.75)]:
        rows += [{"strategy": "random", "seed": 0, "labels": labels, "accuracy": r},
                 {"strategy": "margin", "seed": 0, "labels": labels, "accuracy": m}]
    out = {s["strategy"]: s for s in simulate.summarize(rows, seed_size=20)}
    assert out["margin"]["labels_to_target"] == 40 and out["margin"]["ratio"] == pytest.approx(1.5)
    assert out["random"]["ratio"] == pytest.approx(1.0)
    assert out["margin"]["worst_gap_points"] == pytest.approx(-5.0)


def test_strategy_specs():
    base = EngineConfig()
    assert simulate.strategy_config("default", base) == base
    plain = simulate.strategy_config("bald", base)
    assert plain.strategy == "bald" and plain.exploration == 0 and plain.diversity_clusters == 0
    variant = simulate.strategy_config("margin/power_beta=2/diversity_clusters=5", base)
    assert variant.power_beta == 2.0 and variant.diversity_clusters == 5
    with pytest.raises(ValueError, match="unknown strategy"):
        simulate.strategy_config("coreset", base)
    with pytest.raises(ValueError, match="bad strategy option"):
        simulate.strategy_config("margin/nope=1", base)


def test_simulation_cli_smoke(run_simulation):
    done, out = run_simulation(120, 60, "--strategy", "bald,margin,random,default", "--seed-size", "10",
                               "--batch-size", "10", "--budget", "30", "--seeds", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "curves.csv")))
    assert {r["strategy"] for r in rows} == {"bald", "margin", "random", "default"}
    assert sorted({int(r["labels"]) for r in rows}) == [10, 20, 30]
    assert len(rows) == 4 * 2 * 3
    assert all(0 <= float(r["accuracy"]) <= 1 and 0 <= float(r["macro_f1"]) <= 1 for r in rows)
    assert (out / "curves.png").stat().st_size > 10_000
    assert "labels to reach random's accuracy" in done.stdout


def test_simulation_cli_rejects_bad_arguments(tmp_path):
    cmd = [sys.executable, "-m", "backend.al.simulate", "--pool", str(tmp_path / "missing.tsv"),
           "--test", str(tmp_path / "missing.tsv"), "--out", str(tmp_path / "o")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "error:" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run(cmd + ["--budget", "5", "--seed-size", "10"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "--budget must be >= --seed-size" in done.stderr


def test_schedule_fixed_steps_for_small_sets_early_stopping_for_large():
    from torch import nn

    from backend.al.training import TrainConfig, fit

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 4, generator=g)
    targets = torch.nn.functional.one_hot((x[:, 0] > 0).long(), 2).float()
    small = fit(nn.Linear(4, 2), lambda m, idx: m(x[idx]), 100, targets, False,
                TrainConfig(batch_size=10, tiny_steps=20, min_epochs=5))
    assert small["steps"] == 50 and small["val_loss"] is None  # 5 epochs of 10 batches > 20 steps
    tiny = fit(nn.Linear(4, 2), lambda m, idx: m(x[idx]), 30, targets, False,
               TrainConfig(batch_size=10, tiny_steps=20, min_epochs=5))
    assert tiny["steps"] == 20
    large = fit(nn.Linear(4, 2), lambda m, idx: m(x[idx]), 3000, targets, False,
                TrainConfig(batch_size=100, min_val=2000, max_epochs=3))
    assert large["val_loss"] is not None and large["epochs"] <= 3


def _linear_fit(n: int, config, static: bool):
    from torch import nn

    from backend.al.training import StaticBatches, fit

    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    targets = torch.nn.functional.one_hot((x[:, 0] + 0.3 * x[:, 1] > 0).long(), 2).float()
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    batches = StaticBatches(lambda idx: (x[idx],), lambda m, inputs: m(*inputs), capture=False) if static else None
    stats = fit(model, lambda m, idx: m(x[idx]), n, targets, False, config, static=batches)
    return model, stats


@pytest.mark.parametrize("n, config_kwargs", [(90, {"batch_size": 16, "tiny_steps": 40}),
                                              (2500, {"batch_size": 200, "min_val": 2000, "max_epochs": 4})])
def test_static_batch_steps_do_the_eager_steps_arithmetic(n, config_kwargs):
    """The steps a CUDA graph replays (static buffers, the optimiser's state made by a step at lr 0)
    give the eager steps' weights: fixed steps with a short last batch, and early stopping."""
    from backend.al.training import TrainConfig

    config = TrainConfig(lr=0.05, **config_kwargs)
    eager, eager_stats = _linear_fit(n, config, static=False)
    static, static_stats = _linear_fit(n, config, static=True)
    assert eager_stats == {k: v for k, v in static_stats.items() if k != "graphs"}
    assert static_stats["graphs"] == 2  # full batches and the short last one; validation runs eagerly
    assert torch.allclose(eager.weight, static.weight, atol=1e-6) and torch.allclose(eager.bias, static.bias, atol=1e-6)
    assert eager.weight.grad is not None and static.weight.grad is None  # graphs' gradients let go
    untrained, _ = _linear_fit(n, TrainConfig(lr=0.0, **config_kwargs), static=True)
    assert (untrained.weight - static.weight).abs().max() > 1e-2  # the comparison can tell
