"""Label config parsing, annotation targets and prediction JSON."""

import pytest

from backend.labeling import (
    LabelConfigError,
    TaskDataError,
    TaskSpec,
    annotation_target,
    labels_from_probs,
    parse_label_config,
    predictions,
    task_text,
)

SINGLE = """<View>
  <Text name="text" value="$review"/>
  <Choices name="sentiment" toName="text" choice="single-radio">
    <Choice value="Positive"/><Choice value="Negative"/><Choice value="Neutral"/>
  </Choices>
</View>"""
MULTI = SINGLE.replace('choice="single-radio"', 'choice="multiple"')


def test_single_choice_config():
    spec = parse_label_config(SINGLE)
    assert spec == TaskSpec("sentiment", "text", "review", ["Positive", "Negative", "Neutral"], False)


def test_multiple_choice_config():
    assert parse_label_config(MULTI).multilabel is True


def test_default_choice_mode_is_single():
    assert parse_label_config(SINGLE.replace(' choice="single-radio"', "")).multilabel is False


@pytest.mark.parametrize("xml, reason", [
    ("", "empty"),
    ("<View><Text", "not valid XML"),
    ('<View><Text name="t" value="$x"/></View>', "no <Choices>"),
    (SINGLE.replace("</View>", '<Labels name="l" toName="text"><Label value="A"/></Labels></View>'),
     "unsupported control <Labels>"),
    ('<View><Image name="i" value="$img"/><Choices name="c" toName="i"><Choice value="a"/>'
     '<Choice value="b"/></Choices></View>', "only <Text>"),
    (SINGLE.replace('toName="text"', 'toName="nope"'), "points at no tag"),
    (SINGLE.replace('<Choice value="Negative"/><Choice value="Neutral"/>', ""), "at least two"),
    (SINGLE.replace('"Neutral"', '"Positive"'), "duplicate"),
    (SINGLE.replace('value="$review"', 'value="review"'), 'value="$field"'),
    (SINGLE + "", None),
])
def test_unsupported_configs_give_one_line_reasons(xml, reason):
    if reason is None:
        parse_label_config(xml)
        return
    with pytest.raises(LabelConfigError, match=reason.replace("$", r"\$")) as info:
        parse_label_config(xml)
    assert "\n" not in str(info.value)


def test_two_choices_are_refused():
    xml = SINGLE.replace("</View>", '<Choices name="c2" toName="text"><Choice value="a"/>'
                                    '<Choice value="b"/></Choices></View>')
    with pytest.raises(LabelConfigError, match="several"):
        parse_label_config(xml)


def test_task_text_reads_the_configured_field():
    spec = parse_label_config(SINGLE)
    assert task_text({"id": 1, "data": {"review": "good"}}, spec) == "good"
    assert task_text({"id": 1, "data": {"review": 5}}, spec) == "5"
    with pytest.raises(TaskDataError, match="task 2 has no data field 'review'"):
        task_text({"id": 2, "data": {"text": "x"}}, spec)


def test_task_text_refuses_null_and_replaces_what_utf8_cannot_encode():
    spec = parse_label_config(SINGLE)
    with pytest.raises(TaskDataError, match="task 3 has no data field 'review'"):
        task_text({"id": 3, "data": {"review": None}}, spec)
    text = task_text({"id": 4, "data": {"review": "bad \ud800 film \udfff"}}, spec)  # JSON allows these
    assert text == "bad \ufffd film \ufffd" and text.encode("utf-8")
    assert task_text({"id": 5, "data": {"review": "ok \x00 \U0001f600"}}, spec) == "ok \x00 \U0001f600"


def _result(choices, from_name="sentiment"):
    return [{"from_name": from_name, "to_name": "text", "type": "choices", "value": {"choices": choices}}]


def test_annotation_target_single():
    spec = parse_label_config(SINGLE)
    assert annotation_target(_result(["Negative"]), spec) == "Negative"
    assert annotation_target(_result(["Unknown"]), spec) is None
    assert annotation_target(_result(["Positive"], from_name="other"), spec) is None
    assert annotation_target([], spec) is None


def test_annotation_target_multi_keeps_known_classes():
    spec = parse_label_config(MULTI)
    assert annotation_target(_result(["Neutral", "Positive", "x"]), spec) == ["Neutral", "Positive"]
    assert annotation_target(_result([]), spec) == []


def test_labels_from_probs():
    single, multi = parse_label_config(SINGLE), parse_label_config(MULTI)
    assert labels_from_probs([0.2, 0.5, 0.3], single) == ["Negative"]
    assert labels_from_probs([0.7, 0.1, 0.6], multi) == ["Positive", "Neutral"]
    with pytest.raises(ValueError, match="2 probabilities for 3 classes"):
        labels_from_probs([0.5, 0.5], single)


def test_prediction_json_matches_what_ls_imports():
    spec = parse_label_config(SINGLE)
    assert predictions(spec, "p1-v0001-abc", [0.25], [[0.1, 0.2, 0.7]], task_ids=[7]) == [{
        "task": 7,
        "result": [{"from_name": "sentiment", "to_name": "text", "type": "choices",
                    "value": {"choices": ["Neutral"]}}],
        "score": 0.25,
        "model_version": "p1-v0001-abc",
    }]
    assert predictions(spec, "v", [0.0], task_ids=[7])[0]["result"] == []


def test_predictions_for_predict_name_no_task_and_keep_the_order():
    spec = parse_label_config(MULTI)
    served = predictions(spec, "p2-v0003-abc", [0.9, 0.6], [[0.7, 0.1, 0.6], [0.1, 0.2, 0.3]])
    assert [p["result"][0]["value"]["choices"] if p["result"] else [] for p in served] == [
        ["Positive", "Neutral"], []]
    assert all("task" not in p and p["model_version"] == "p2-v0003-abc" for p in served)
    assert [p["score"] for p in served] == [0.9, 0.6]
    with pytest.raises(ValueError):
        predictions(spec, "v", [0.1, 0.2], task_ids=[1])  # one id per score
