"""The embedded stack starts a dead worker again (a bounded number of times); the web process never."""

from __future__ import annotations

import sys

import pytest

from backend import embedded
from backend.embedded import Stack


def _exited(stack: Stack, restart: bool):
    proc = stack.spawn([sys.executable, "-c", "pass"], {}, restart=restart)
    proc.wait()
    return proc


def test_a_dead_worker_is_started_again_a_bounded_number_of_times(monkeypatch):
    monkeypatch.setattr(embedded, "_MAX_RESTARTS", 2)
    stack = Stack()
    dead = _exited(stack, restart=True)
    assert stack.restart(dead) and dead not in stack.processes and len(stack.processes) == 1
    again = stack.processes[0]
    again.wait()
    assert stack.restart(again)
    third = stack.processes[0]
    third.wait()
    assert not stack.restart(third)  # two restarts in the window: the stack gives up
    stack.stop()


def test_the_web_process_is_never_restarted():
    stack = Stack()
    web = _exited(stack, restart=False)
    assert not stack.restart(web) and stack.first_exit() is web
    stack.stop()


def test_clean_ups_get_a_worker_of_their_own(monkeypatch, tmp_path):
    """The loop's workers never take clean-up jobs; one more worker takes only those."""
    from backend import jobqueue
    from backend.settings import Settings

    spawned = []
    monkeypatch.setattr(embedded, "start_redis", lambda model_dir: None)
    monkeypatch.setattr(embedded, "redis_url_of", lambda server: "redis://127.0.0.1:1")
    monkeypatch.setattr(Stack, "spawn", lambda self, cmd, env, restart=False: spawned.append((cmd, restart)))
    embedded.start(Settings(model_dir=tmp_path, embedded_workers=2))
    workers = [cmd for cmd, restart in spawned if restart]
    loop = ",".join(q for q in jobqueue.QUEUES if q != jobqueue.CLEANUP)
    assert [cmd[-2:] for cmd in workers] == [["--queues", loop], ["--queues", loop], ["--queues", jobqueue.CLEANUP]]
    assert all(cmd[1:3] == ["-m", "workers"] for cmd in workers)


def test_a_worker_refuses_unknown_queues(capsys):
    from workers.__main__ import main

    assert main(["--queues", "score,bogus"]) == 2
    assert "choose from" in capsys.readouterr().err


@pytest.mark.parametrize("flags, expected", [([], "ReconcilingWorker"), (["--in-process"], "InProcessWorker")])
def test_in_process_picks_the_worker_that_runs_jobs_without_forking(monkeypatch, flags, expected):
    from rq import SimpleWorker

    import workers.__main__ as cli
    from workers import worker

    assert issubclass(worker.InProcessWorker, SimpleWorker) and issubclass(worker.InProcessWorker,
                                                                          worker.ReconcilingWorker)
    assert not issubclass(worker.ReconcilingWorker, SimpleWorker)
    started = []
    for name in ("InProcessWorker", "ReconcilingWorker"):
        monkeypatch.setattr(cli, name, type(name, (), {
            "__init__": lambda self, queues, **kw: started.append(type(self).__name__),
            "work": lambda self, **kw: None}))
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1")
    assert cli.main(["--burst", *flags]) == 0
    assert started == [expected]
