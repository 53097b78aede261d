"""Guarded components: a loop that raises is logged, counted and started again; one that
stops calling alive() is reported stuck."""

import threading

from hbdaemon import threads
from hbdaemon.threads import Component, alive, problems
from support.clock import FakeClock
from support.wait import wait_for


def test_a_loop_that_raises_is_counted_reported_and_started_again(monkeypatch, caplog):
    monkeypatch.setattr(threads, "RESTART_FIRST", 0.05)
    runs, stop = [], threading.Event()

    def loop():
        runs.append(1)
        if len(runs) <= 2:
            raise ValueError(f"bad pass {len(runs)}")
        stop.wait(10)

    c = Component("hb-test", loop).start()
    try:
        wait_for(lambda: len(runs) == 3, timeout=5, what="the third run")
        assert c.restarts == 2 and c.problem() is None
        assert caplog.text.count("Traceback") == 2 and "ValueError: bad pass 2" in caplog.text
        assert "hb-test failed (2 restarts so far)" in caplog.text
    finally:
        c.stop()
        stop.set()
        c.thread.join(5)
    assert not c.thread.is_alive() and c.problem() is None  # stopped on purpose: no problem


def test_a_component_is_reported_down_while_it_waits_to_restart(monkeypatch):
    monkeypatch.setattr(threads, "RESTART_FIRST", 30.0)
    c = Component("hb-store", lambda: 1 / 0).start()
    try:
        wait_for(lambda: c.failure is not None, timeout=5, what="the failure")
        assert problems([c, None]) == [
            "hb-store is down after ZeroDivisionError: division by zero (restart 1 pending)"]
    finally:
        c.stop()
        c.thread.join(5)


def test_a_loop_that_stops_calling_alive_is_stuck():
    clock = FakeClock()
    go, stop = threading.Event(), threading.Event()

    def loop():
        alive()
        go.set()
        stop.wait(10)  # stuck: no more alive()

    c = Component("hb-health", loop, stuck_after=5.0, clock=clock).start()
    try:
        assert go.wait(5)
        clock.advance(4.0)
        assert c.problem() is None
        clock.advance(2.0)
        assert c.problem() == "hb-health is stuck: no progress for 6s"
    finally:
        c.stop()
        stop.set()
        c.thread.join(5)


def test_a_loop_that_ends_without_being_asked_is_reported():
    c = Component("hb-upstream", lambda: None).start()
    c.thread.join(5)
    assert c.problem() == "hb-upstream has ended"
