"""The embedded stack starts a dead worker again (a bounded number of times); the web process never."""

from __future__ import annotations

import sys

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
