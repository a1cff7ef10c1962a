"""MODEL_MODE=auto: which kind trains, as a pure function of (device type, labels per class), and on
a real learner: the CPU kind without CUDA, full fine-tuning on CUDA once the labelled set warrants it."""

from __future__ import annotations

import statistics

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from backend.al.config import EngineConfig
from backend.al.kinds import AUTO, CPU_KIND, FULL_MIN_MEAN, FULL_MIN_MEDIAN, KINDS, choose_kind
from backend.al.learner import ActiveLearner

WORDS = ["stocks", "fell", "team", "won", "chip", "battery", "election", "profits", "striker", "rain"]


def _labelled(per_class: int, classes: list[str]) -> tuple[list[str], list[str]]:
    texts = [f"{c} {WORDS[(i * 3 + j) % len(WORDS)]} {WORDS[(i + j) % len(WORDS)]} {i}"
             for j, c in enumerate(classes) for i in range(per_class)]
    return texts, [c for c in classes for _ in range(per_class)]


@given(counts=st.lists(st.integers(0, 50), min_size=2, max_size=40))
def test_auto_never_fine_tunes_without_cuda(counts):
    for device in ("cpu", "mps"):
        assert choose_kind(AUTO, device, counts) == CPU_KIND


@given(counts=st.lists(st.integers(0, 50), min_size=2, max_size=40), device=st.sampled_from(["cpu", "cuda"]))
def test_auto_fine_tunes_exactly_when_the_median_class_and_the_mean_are_large_enough(counts, device):
    enough = statistics.median(counts) >= FULL_MIN_MEDIAN and statistics.mean(counts) >= FULL_MIN_MEAN
    assert choose_kind(AUTO, device, counts) == ("full" if device == "cuda" and enough else CPU_KIND)


@given(counts=st.lists(st.integers(0, 50), max_size=10), device=st.sampled_from(["cpu", "cuda"]),
       mode=st.sampled_from(sorted(KINDS)))
def test_a_named_mode_is_always_that_kind(counts, device, mode):
    assert choose_kind(mode, device, counts) == mode


def test_the_thresholds_at_their_edges():
    assert choose_kind(AUTO, "cuda", []) == CPU_KIND
    assert choose_kind(AUTO, "cuda", [8, 8, 8]) == "full"
    assert choose_kind(AUTO, "cuda", [7, 8, 8]) == CPU_KIND  # mean 7.67 < 8
    assert choose_kind(AUTO, "cuda", [2, 11, 11]) == "full"
    # a rare class with no label or one: TREC-6's ABBR early on (run 0 of docs/BENCHMARKS.md's GPU curves)
    assert choose_kind(AUTO, "cuda", [0, 17, 14, 9, 8, 12]) == "full"
    assert choose_kind(AUTO, "cuda", [1, 30, 30]) == "full"
    # most classes with one label or none, however many the others hold: the head's case
    assert choose_kind(AUTO, "cuda", [1, 1, 1, 40, 40]) == CPU_KIND
    assert choose_kind(AUTO, "cuda", [0, 1, 2, 40]) == CPU_KIND  # median 1.5


def test_auto_is_the_default_and_picks_the_cpu_kind_without_cuda(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = EngineConfig(encoder=str(tiny_bert), mc_samples=4)
    assert config.mode == AUTO
    learner = ActiveLearner(config, tmp_path)
    assert learner.device.type == "cpu"
    texts, labels = _labelled(12, ["a", "b", "c"])  # enough for full mode, but no GPU
    model = learner.fit(texts, labels, ["a", "b", "c"])
    assert model.kind == CPU_KIND
    assert learner.mc_probs(model, texts).shape[0] == len(texts)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_fine_tunes_on_cuda_once_the_labelled_set_warrants_it(tiny_bert, tmp_path):
    learner = ActiveLearner(EngineConfig(encoder=str(tiny_bert), mc_samples=4), tmp_path)
    assert learner.device.type == "cuda"
    few_texts, few_labels = _labelled(1, ["a", "b", "c"])
    assert learner.fit(few_texts, few_labels, ["a", "b", "c"]).kind == CPU_KIND
    texts, labels = _labelled(FULL_MIN_MEDIAN + int(FULL_MIN_MEAN), ["a", "b", "c"])
    model = learner.fit(texts, labels, ["a", "b", "c"])
    assert model.kind == "full"
    probs = learner.mc_probs(model, texts[:5])
    assert probs.shape == (5, 4, 3) and torch.isfinite(probs).all()
