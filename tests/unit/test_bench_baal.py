"""bench/baal_side_by_side.py's own pieces: BaaL's batches and the shared seed set (baal itself not needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from backend.al.simulate import run_one

_PATH = Path(__file__).resolve().parents[2] / "bench" / "baal_side_by_side.py"
_spec = importlib.util.spec_from_file_location("baal_side_by_side", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _items(lengths):
    return [(torch.arange(1, n + 1), torch.tensor(i)) for i, n in enumerate(lengths)]


@pytest.mark.parametrize(("padding", "width"), [("max_length", 8), ("longest", 5)])
def test_collate_pads_like_baals_dataset_or_to_the_longest(padding, width):
    batch, labels = bench.Collate(pad_id=0, max_length=8, padding=padding)(_items([3, 5, 1]))
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, width)
    assert batch["attention_mask"].sum(dim=1).tolist() == [3, 5, 1]
    assert batch["input_ids"][0, :3].tolist() == [1, 2, 3] and batch["input_ids"][0, 3:].eq(0).all()
    assert labels.tolist() == [0, 1, 2]


class _SeedSetSeen(Exception):
    pass


class _FirstFit:
    """Stands in for the learner only to capture which texts the simulation labels first."""

    class config:
        ambiguity = False

    def fit(self, texts, labels, classes, previous=None, pool=(), check=None):
        raise _SeedSetSeen(texts)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_baals_loop_starts_from_the_simulations_seed_set(seed):
    texts = [f"text {i}" for i in range(50)]
    pool = (texts, ["a", "b"] * 25)
    with pytest.raises(_SeedSetSeen) as seen:
        run_one(_FirstFit(), pool, (["t"], ["a"]), ["a", "b"], seed, seed_size=6, batch_size=5, budget=20)
    assert [texts[i] for i in bench.seed_set(len(texts), 6, seed)] == seen.value.args[0]


def test_bad_arguments_are_refused_in_one_line(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["curve", "--pool", "p", "--test", "t", "--out", "o", "--budget", "5", "--seed-size", "10"])
    assert "--budget must be >= --seed-size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["speed", "--pool", "p", "--out", "o", "--device", "tpu"])
    assert "--device must be cpu or cuda" in capsys.readouterr().err
