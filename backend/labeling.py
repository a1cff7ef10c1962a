"""Label config -> task spec, task -> text, annotation -> target, probabilities -> LS predictions.

Pure functions: no HTTP, no Redis, no model. The only supported interface is one
``<Text>`` object labelled by one ``<Choices>`` control (single or multiple choice).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Sequence

# Control tags we cannot learn from; any of them in a config is refused with a clear reason.
_OTHER_CONTROLS = {
    "labels", "hypertextlabels", "paragraphlabels", "rectanglelabels", "polygonlabels",
    "keypointlabels", "brushlabels", "ellipselabels", "timeserieslabels", "videorectangle",
    "textarea", "rating", "taxonomy", "number", "datetime", "ranker", "pairwise", "relations",
    "relation", "rectangle", "polygon", "keypoint", "brush", "ellipse", "magicwand", "list",
}
_SINGLE_MODES = ("single", "single-radio")
_SURROGATES = re.compile("[\ud800-\udfff]")


QUEUE_TOP = 0.5
AMBIGUOUS_SCORE = 0.75
AMBIGUOUS_ABOVE = (QUEUE_TOP + AMBIGUOUS_SCORE) / 2
AMBIGUOUS_VIEW = "Ambiguous"
"""Prediction scores with ambiguity routing on (off by default; priorities are in [0, 1] then).

LS 1.23 drops every prediction whose score is outside [0, 1] ("Score must be between 0.00 and
1.00", logged, the rest imported; tests/e2e/test_ambiguous_view.py), so the set-aside range is
reserved inside it: queued tasks' priorities are scaled into [0, QUEUE_TOP], tasks set aside as
ambiguous get [AMBIGUOUS_SCORE, 1] by their place among themselves. LS's uncertainty sampling
(lowest score first) serves them after every queued task of the version, and the Data Manager
view "Ambiguous" shows the tasks scored above AMBIGUOUS_ABOVE."""


def queued_score(priority: float) -> float:
    """The prediction score of a queued task of priority in [0, 1], with ambiguity routing on."""
    return QUEUE_TOP * min(max(float(priority), 0.0), 1.0)


def set_aside_score(priority: float) -> float:
    """The prediction score of a task set aside as ambiguous whose priority among them is in [0, 1]."""
    return AMBIGUOUS_SCORE + (1.0 - AMBIGUOUS_SCORE) * min(max(float(priority), 0.0), 1.0)


class LabelConfigError(ValueError):
    """The label config is not one this backend can learn (message: one line, shown in LS)."""


class TaskDataError(ValueError):
    """A task lacks the text the label config points at."""


@dataclass(frozen=True)
class TaskSpec:
    """What to learn: the Choices control, the Text it labels and the task data key it reads.

    ``classes`` are what annotation results carry (a choice's ``alias`` when it has one, else its
    ``value``); ``names`` describe them in words, one per class (the choice's ``hint``, else the
    ``value`` LS displays), for the zero-shot cold start.
    """

    from_name: str
    to_name: str
    value_key: str
    classes: list[str]
    multilabel: bool
    names: tuple[str, ...] = field(default=(), compare=False)

    def zero_shot_names(self) -> list[str] | None:
        """The names the cold start ranks and pre-annotates by, or None for multiple choice
        (the zero-shot softmax assumes one answer per text)."""
        if self.multilabel:
            return None
        return list(self.names or self.classes)


def parse_label_config(xml: str) -> TaskSpec:
    """Parse an LS label config; raise :class:`LabelConfigError` unless it is Text + Choices."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("label config is empty")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"label config is not valid XML: {exc}") from None
    tags = list(root.iter())
    others = sorted({t.tag for t in tags if t.tag.lower() in _OTHER_CONTROLS})
    if others:
        raise LabelConfigError(
            f"unsupported control <{others[0]}>: this backend supports only Text + Choices"
        )
    choices = [t for t in tags if t.tag.lower() == "choices"]
    if not choices:
        raise LabelConfigError("label config has no <Choices>: this backend needs Text + Choices")
    if len(choices) > 1:
        raise LabelConfigError("label config has several <Choices>: only one is supported")
    return _spec_from_choices(choices[0], tags)


def _spec_from_choices(control: ET.Element, tags: list[ET.Element]) -> TaskSpec:
    from_name = control.get("name") or ""
    to_name = control.get("toName") or ""
    if not from_name or not to_name:
        raise LabelConfigError("<Choices> needs both name and toName attributes")
    targets = [t for t in tags if t.get("name") == to_name and t is not control]
    if not targets:
        raise LabelConfigError(f"<Choices toName={to_name!r}> points at no tag with that name")
    target = targets[0]
    if target.tag.lower() != "text":
        raise LabelConfigError(f"<Choices> labels a <{target.tag}>: only <Text> is supported")
    value = target.get("value") or ""
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(f"<Text name={to_name!r}> needs value=\"$field\"")
    options = [c for c in control if c.tag.lower() == "choice"]
    # LS writes a choice's alias, when it has one, into the results instead of its value.
    classes = [c.get("alias") or c.get("value") or "" for c in options]
    if any(not c for c in classes):
        raise LabelConfigError("every <Choice> needs a value")
    if len(classes) < 2:
        raise LabelConfigError("<Choices> needs at least two <Choice> options")
    if len(set(classes)) != len(classes):
        raise LabelConfigError("<Choices> has duplicate <Choice> values")
    mode = (control.get("choice") or "single").lower()
    if mode not in _SINGLE_MODES + ("multiple",):
        raise LabelConfigError(f"<Choices choice={mode!r}> is not single, single-radio or multiple")
    names = tuple(c.get("hint") or c.get("value") or c.get("alias") or "" for c in options)
    return TaskSpec(from_name, to_name, value[1:], classes, mode == "multiple", names)


def task_text(task: dict, spec: TaskSpec) -> str:
    """The text to classify: ``task["data"][spec.value_key]`` (non-strings are stringified).

    A missing or null field raises :class:`TaskDataError`. Lone surrogates (JSON allows
    ``"\\ud800"``, UTF-8 cannot encode it) become U+FFFD, so hashing, caching and tokenizing
    the text never fail on it.
    """
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict) or data.get(spec.value_key) is None:
        task_id = task.get("id") if isinstance(task, dict) else None
        raise TaskDataError(f"task {task_id!r:.40} has no data field {spec.value_key!r}")  # repr: one line
    value = data[spec.value_key]
    text = value if isinstance(value, str) else str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = _SURROGATES.sub("\ufffd", text)
    return text


