"""Issue 4: what annotators see in the real Label Studio UI (Playwright + system Chromium).

Against the real LS with the backend connected (as a real process) and a few hundred AG News
tasks: "Label All Tasks" serves the lowest published priority, submitting through the UI
retrains the model and the next task follows the new ranking, the pre-selected choice is the
model's prediction, the Data Manager queue tab lists tasks by priority, "Start Training" on the
Model settings page starts a retrain, and two annotators never get the same task.

Screenshots of every step go to $E2E_SCREENSHOTS (default runs/ui-screenshots).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.e2e.lsserver import REPO, LSApi
from tests.e2e.service import metric, wait_for

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("E2E_SCREENSHOTS", REPO / "runs" / "ui-screenshots"))
POOL = 200
ROUND = 10  # RETRAIN_EVERY of the e2e backend
UI_TIMEOUT = 60_000  # ms


def _require(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(reason + "; CI must run the browser tests", pytrace=False)
    pytest.skip(reason)


class Screens:
    """Numbered screenshots; remembers the last one for failure messages."""

    def __init__(self, folder: Path):
        self.folder, self.count, self.last = folder, 0, None
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)

    def take(self, page, name: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        page.screenshot(path=str(path))
        self.last = path
        return path


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require(False, "playwright is not installed (pip install playwright)")
    _require(Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM} (set CHROMIUM)")
    with sync_playwright() as pw:
        # launch() gives every run a fresh, temporary user-data dir
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def screens(request):
    return Screens(SHOTS / request.node.name)


@pytest.fixture
def ui_logs(ls_server, backend, screens, request):
    """On failure: LS and backend log tails and the last screenshot's path."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        print(ls_server.log_tail())
        print(backend.log_tail())
        print(f"last screenshot: {screens.last}")


@pytest.fixture(scope="module")
def ui_project(ls_server, backend):
    """A 200-task AG News project connected to the backend, cold-start priorities live."""
    api = ls_server.api()
    pid, ids, rows = api.create_agnews_project("UI active learning", POOL, offset=3000)
    api.connect_backend(pid, backend.url)
    wait_for(lambda: live_version(api, pid), 180, what="cold-start priorities")
    labels = {t: label for t, (_, label) in zip(ids, rows, strict=True)}
    texts = {t: text for t, (text, _) in zip(ids, rows, strict=True)}
    return api, pid, labels, texts


HELD: set[int] = set()
"""Tasks shown to a user and left open: LS locks them for that user (TASK_LOCK_TTL) and skips them for others."""


def live_version(api: LSApi, pid: int, other_than: str = "") -> str | None:
    version = api.call("GET", f"/api/projects/{pid}/", params={"include": "id,model_version"})["model_version"]
    return version if version and re.fullmatch(rf"p{pid}-v\d{{4}}-\w+", version) and version != other_than else None


def published_order(api: LSApi, pid: int, version: str) -> list[int]:
    """All task ids with a prediction of `version`, lowest score first."""
    rows = api.call("GET", "/api/predictions/", params={"project": pid})
    return [task for _, task in sorted((p["score"], p["task"]) for p in rows if p["model_version"] == version)]


def ranking(api: LSApi, pid: int, version: str) -> list[int]:
    """Unlabelled task ids no one holds, lowest published score (= label first) first."""
    tasks = api.call("GET", "/api/tasks", params={"project": pid, "page_size": 100000,
                                                  "include": "id,total_annotations"})["tasks"]
    labelled = {t["id"] for t in tasks if t["total_annotations"]}
    rows = api.call("GET", "/api/predictions/", params={"project": pid})
    skip = labelled | HELD
    scored = [(p["score"], p["task"]) for p in rows if p["model_version"] == version and p["task"] not in skip]
    return [task for _, task in sorted(scored)]


def _page(context):
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT)
    return page


def _left(page, path: str) -> None:
    """Wait until the browser has navigated away from `path` (LS pages never fire `load` offline)."""
    page.wait_for_url(lambda url: path not in url, wait_until="commit")


def _account_form(context, ls, path: str, button: str, email: str, password: str):
    """Fill LS's e-mail/password form at `path`, submit it, and wait to be sent on."""
    page = _page(context)
    page.goto(f"{ls.url}{path}/", wait_until="domcontentloaded")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.get_by_role("button", name=button).click()
    _left(page, path)
    return page


