"""The cold-start rescore publishes zero-shot pre-annotations (real Redis, real worker, packaged MiniLM)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from backend import projects
from tests.integration.fake_ls import FakeLabelStudio
from tests.integration.workers_helper import drain

# alias: what the results carry; hint or value: what the zero-shot cold start embeds.
CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="topic" toName="text">
  <Choice value="Sports" alias="sport"/>
  <Choice value="Business" alias="biz" hint="business, companies and stock markets"/>
  <Choice value="Weather forecast" alias="wx"/>
</Choices></View>"""
LETTERS = CONFIG.replace('value="Sports"', 'value="A"').replace('value="Business"', 'value="B"') \
    .replace('value="Weather forecast"', 'value="C"').replace(' hint="business, companies and stock markets"', "")
TOPICS = {
    "sport": ["the striker scored twice as united won the derby", "tennis champion knocked out in the first round",
              "coach sacked after the team lost five matches in a row", "olympic sprinter sets a new world record"],
    "biz": ["shares fell after the bank reported lower quarterly profits",
            "the retailer agreed a merger worth two billion",
            "oil prices pushed the stock market down", "the company cut its revenue forecast for the year"],
    "wx": ["heavy rain and strong winds expected tomorrow", "a heatwave will bring temperatures of 35 degrees",
           "snow showers and icy roads overnight", "sunny spells with a chance of thunderstorms this afternoon"],
}


@pytest.fixture
def settings(settings):  # noqa: F811 -- the shared fixture, with the packaged encoder: names must mean something
    return replace(settings, engine=replace(settings.engine, encoder="all-MiniLM-L6-v2"))


def _project(config: str) -> FakeLabelStudio:
    fake = FakeLabelStudio(project_id=1, label_config=config)
    fake.add_tasks([text for texts in TOPICS.values() for text in texts])
    return fake


@pytest.fixture
def ls():
    return _project(CONFIG)


def _cold_start(web, ls, r, context) -> dict[int, dict]:
    assert web.post("/setup", json={"project": "1.17", "schema": ls.label_config}).status_code == 200
    drain(r, context)  # prepare -> cold-start rescore
    assert ls.model_version == projects.cold_start_version(1)
    live = {p["task"]: p for p in ls.live_predictions()}
    assert set(live) == set(ls.tasks)
    return live


def test_cold_start_publishes_zero_shot_pre_annotations(web, ls, r, context):
    live = _cold_start(web, ls, r, context)
    truth = {task: topic for task, topic in zip(sorted(ls.tasks), [t for t, texts in TOPICS.items() for _ in texts],
                                                strict=True)}
    chosen = {task: p["result"][0]["value"]["choices"] for task, p in live.items()}
    assert all(len(c) == 1 and c[0] in TOPICS for c in chosen.values())  # the aliases, as results carry them
    right = sum(chosen[task] == [truth[task]] for task in chosen)
    assert right >= 10, f"zero-shot got {right} of 12 right: {chosen}"


def test_names_without_meaning_publish_the_order_without_labels(web, r, context, ls):
    ls.label_config = LETTERS
    live = _cold_start(web, ls, r, context)
    assert all(p["result"] == [] for p in live.values())
    assert sorted(p["score"] for p in live.values())[0] == 0.0