def annotation_target(result: list[dict], spec: TaskSpec) -> str | list[str] | None:
    """The label an annotation result gives the spec's control, or None when it gives none.

    Single choice: the chosen class (None if missing or unknown). Multiple choice: the list of
    chosen known classes (possibly empty, meaning "none of these").
    """
    for region in result or []:
        if not isinstance(region, dict) or region.get("from_name") != spec.from_name:
            continue
        if region.get("type", "choices") != "choices":
            continue
        chosen = (region.get("value") or {}).get("choices")
        if not isinstance(chosen, list):
            continue
        known = [c for c in chosen if c in spec.classes]
        if spec.multilabel:
            return known
        return known[0] if len(known) == 1 else None
    return None


def labels_from_probs(probs: Sequence[float], spec: TaskSpec, threshold: float = 0.5) -> list[str]:
    """Predicted choices from one row of class probabilities (C,): argmax, or all >= threshold."""
    if len(probs) != len(spec.classes):
        raise ValueError(f"got {len(probs)} probabilities for {len(spec.classes)} classes")
    if spec.multilabel:
        return [c for c, p in zip(spec.classes, probs, strict=True) if p >= threshold]
    best = max(range(len(probs)), key=lambda i: probs[i])
    return [spec.classes[best]]


def prediction_result(labels: Sequence[str], spec: TaskSpec) -> list[dict]:
    """LS result regions for chosen labels (empty list when there is nothing to pre-annotate)."""
    if not labels:
        return []
    return [{
        "from_name": spec.from_name,
        "to_name": spec.to_name,
        "type": "choices",
        "value": {"choices": list(labels)},
    }]


def predictions(spec: TaskSpec, version: str, scores: Sequence[float],
                probs: Sequence[Sequence[float]] | None = None,
                task_ids: Sequence[int] | None = None) -> list[dict]:
    """LS predictions, one per score: result, score and model version.

    ``probs`` (N, C) gives each prediction its labels (:func:`labels_from_probs`); without it
    the results are empty (a cold-start order carries no label). With ``task_ids`` each
    prediction names its task, as ``import_predictions`` takes them; without, they are the
    per-task results /predict answers, in the order of the tasks.
    """
    rows = [None] * len(scores) if probs is None else probs
    ids = [None] * len(scores) if task_ids is None else task_ids
    built = []
    for score, row, task_id in zip(scores, rows, ids, strict=True):
        labels = [] if row is None else labels_from_probs(row, spec)
        task = {} if task_id is None else {"task": int(task_id)}
        built.append({**task, "result": prediction_result(labels, spec), "score": float(score),
                      "model_version": version})
    return built
