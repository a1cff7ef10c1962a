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
