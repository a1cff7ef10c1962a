"""Pure parts of scoring: predictions to publish from a ranking, new tasks placed in the live order."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from backend.al.learner import Ranking
from backend.labeling import TaskSpec
from workers.scoring import percentile_scores, predictions_to_publish

SPEC = TaskSpec("label", "text", "text", ["pos", "neg"], False)


def _ranking(probs):
    return Ranking(order=torch.tensor([2, 0, 1]), scores=torch.tensor([0.5, 1.0, 0.0]),
                   values=torch.tensor([0.5, 0.1, 0.9]), explored=torch.zeros(3, dtype=torch.bool),
                   probs=probs, strategy="margin")


def test_top_k_predictions_in_priority_order():
    ranking = _ranking(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))
    preds = predictions_to_publish([10, 11, 12], ranking, SPEC, "p1-v0001-abcdef", top_k=2)
    assert [(p["task"], p["score"], p["result"][0]["value"]["choices"]) for p in preds] == [
        (12, 0.0, ["pos"]), (10, 0.5, ["pos"])]
    assert all(p["model_version"] == "p1-v0001-abcdef" for p in preds)
    assert len(predictions_to_publish([10, 11, 12], ranking, SPEC, "v", top_k=0)) == 3


def test_cold_start_predictions_carry_no_label():
    preds = predictions_to_publish([10, 11, 12], _ranking(None), SPEC, "p1-v0000-cold", top_k=0)
    assert [p["task"] for p in preds] == [12, 10, 11] and all(p["result"] == [] for p in preds)


def test_percentile_scores_examples():
    assert percentile_scores([0.1, 0.5, 0.9], [1.0, 0.5, 0.0]) == [0.0, 1 / 3, 1.0]
    assert percentile_scores([], [0.3]) == [0.0]


@given(st.lists(st.floats(0, 1), max_size=30), st.lists(st.floats(0, 1), min_size=2, max_size=10))
def test_more_informative_never_scores_later(pool, new):
    scores = percentile_scores(pool, new)
    assert all(0.0 <= s <= 1.0 for s in scores)
    ranked = sorted(zip(new, scores, strict=True))
    assert all(a[1] >= b[1] for a, b in zip(ranked, ranked[1:], strict=False))  # higher value -> lower (sooner) score