def login(context, ls, email: str, password: str):
    return _account_form(context, ls, "/user/login", "Log in", email, password)


def signup(context, ls, email: str, password: str):
    """A second annotator joins through LS's own sign-up page (open-source LS: one organisation)."""
    return _account_form(context, ls, "/user/signup", "Create Account", email, password)


def open_project(page, ls, pid: int, view: int | None = None) -> None:
    page.goto(f"{ls.url}/projects/{pid}/data" + (f"?tab={view}" if view else ""), wait_until="domcontentloaded")
    page.get_by_text("Label All Tasks").first.wait_for()


def shown_task(page, previous: int | None = None) -> int:
    """Id of the task the labeling stream shows (the "#123" under it), once it differs from `previous`."""
    def current():
        task = page.evaluate("""() => {
            const el = document.querySelector('.lsf-current-task__task-id');
            return el && el.firstChild ? el.firstChild.textContent.trim().replace('#', '') : null; }""")
        return int(task) if task and task.isdigit() and int(task) != previous else None

    task = wait_for(current, UI_TIMEOUT / 1000, interval=0.3, what="the next task in the labeling stream")
    page.locator(".lsf-choice__checkbox").first.wait_for()
    return task


def label_all_tasks(page) -> int:
    page.get_by_text("Label All Tasks").first.click()
    return shown_task(page)


def checked_choices(page) -> list[str]:
    """Labels of the selected choices (the "[1]" hotkey hints stripped)."""
    labels = page.evaluate("""() => Array.from(document.querySelectorAll('.lsf-choice__checkbox input:checked'))
        .map(i => i.closest('.lsf-choice__checkbox').innerText)""")
    return [re.sub(r"\[\d+\]\s*$", "", label).strip() for label in labels]


def submit(page, choice: str, task: int) -> int:
    """Select `choice` (unless pre-selected), submit, and return the id of the next task shown."""
    if choice not in checked_choices(page):
        page.locator(".lsf-choice__checkbox", has_text=re.compile(rf"^{re.escape(choice)}")).first.click()
    assert checked_choices(page) == [choice], f"could not select {choice!r}: {checked_choices(page)}"
    page.get_by_role("button", name="Submit current annotation").click()
    return shown_task(page, previous=task)


def test_label_all_tasks_follows_priorities_and_retrains(ls_server, backend, ui_project, browser, screens,
                                                         ui_logs):
    api, pid, labels, texts = ui_project
    cold = live_version(api, pid)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = login(context, ls_server, ls_server.username, ls_server.password)
    open_project(page, ls_server, pid)
    screens.take(page, "data-manager")

    task = label_all_tasks(page)
    screens.take(page, "first-task")
    assert task == ranking(api, pid, cold)[0], "Label All Tasks must open the lowest-score task"
    assert texts[task][:40] in page.inner_text("body")

    # Submit ROUND labels through the UI; the ROUND-th triggers a retrain.
    for i in range(ROUND):
        task = submit(page, labels[task], task)
        if i == 0:
            screens.take(page, "after-first-submit")
    trained = wait_for(lambda: live_version(api, pid, other_than=cold), 240, what="retrained priorities")
    # The task on screen was handed out under the old ranking (LS keeps it locked for this user);
    # once it is submitted, the stream follows the new ranking.
    expected_next = ranking(api, pid, trained)
    expected_next = [t for t in expected_next if t != task]
    task = submit(page, labels[task], task)
    screens.take(page, "next-task-after-retrain")
    assert task == expected_next[0], "after the retrain the stream must serve the new lowest score"

    # The pre-selected choice is the model's prediction for this task.
    predicted = [p for p in api.predictions(task) if p["model_version"] == trained]
    assert predicted, f"task {task} has no prediction of {trained}"
    choices = predicted[0]["result"][0]["value"]["choices"]
    page.wait_for_timeout(500)
    assert checked_choices(page) == choices, "the pre-annotation must pre-select the predicted label"
    screens.take(page, "pre-annotation")
    HELD.add(task)  # left open: locked for the admin from now on
    context.close()


