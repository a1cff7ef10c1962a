"""Webhook payload -> decision (pure)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend import events
from backend.events import EventError, config_fingerprint, decide, parse_project_id


@pytest.mark.parametrize("value, expected", [
    (7, 7), ("7", 7), ("7.1712345678", 7), ({"id": 3}, 3), (" 12 ", 12),
])
def test_parse_project_id(value, expected):
    assert parse_project_id(value) == expected


@pytest.mark.parametrize("value", [None, "", "abc", "x.1", 0, -1, True, {"id": None}, [1], 1.5])
def test_parse_project_id_refuses(value):
    with pytest.raises(EventError):
        parse_project_id(value)


@pytest.mark.parametrize("payload, project", [
    ({"action": "ANNOTATION_CREATED", "project": {"id": 4}, "task": {"id": 1, "project": 9}}, 4),
    ({"action": "ANNOTATION_CREATED", "task": {"id": 1, "project": 5}}, 5),
    ({"action": "ANNOTATION_UPDATED", "annotation": {"id": 1, "project": 6}}, 6),
    ({"action": "START_TRAINING", "project": 8}, 8),
    ({"action": "ANNOTATION_CREATED", "project": {}, "task": {"project": 2}}, 2),
])
def test_project_id_found_wherever_ls_puts_it(payload, project):
    assert decide(payload).project_id == project


def test_annotation_events_are_counted():
    for event in events.COUNTED:
        d = decide({"action": event, "project": {"id": 1}})
        assert (d.action, d.changes) == (events.COUNT, 1)
    bulk = decide({"action": "ANNOTATIONS_DELETED", "project": {"id": 1},
                   "annotations": [{"id": 1}, {"id": 2}, {"id": 3}]})
    assert bulk.changes == 3


def test_start_training_retrains_now():
    assert decide({"action": "START_TRAINING", "project": {"id": 2}}).action == events.RETRAIN


def test_tasks_created_scores_only_valid_new_ids():
    d = decide({"action": "TASKS_CREATED", "project": {"id": 2},
                "tasks": [{"id": 5}, {"id": 3}, {"id": "x"}, {"id": 5}, "junk", {"id": True}]})
    assert (d.action, d.task_ids) == (events.SCORE_NEW, (3, 5))
    assert decide({"action": "TASKS_CREATED", "project": {"id": 2}, "tasks": []}).action == events.IGNORE


def test_project_updated_resets_only_on_changed_config():
    config = "<View><Text name='t' value='$t'/></View>"
    payload = {"action": "PROJECT_UPDATED", "project": {"id": 2, "label_config": config}}
    assert decide(payload).action == events.REMEMBER_CONFIG
    assert decide(payload, known_config=config_fingerprint(config)).action == events.IGNORE
    changed = decide(payload, known_config=config_fingerprint(config + "<!-- v2 -->"))
    assert (changed.action, changed.label_config) == (events.RESET, config)
    no_config = {"action": "PROJECT_UPDATED", "project": {"id": 2, "title": "x"}}
    assert decide(no_config, known_config="abc").action == events.IGNORE


def test_fingerprint_ignores_whitespace_runs():
    assert config_fingerprint("<View>\n  <A/>\n</View>") == config_fingerprint("<View> <A/> </View>")


def test_other_events_are_ignored():
    d = decide({"action": "TASKS_DELETED", "project": {"id": 2}})
    assert (d.action, d.event) == (events.IGNORE, "TASKS_DELETED")


@pytest.mark.parametrize("payload, reason", [
    ([], "JSON object"), ("x", "JSON object"), ({}, "no action"),
    ({"action": "ANNOTATION_CREATED"}, "no project id"),
    ({"action": "ANNOTATION_CREATED", "project": {"id": "abc"}}, "no project id"),
])
def test_malformed_payloads_raise_one_line(payload, reason):
    with pytest.raises(EventError, match=reason) as info:
        decide(payload)
    assert "\n" not in str(info.value)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(
                        st.sampled_from(["action", "project", "task", "annotation", "id", "tasks"]),
                        c, max_size=4), max_leaves=12))
def test_decide_never_crashes_on_junk(payload):
    try:
        d = decide(payload)
    except EventError:
        return
    assert d.project_id > 0 and d.action in {events.IGNORE, events.COUNT, events.RETRAIN,
                                             events.SCORE_NEW, events.RESET, events.REMEMBER_CONFIG}


def test_project_ids_are_ascii_digits_only():
    for value in ("²", "٣", "12²", "７"):
        with pytest.raises(EventError, match="not a number"):
            parse_project_id(value)
