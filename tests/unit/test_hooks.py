"""Hook scheduling: restart-style backoff, suspension, reset on healthy (fake clock, no threads)."""

from hbdaemon.config import HookConfig, RestartConfig
from hbdaemon.events import Event
from hbdaemon.hooks import HookRunner, _Slot, run_hook
from support.clock import FakeClock


class Harness:
    def __init__(self, ok=True, max_retries=3, on=("dead",)):
        self.clock = FakeClock()
        self.ok = ok
        self.ran = []
        self.emitted = []
        self.state = "dead"
        self.runner = HookRunner(
            (HookConfig(on=on, command=("x",)),),
            RestartConfig(max_retries=max_retries, backoff_base=10.0, backoff_max=25.0),
            emit=self.emit, lookup=lambda a: {"state": self.state, "pid": 42},
            clock=self.clock, execute=self.execute, spawn_run=lambda name, fn, *args: fn(*args))
        self.next_id = 1

    def execute(self, hook, ev, record):
        self.ran.append((self.clock.now, ev.to_state))
        return self.ok

    def emit(self, agent, old, new, reason, kind="state"):
        self.emitted.append((agent, kind, reason))

    def event(self, to="dead"):
        self.state = to
        ev = Event(self.next_id, 0.0, "a", "healthy", to, "r")
        self.next_id += 1
        self.runner.on_event(ev)
        return self.runner._dispatch()


def test_a_matching_event_runs_the_hook_at_once():
    h = Harness()
    h.event("dead")
    assert h.ran == [(1000.0, "dead")]


def test_other_states_do_not_run_it():
    h = Harness()
    h.event("no_heartbeat")
    assert h.ran == []


def test_runs_are_spaced_by_exponential_backoff_capped_at_max():
    h = Harness(ok=False, max_retries=10)
    h.event("dead")
    times = []
    for _ in range(80):
        h.clock.advance(1)
        h.runner._dispatch()
    times = [t - 1000.0 for t, _ in h.ran]
    assert times[:5] == [0, 10, 30, 55, 80]  # gaps 10, 20, 25 (capped), 25


def test_suspended_after_max_retries_with_an_event_saying_so():
    h = Harness(ok=True, max_retries=3)
    for _ in range(5):
        h.event("dead")
        h.clock.advance(100)
        h.runner._dispatch()
    assert len(h.ran) == 3
    assert h.emitted and h.emitted[0][1] == "hook_suspended"
    assert "after 3 runs" in h.emitted[0][2]


def test_healthy_resets_backoff_and_suspension():
    h = Harness(ok=True, max_retries=2)
    h.event("dead")
    h.clock.advance(100)
    h.event("dead")
    assert len(h.ran) == 2 and h.emitted
    h.event("healthy")
    h.event("dead")
    assert len(h.ran) == 3


def test_events_during_backoff_coalesce_into_one_run():
    h = Harness(ok=True, max_retries=10)
    h.event("dead")
    h.clock.advance(1)
    h.event("dead")
    h.event("dead")
    h.clock.advance(20)
    h.runner._dispatch()
    assert len(h.ran) == 2


def test_run_hook_passes_the_event_in_the_environment(tmp_path):
    out = tmp_path / "env"
    hook = HookConfig(on=("dead",), command=("/bin/sh", "-c", f'env | grep ^HB_ > "{out}"'))
    ev = Event(7, 1795811724.0, "a-1", "healthy", "dead", "gone")
    assert run_hook(hook, ev, {"pid": 99}) is True
    env = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert env["HB_AGENT_ID"] == "a-1" and env["HB_PID"] == "99" and env["HB_TO"] == "dead"
    assert env["HB_FROM"] == "healthy" and env["HB_REASON"] == "gone"
    assert env["HB_TIME"] == "2026-11-27T20:35:24.000Z"