def test_queue_view_lists_tasks_by_priority(ls_server, backend, ui_project, browser, screens, ui_logs):
    api, pid, _, _ = ui_project
    version = live_version(api, pid)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = login(context, ls_server, ls_server.username, ls_server.password)
    views = api.call("GET", "/api/dm/views/", params={"project": pid})
    view = next(v["id"] for v in views if v["data"].get("title") == "Active learning queue")
    open_project(page, ls_server, pid, view)
    rows = page.locator(".lsf-table__row-wrapper")
    rows.first.wait_for()
    page.wait_for_timeout(1000)
    screens.take(page, "queue-view")
    shown = [row.split("\n")[0].strip() for row in rows.all_inner_texts()[:5]]
    # The tab lists every task with a prediction of the live version (labelled or held ones too)
    expected = published_order(api, pid, version)
    assert shown == [str(t) for t in expected[:5]], "the queue tab must list tasks lowest score first"
    assert all(version in row for row in rows.all_inner_texts()[:5]), "each row must show the model version"
    context.close()


def test_start_training_button_retrains(ls_server, backend, ui_project, browser, screens, ui_logs):
    api, pid, _, _ = ui_project
    before = live_version(api, pid)
    starts = metric(backend.metrics(), "al_webhooks_total", event="START_TRAINING")
    retrains = metric(backend.metrics(), "al_jobs_finished_total", job="retrain")
    known_jobs = {j["id"] for j in backend.project_jobs(pid)}
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = login(context, ls_server, ls_server.username, ls_server.password)
    page.goto(f"{ls_server.url}/projects/{pid}/settings/ml", wait_until="domcontentloaded")
    page.get_by_text("active learning").first.wait_for()
    screens.take(page, "model-settings")
    page.get_by_role("button", name="Machine learning model options").click()
    page.get_by_text("Start Training", exact=True).click()  # the card's menu item...
    page.get_by_role("button", name="Start Training").wait_for()
    screens.take(page, "start-training-dialog")
    page.get_by_role("button", name="Start Training").click()  # ...and the dialog's confirmation
    wait_for(lambda: metric(backend.metrics(), "al_webhooks_total", event="START_TRAINING") == starts + 1,
             30, what="START_TRAINING webhook")
    after = wait_for(lambda: live_version(api, pid, other_than=before), 240, what="priorities of the new model")
    assert metric(backend.metrics(), "al_jobs_finished_total", job="retrain") == retrains + 1
    assert int(after.split("-v")[1][:4]) > int(before.split("-v")[1][:4])
    # The user who pressed the button finds the retrain under GET /jobs?project=<id>.
    new_retrains = [j for j in backend.project_jobs(pid) if j["name"] == "retrain" and j["id"] not in known_jobs]
    assert len(new_retrains) == 1, f"one new retrain job expected for project {pid}: {new_retrains}"
    (job,) = new_retrains
    assert job["status"] == "finished" and job["ended_at"] and job["error"] is None, job
    assert "START_TRAINING" in job["description"]
    context.close()


def test_two_annotators_get_different_top_tasks(ls_server, backend, ui_project, browser, screens, ui_logs):
    api, pid, _, _ = ui_project
    version = live_version(api, pid)
    top = ranking(api, pid, version)[:2]
    first = browser.new_context(viewport={"width": 1280, "height": 800})
    second = browser.new_context(viewport={"width": 1280, "height": 800})
    stamp = int(time.time())
    page_a = signup(first, ls_server, f"annotator-a-{stamp}@example.com", "annotator-pass-1234")
    page_b = signup(second, ls_server, f"annotator-b-{stamp}@example.com", "annotator-pass-1234")
    open_project(page_a, ls_server, pid)
    open_project(page_b, ls_server, pid)
    task_a = label_all_tasks(page_a)
    task_b = label_all_tasks(page_b)
    HELD.update((task_a, task_b))
    screens.take(page_a, "annotator-a")
    screens.take(page_b, "annotator-b")
    assert task_a != task_b, "two annotators must never get the same task at the same time"
    assert {task_a, task_b} == set(top), f"both must get top-priority tasks {top}, got {task_a}, {task_b}"
    first.close()
    second.close()
