"""The simulation's label noise, stopping report and ambiguity variants."""

import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from backend.al import simulate
from backend.al.config import EngineConfig
from backend.al.stopping import DIMINISHING, KEEP_LABELLING, STOP

ROOT = Path(__file__).resolve().parents[3]
CLASSES = ["a", "b", "c", "d"]


def test_ambiguity_variants_parse_on_and_off():
    base = EngineConfig()
    assert simulate.strategy_config("entropy/ambiguity=on", base).ambiguity is True
    assert simulate.strategy_config("default/ambiguity=on", base) == EngineConfig(ambiguity=True)
    assert simulate.strategy_config("default/ambiguity=off", base).ambiguity is False
    assert simulate.strategy_config("margin/ambiguity=true/ambiguity_bald=0.01", base).ambiguity_bald == 0.01
    with pytest.raises(ValueError, match="on/off"):
        simulate.strategy_config("margin/ambiguity=maybe", base)


def test_noisy_answers_flip_the_asked_share_to_other_classes_seeded():
    labels = [CLASSES[i % 4] for i in range(4000)]
    assert simulate.noisy_answers(labels, CLASSES, 0.0, seed=1) == labels
    noisy = simulate.noisy_answers(labels, CLASSES, 0.1, seed=1)
    flipped = [(y, z) for y, z in zip(labels, noisy, strict=True) if y != z]
    assert 0.08 < len(flipped) / len(labels) < 0.12
    assert set(Counter(z for _, z in flipped)) == set(CLASSES)  # wrong answers spread over the classes
    assert noisy == simulate.noisy_answers(labels, CLASSES, 0.1, seed=1)
    assert noisy != simulate.noisy_answers(labels, CLASSES, 0.1, seed=2)
    with pytest.raises(ValueError):
        simulate.noisy_answers(labels, CLASSES, 1.0, seed=1)


def _row(labels, accuracy, kappa, state, items=0, correct=0, strategy="default", seed=0):
    return {"strategy": strategy, "seed": seed, "labels": labels, "accuracy": accuracy, "kappa": kappa,
            "audit_items": items, "audit_correct": correct, "state": state}


def test_stopping_points_find_the_first_stop_and_the_gap():
    rows = [_row(20, 0.60, None, KEEP_LABELLING), _row(30, 0.70, 0.90, KEEP_LABELLING),
            _row(40, 0.75, 0.995, KEEP_LABELLING), _row(50, 0.78, 0.995, DIMINISHING, 10, 8),
            _row(60, 0.79, 0.996, STOP, 20, 16), _row(70, 0.80, 0.999, STOP, 21, 17)]
    [point] = simulate.stopping_points(rows)
    assert (point["stop_labels"], point["stop_accuracy"]) == (60, 0.79)
    assert point["stop_gap_points"] == pytest.approx(1.0) and point["stop_audit"] == pytest.approx(0.8)
    assert point["diminishing_labels"] == 50
    assert point["stable_labels"] == 60  # three kappas >= 0.99: after the rounds at 40, 50 and 60 labels
    assert (point["final_labels"], point["final_accuracy"]) == (70, 0.80)


def test_stopping_points_without_a_stop():
    [point] = simulate.stopping_points([_row(20, 0.6, None, KEEP_LABELLING), _row(30, 0.7, 0.5, KEEP_LABELLING)])
    assert point["stop_labels"] is None and point["stop_gap_points"] is None and point["stable_labels"] is None


def test_simulation_cli_with_noise_stopping_and_ambiguity(run_simulation):
    done, out = run_simulation(100, 40, "--strategy", "default,entropy/ambiguity=on", "--seed-size", "10",
                               "--batch-size", "10", "--budget", "50", "--seeds", "1", "--label-noise", "0.1",
                               "--stopping", "--stop-set", "50")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "curves.csv")))
    assert len(rows) == 2 * 5 and {r["state"] for r in rows} <= {KEEP_LABELLING, DIMINISHING, STOP}
    assert rows[0]["kappa"] == "" and all(-1 <= float(r["kappa"]) <= 1 for r in rows[1:5])
    default_audit = [int(r["audit_items"]) for r in rows if r["strategy"] == "default"]
    assert default_audit == sorted(default_audit) and default_audit[-1] >= 3  # one explored task per round
    assert all(r["audit_items"] == "0" for r in rows if r["strategy"] != "default")  # no exploration, no audit
    points = list(csv.DictReader(open(out / "stopping.csv")))
    assert [p["strategy"] for p in points] == ["default", "entropy/ambiguity=on"]
    assert "stopping rule" in done.stdout


def test_simulation_cli_rejects_bad_noise(tmp_path):
    cmd = [sys.executable, "-m", "backend.al.simulate", "--pool", "p", "--test", "t", "--out", str(tmp_path),
           "--label-noise", "1.5"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--label-noise" in done.stderr


def test_sample_rows_is_a_seeded_subset_that_keeps_pairs():
    from backend.al.datasets import sample_rows

    texts, labels = [f"t{i}" for i in range(100)], [f"y{i}" for i in range(100)]
    a = sample_rows(texts, labels, 30, seed=0)
    assert a == sample_rows(texts, labels, 30, seed=0) and a != sample_rows(texts, labels, 30, seed=1)
    assert len(a[0]) == 30 and len(set(a[0])) == 30
    assert all(y == "y" + t[1:] for t, y in zip(*a, strict=True))


def test_a_stopped_simulation_writes_the_rows_it_measured(agnews_pool, tiny_bert, tmp_path, monkeypatch):
    """`timeout` (SIGTERM) mid-curve: curves.csv holds the finished runs and the stopped run's rows, exit 130."""
    import signal

    from backend.al.datasets import write_tsv

    texts, labels = agnews_pool
    write_tsv(tmp_path / "pool.tsv", texts[:60], labels[:60])
    write_tsv(tmp_path / "test.tsv", texts[6000:6020], labels[6000:6020])
    calls = []

    def run_one(*args, into, **kwargs):
        calls.append(len(calls))
        into += [{"labels": 10 * n, "accuracy": 0.5, "macro_f1": 0.4} for n in (1, 2)]
        if len(calls) == 2:  # the second seed is stopped after two rounds
            signal.raise_signal(signal.SIGTERM)
        return into

    monkeypatch.setattr(simulate, "run_one", run_one)
    before = signal.getsignal(signal.SIGTERM)
    code = simulate.main(["--pool", str(tmp_path / "pool.tsv"), "--test", str(tmp_path / "test.tsv"),
                          "--out", str(tmp_path / "out"), "--encoder", str(tiny_bert), "--seeds", "3",
                          "--strategy", "random", "--cache-dir", str(tmp_path / "cache")])
    assert code == 130 and len(calls) == 2
    rows = list(csv.DictReader(open(tmp_path / "out" / "curves.csv")))
    assert [(r["seed"], r["labels"]) for r in rows] == [("0", "10"), ("0", "20"), ("1", "10"), ("1", "20")]
    assert signal.getsignal(signal.SIGTERM) is before