def test_run_hook_failures_and_timeouts_are_false():
    ev = Event(1, 0.0, "a", "healthy", "dead", "r")
    assert run_hook(HookConfig(on=("dead",), command=("/bin/false",)), ev, {}) is False
    assert run_hook(HookConfig(on=("dead",), command=("/nonexistent/hook",)), ev, {}) is False
    assert run_hook(HookConfig(on=("dead",), command=("/bin/sleep", "30"), timeout=0.2), ev, {}) is False


def test_forgetting_an_agent_frees_its_hook_slots():
    runner = HookRunner((HookConfig(on=("dead",), command=("/bin/true",)),), RestartConfig(),
                        emit=lambda *a, **k: None, lookup=lambda agent: None)
    runner.on_event(Event(1, 0.0, "a", "healthy", "dead", "x"))
    runner.on_event(Event(2, 0.0, "b", "healthy", "dead", "x"))
    assert set(runner._slots) == {"a", "b"}
    runner.on_event(Event(3, 0.0, "a", "dead", "dead", "forgotten on request", kind="forgotten"))
    assert set(runner._slots) == {"b"}


def test_a_reload_that_removes_a_hook_while_it_runs_breaks_nothing():
    h = Harness(ok=False, max_retries=10)
    first = h.runner._hooks[0]
    second = HookConfig(on=("dead",), command=("y",))
    h.runner.configure((first, second), h.runner._restart)

    def execute(hook, ev, record):  # SIGHUP lands while `y` runs: the list gets shorter
        if hook is second and len(h.ran) == 1:
            h.runner.configure((first,), h.runner._restart)
        return h.execute(hook, ev, record)

    h.runner._execute = execute
    h.event("dead")  # both run and fail; `y` would retry at index 1
    for _ in range(60):
        h.clock.advance(1)
        h.runner._dispatch()  # raised IndexError here, killing hb-hooks for good
    assert len(h.ran) > 3 and h.runner._running == 0
    assert {hook for slots in h.runner._slots.values() for hook in slots} == {first}


def test_a_run_that_raises_gives_its_place_back():
    h = Harness()

    def broken(hook, ev, record):
        raise RuntimeError("lookup blew up")

    h.runner._execute = broken
    for n in range(12):  # more than MAX_PARALLEL runs that all raise
        h.runner.on_event(Event(n + 1, 0.0, f"a{n}", "healthy", "dead", "r"))
        h.runner._dispatch()
    assert h.runner._running == 0 and h.runner.failures == 12
    h.runner._execute = h.execute
    h.event("dead")
    assert h.ran  # the scheduler still has room


def _reborn(h, saved, wall_shift=0.0, restart=None):
    """A new runner for the same hook after a restart, given what the store kept."""
    runner = HookRunner(h.runner._hooks, restart or h.runner._restart, emit=h.emit,
                        lookup=lambda a: {"state": h.state, "pid": 42}, clock=h.clock,
                        wallclock=lambda: 1_800_000_000.0 + wall_shift, execute=h.execute,
                        spawn_run=lambda name, fn, *args: fn(*args))
    return runner, runner.restore(saved)


def test_a_waiting_retry_is_kept_and_runs_after_a_restart_at_its_time():
    h = Harness(ok=False, max_retries=5)
    h.runner._wall = lambda: 1_800_000_000.0
    h.event("dead")  # ran once and failed: a retry waits 10 s
    kept = h.runner.take_dirty()
    assert len(kept) == 1 and kept[0][0] == "a"
    data = kept[0][2]
    assert data["event"][4] == "dead" and data["attempts"] == 1 and not data["suspended"]
    assert data["next_at"] == 1_800_000_010.0 and data["retry"] is True
    assert h.runner.take_dirty() == []  # nothing changed since
    runner, queued = _reborn(h, kept, wall_shift=4.0)  # restarted 4 s later
    assert queued == 1
    runner._dispatch()
    assert len(h.ran) == 1  # 6 s of its backoff still to wait
    h.clock.advance(6)
    runner._dispatch()
    assert len(h.ran) == 2 and h.ran[1][1] == "dead"


