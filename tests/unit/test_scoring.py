"""Pure parts of scoring: predictions to publish from a ranking, new tasks placed in the live order."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from backend.al.learner import Ranking
from backend.al.ranking import TaskScores
from backend.labeling import AMBIGUOUS_ABOVE, AMBIGUOUS_SCORE, QUEUE_TOP, TaskSpec
from workers.scoring import (
    load_scores,
    new_task_scores,
    percentile_scores,
    predictions_to_publish,
    published_order,
    save_scores,
    version_record,
)

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


def _routed(n: int, ambiguous: list[int], explored: list[int] = (), routed: bool = True) -> Ranking:
    """A ranking of n items ordered 0..n-1 (item i: priority i / (n - 1)), some marked ambiguous
    and routed behind the others, as the engine orders them (explored items keep their slot)."""
    flags = torch.zeros(n, dtype=torch.bool)
    flags[list(ambiguous)] = True
    seen = torch.zeros(n, dtype=torch.bool)
    seen[list(explored)] = True
    late = flags & ~seen
    order = torch.tensor([i for i in range(n) if not late[i]] + [i for i in range(n) if late[i]])
    scores = torch.empty(n)
    scores[order] = torch.arange(n, dtype=torch.float32) / (n - 1)
    return Ranking(order=order, scores=scores, values=torch.zeros(n), explored=seen,
                   probs=torch.full((n, 2), 0.5), strategy="margin", ambiguous=flags, routed=routed)


def test_set_aside_tasks_are_published_beyond_top_k_in_a_range_of_their_own():
    ranking = _routed(10, ambiguous=[1, 4, 6, 8], explored=[4])  # 4 is explored: it keeps its slot
    assert published_order(ranking, top_k=3) == ([0, 2, 3], [1, 6, 8])
    preds = predictions_to_publish(list(range(100, 110)), ranking, SPEC, "v", top_k=3)
    by_task = {p["task"] - 100: p["score"] for p in preds}
    assert list(by_task) == [0, 2, 3, 1, 6, 8]  # the queued top 3, then every set-aside task
    assert all(0 <= by_task[i] <= QUEUE_TOP for i in (0, 2, 3)) and by_task[0] == 0.0
    assert [by_task[i] for i in (1, 6, 8)] == [AMBIGUOUS_SCORE, (AMBIGUOUS_SCORE + 1) / 2, 1.0]
    assert max(by_task[i] for i in (0, 2, 3)) < AMBIGUOUS_ABOVE < min(by_task[i] for i in (1, 6, 8))
    assert [p["task"] for p in sorted(preds, key=lambda p: p["score"])] == [p["task"] for p in preds]
    # all (top_k = 0): the explored ambiguous task is queued at its slot, the others come last
    assert published_order(ranking, top_k=0) == ([0, 2, 3, 4, 5, 7, 9], [1, 6, 8])
    # the set-aside tasks are capped at top_k too: a publish is at most twice top_k
    assert published_order(ranking, top_k=2) == ([0, 2], [1, 6])


def test_routing_with_nothing_marked_keeps_queued_scores_out_of_the_ambiguous_range():
    preds = predictions_to_publish(list(range(5)), _routed(5, ambiguous=[]), SPEC, "v", top_k=0)
    assert [p["score"] for p in preds] == [0.0, 0.125, 0.25, 0.375, 0.5]  # the view stays empty
    plain = predictions_to_publish(list(range(5)), _routed(5, ambiguous=[], routed=False), SPEC, "v", top_k=0)
    assert [p["score"] for p in plain] == [0.0, 0.25, 0.5, 0.75, 1.0]  # routing off: unchanged


def test_the_audit_records_only_published_explored_tasks():
    ranking = _routed(10, ambiguous=[1, 4, 6, 8], explored=[2, 4, 9])
    record = version_record("v", list(range(100, 110)), ranking, SPEC, top_k=3)
    assert sorted(record.explored) == [102]  # 4 is explored but published 4th; 9 not published
    record = version_record("v", list(range(100, 110)), ranking, SPEC, top_k=0)
    assert sorted(record.explored) == [102, 104, 109]


def test_new_tasks_get_the_range_of_their_mark_with_routing_on():
    def scored(flags):
        return TaskScores(torch.tensor([7, 8]), torch.tensor([0.5, 0.3]), torch.full((2, 2), 0.5), "margin", flags)

    pool = [0.1, 0.5, 0.9]
    assert new_task_scores(pool, scored(None)) == pytest.approx([1 / 3, 2 / 3])  # routing off: percentiles
    routed = new_task_scores(pool, scored(torch.tensor([False, True])))
    assert routed == pytest.approx([QUEUE_TOP / 3, AMBIGUOUS_SCORE + (1 - AMBIGUOUS_SCORE) * 2 / 3])
    none_marked = new_task_scores(pool, scored(torch.tensor([False, False])))
    assert none_marked == pytest.approx([QUEUE_TOP / 3, QUEUE_TOP * 2 / 3])


@pytest.mark.parametrize("flags", [None, torch.zeros(2, dtype=torch.bool)])
def test_a_shard_file_keeps_whether_routing_ran(tmp_path, flags):
    scored = TaskScores(torch.tensor([3, 1]), torch.tensor([0.2, 0.4]), None, "margin", flags)
    save_scores(tmp_path / "s.pt", scored)
    assert load_scores(tmp_path / "s.pt").routed is (flags is not None)  # "none marked" is not "off"