def test_a_healthy_agent_and_a_forgotten_one_leave_nothing_kept():
    h = Harness(ok=False, max_retries=5)
    h.event("dead")
    h.runner.take_dirty()
    h.event("healthy")  # its waiting retry is dropped: the agent left that state
    assert [data for _, _, data in h.runner.take_dirty()] == [None]  # deleted from the store
    h.clock.advance(60)
    h.runner._dispatch()
    assert len(h.ran) == 1
    h.event("dead")
    h.runner.on_event(Event(9, 0.0, "a", "dead", "dead", "x", kind="forgotten"))
    assert [data for _, _, data in h.runner.take_dirty()] == [None]


def test_a_suspension_is_kept_across_a_restart():
    h = Harness(ok=False, max_retries=1)
    h.event("dead")
    kept = h.runner.take_dirty()
    assert kept[0][2]["suspended"] is True and kept[0][2]["event"] is None
    runner, queued = _reborn(h, kept)
    assert queued == 0 and next(iter(runner._slots["a"].values())).suspended


def test_kept_runs_of_a_removed_hook_or_hostile_rows_are_dropped_not_crashed_on():
    h = Harness()
    row = [1, 1.5, "a", "healthy", "dead", "r", "state"]
    good = {"event": row, "attempts": 0, "next_at": 0.0, "suspended": False}
    key = next(iter(h.runner._keys.values()))
    hostile = [{"event": row[:3]}, {"event": [1, "x", "a", "b", "c", "d", "e"], "attempts": 0,
               "next_at": 0.0, "suspended": False}, None, [], "x", {**good, "attempts": -1},
               {**good, "attempts": "1"}, {**good, "next_at": float("nan")},
               {**good, "next_at": "soon"}, {**good, "event": {"id": 1}}]
    saved = [("a", key, data) for data in hostile] + [("a", '["gone", ["z"], ["dead"]]', good)]
    runner, queued = _reborn(h, saved)
    assert queued == 0 and runner._slots == {}
    assert {(a, k, d) for a, k, d in runner.take_dirty()} == {
        ("a", key, None), ("a", '["gone", ["z"], ["dead"]]', None)}  # deleted at the next write
    runner, queued = _reborn(h, [("a", key, {**good, "next_at": 1e300})],
                             restart=RestartConfig(backoff_max=25.0))
    assert queued == 1 and next(iter(runner._slots["a"].values())).next_at <= h.clock.now + 25


def test_a_million_retries_never_overflow_the_backoff():
    h = Harness(ok=False, max_retries=1_000_000)
    slot = _Slot()
    slot.attempts = 5000
    h.runner._slots["a"] = {h.runner._hooks[0]: slot}
    h.runner._finish(h.runner._hooks[0], "a", slot, Event(1, 0.0, "a", "healthy", "dead", "r"),
                     False, "dead")
    assert slot.next_at == h.clock.now + 25.0  # capped at backoff_max, no OverflowError


def test_hostile_numbers_in_a_kept_run_are_skipped():
    h = Harness()
    key = next(iter(h.runner._keys.values()))
    good = {"event": [1, 1.5, "a", "healthy", "dead", "r", "state"], "attempts": 0,
            "suspended": False}
    saved = [("a", key, {**good, "next_at": 10 ** 400}), ("a", key, {**good, "next_at": 1e308})]
    runner, queued = _reborn(h, saved)
    assert queued == 1  # the huge integer skipped; 1e308 is only far away (capped backoff)


def test_a_reload_that_changes_only_a_hooks_timeout_keeps_its_waiting_retry():
    h = Harness(ok=False, max_retries=5)
    h.event("dead")  # failed once: a retry waits
    old = h.runner._hooks[0]
    new = HookConfig(on=old.on, command=old.command, timeout=99.0)
    h.runner.configure((new,), h.runner._restart)
    assert list(h.runner._slots["a"]) == [new] and h.runner._slots["a"][new].pending is not None
    h.clock.advance(11)
    h.runner._dispatch()
    assert len(h.ran) == 2
