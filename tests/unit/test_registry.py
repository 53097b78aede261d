"""The health state machine, driven by a fake clock and a fake process table."""

import pytest

from hbdaemon.checker import HealthChecker
from hbdaemon.config import HealthCheckConfig, OverrideConfig
from hbdaemon.health import PolicySet
from hbdaemon.protocol import Heartbeat
from hbdaemon.registry import Peer, Registry
from support.clock import FakeClock


class World:
    """A registry with a fake clock, a fake set of dead pids and a list of events."""

    def __init__(self, **health):
        self.clock = FakeClock()
        self.wall = FakeClock(1_800_000_000.0)
        self.dead_pids = set()
        self.events = []
        self.notes = []  # events of other kinds: (agent_id, kind, reason)
        hc = HealthCheckConfig(**{"heartbeat_timeout": 10.0, "threshold_duration": 5.0,
                                  "recovery_count": 2, **health})
        self.overrides = ()
        self.registry = Registry(PolicySet(hc), self.on_event, clock=self.clock,
                                 wallclock=self.wall, pid_gone=self.gone, wait_gone=self.gone)

    def gone(self, pid, started=None, sleep=None):
        return pid in self.dead_pids

    def on_event(self, agent_id, old, new, reason, kind="state"):
        if kind == "state":
            self.events.append((agent_id, str(old), str(new), reason))
        else:
            self.notes.append((agent_id, kind, reason))

    def advance(self, seconds):
        self.clock.advance(seconds)
        self.wall.advance(seconds)

    def beat(self, agent_id="a", pid=100, transport="unix", conn=1, **fields):
        peer = Peer(conn, pid, 0, 0, None) if transport == "unix" else None
        self.registry.apply(Heartbeat(agent_id, pid, **fields), transport, peer,
                            local=transport == "http")

    def state(self, agent_id="a"):
        return self.registry.get(agent_id)["state"]


def test_first_heartbeat_makes_an_agent_healthy():
    w = World()
    w.beat()
    assert w.state() == "healthy"
    assert w.events == [("a", "unknown", "healthy", "first heartbeat")]


def test_silence_past_the_timeout_is_no_heartbeat_and_a_heartbeat_heals():
    w = World()
    w.beat()
    w.advance(9.9)
    assert w.registry.check() == pytest.approx(w.clock.now + 0.1)
    assert w.state() == "healthy"
    w.advance(0.2)
    w.registry.check()
    assert w.state() == "no_heartbeat"
    assert w.events[-1][3].startswith("no heartbeat for 10.1s")
    w.beat()
    assert w.state() == "healthy"


def test_silent_agent_whose_process_is_gone_is_dead_not_late():
    w = World()
    w.beat(transport="http")
    w.dead_pids.add(100)
    w.advance(11)
    w.registry.check()
    assert w.state() == "dead"


def test_connection_closed_without_stopping_and_pid_gone_is_dead_at_once():
    w = World()
    w.beat(conn=7)
    w.dead_pids.add(100)
    w.registry.connection_closed(7, ["a"])
    assert w.state() == "dead"
    assert "connection closed without stopping" in w.events[-1][3]


def test_connection_closed_with_pid_alive_waits_for_the_timeout():
    w = World()
    w.beat(conn=7)
    w.registry.connection_closed(7, ["a"])
    assert w.state() == "healthy"
    assert w.registry.get("a")["connected"] is False
    w.advance(10.5)
    w.registry.check()
    assert w.state() == "no_heartbeat"


def test_close_of_an_old_connection_after_reconnect_is_ignored():
    w = World()
    w.beat(conn=1)
    w.beat(conn=2)
    w.dead_pids.add(100)
    w.registry.connection_closed(1, ["a"])
    assert w.state() == "healthy"


def test_stopping_heartbeat_is_stopped_and_eof_keeps_it_stopped():
    w = World()
    w.beat(conn=3)
    w.beat(conn=3, status="stopping")
    assert w.state() == "stopped"
    w.dead_pids.add(100)
    w.registry.connection_closed(3, ["a"])
    w.advance(100)
    w.registry.check()
    assert w.state() == "stopped"


def test_over_threshold_needs_the_whole_duration_and_recovery_needs_the_count():
    w = World()
    w.beat(cpu=80.0)
    assert w.state() == "healthy"
    w.advance(3)
    w.beat(cpu=80.0)
    assert w.state() == "healthy"
    w.advance(2)
    w.beat(cpu=90.0)
    assert w.state() == "over_threshold"
    assert w.events[-1][3].startswith("cpu 90.0% > 50%")
    w.advance(1)
    w.beat(cpu=10.0)
    assert w.state() == "over_threshold"
    w.advance(1)
    w.beat(cpu=10.0)
    assert w.state() == "healthy"


def test_a_dip_below_restarts_the_threshold_duration():
    w = World()
    w.beat(memory=600 * 2**20)
    w.advance(4)
    w.beat(memory=1)
    w.advance(0.5)
    w.beat(memory=600 * 2**20)
    w.advance(4)
    w.beat(memory=600 * 2**20)
    assert w.state() == "healthy"
    w.advance(1)
    w.beat(memory=600 * 2**20)
    assert w.state() == "over_threshold"
    assert "memory 600.0MiB" in w.events[-1][3]


def test_overrides_apply_by_glob_first_match_wins():
    w = World()
    hc = HealthCheckConfig(heartbeat_timeout=10.0)
    w.registry.set_policies(PolicySet(hc, (OverrideConfig(match="db-*", heartbeat_timeout=2.0),
                                           OverrideConfig(match="db-1", heartbeat_timeout=50.0))))
    w.beat("db-1")
    w.beat("web")
    w.advance(3)
    w.registry.check()
    assert w.state("db-1") == "no_heartbeat" and w.state("web") == "healthy"
    assert w.registry.get("db-1")["heartbeat_timeout"] == 2.0


def flapping_world() -> World:
    """An agent that went silent and came back twice: 5 changes, flap_threshold 4."""
    w = World(flap_threshold=4, flap_window=60.0)
    w.beat()
    for _ in range(2):
        w.advance(11)
        w.registry.check()
        w.beat()
    return w


def test_flapping_is_reported_on_the_record():
    w = flapping_world()
    assert w.registry.get("a")["flapping"] is True
    assert w.registry.get("a")["recent_changes"] == 5


def test_stalled_checker_grants_grace_instead_of_convicting_everyone():
    w = World(stall_threshold=5.0)
    checker = HealthChecker(w.registry, stall_threshold=5.0, clock=w.clock)
    w.beat("a")
    w.beat("b")
    checker.run_once()
    w.advance(60)  # e.g. SIGSTOP: the loop wakes a minute late
    checker.run_once()
    assert w.state("a") == w.state("b") == "healthy"
    for _ in range(9):  # on time from now on: the fresh timeout runs out normally
        w.advance(1.0)
        checker.run_once()
    assert w.state("a") == "healthy"
    w.advance(1.5)
    checker.run_once()
    assert w.state("a") == "no_heartbeat"


def test_checker_sleeps_until_the_next_deadline_at_most_a_second():
    w = World(heartbeat_timeout=0.3)
    checker = HealthChecker(w.registry, stall_threshold=5.0, clock=w.clock)
    assert checker.run_once() == 1.0
    w.beat()
    assert checker.run_once() == pytest.approx(0.3)


def test_ended_agents_are_forgotten_after_forget_after():
    w = World(forget_after=100.0)
    w.beat(status="stopping")
    w.advance(99)
    w.registry.check()
    assert w.registry.get("a") is not None
    w.advance(2)
    w.registry.check()
    assert w.registry.get("a") is None
    assert ("a", None) in w.registry.take_dirty()


def test_restart_brings_agents_back_as_unknown_with_grace():
    w = World()
    w.beat("a", version="1.2")
    w.beat("s", status="stopping")
    stored = [d for _, d in w.registry.take_dirty()]
    w2 = World()
    w2.registry.load(stored)
    assert w2.state("a") == "unknown" and w2.registry.get("a")["version"] == "1.2"
    assert w2.state("s") == "stopped"
    assert w2.events == [("a", "healthy", "unknown", "daemon restarted; was healthy")]
    w2.advance(9)
    w2.registry.check()
    assert w2.state("a") == "unknown"
    w2.advance(2)
    w2.registry.check()
    assert w2.state("a") == "no_heartbeat"


def test_forget_on_request():
    w = World()
    w.beat()
    assert w.registry.forget("a", "DELETE from 127.0.0.1") == "id_conflict"  # held
    w.registry.connection_closed(1, ["a"])
    assert w.registry.forget("a", "DELETE from 127.0.0.1") is None
    assert w.registry.forget("a") == "unknown_agent"
    assert w.registry.counts()["healthy"] == 0
    assert w.notes == [("a", "forgotten", "forgotten on request by DELETE from 127.0.0.1")]


def test_history_keeps_one_sample_per_step_and_the_last_sixty():
    w = World()
    w.registry.history_step = 10.0
    for i in range(70):
        w.beat(cpu=float(i), memory=i * 1000)
        w.advance(5.0)  # two heartbeats per step: one sample
    hist = w.registry.history(["a"])["a"]
    assert len(hist["cpu"]) == 35 and hist["cpu"][-1] == 68.0 and hist["memory"][-1] == 68000
    for i in range(200):
        w.beat(cpu=1.0)
        w.advance(10.0)
    assert len(w.registry.history(["a"])["a"]["cpu"]) == 60


# -- who may speak for an agent, and how many there may be ---------------------------------

def test_an_id_held_by_a_unix_connection_is_refused_from_http_and_other_connections():
    w = World()
    w.beat("db-1", pid=100, conn=1)
    assert w.registry.admit("db-1", "127.0.0.1") == "id_conflict"
    assert w.registry.apply(Heartbeat("db-1", 1, status="stopping"), "http",
                            remote="127.0.0.1") == "id_conflict"
    assert w.registry.apply(Heartbeat("db-1", 200), "unix", Peer(2, 200, 1000, 1000, None)) \
        == "id_conflict"
    rec = w.registry.get("db-1")
    assert (rec["state"], rec["pid"], rec["connected"]) == ("healthy", 100, True)
    assert w.notes == [("db-1", "id_conflict", "HTTP client 127.0.0.1 sent heartbeats for this "
                        "id, which the Unix connection of pid 100 holds; they are refused")]
    w.dead_pids.add(100)
    w.registry.connection_closed(1, ["db-1"])
    assert w.state("db-1") == "dead"
    assert w.registry.admit("db-1", "127.0.0.1") is None  # free once the holder is gone


def test_the_same_process_may_reconnect_before_its_old_connection_is_seen_closed():
    w = World()
    w.beat("a", pid=100, conn=1)
    w.beat("a", pid=100, conn=2)
    assert w.registry.get("a")["heartbeats"] == 2 and not w.notes


def test_a_full_table_refuses_new_ids_only():
    w = World()
    w.registry.max_agents = 2
    w.beat("a")
    w.beat("b", transport="http")
    assert w.registry.apply(Heartbeat("c", 5), "http") == "max_agents"
    assert w.registry.apply(Heartbeat("a", 100), "unix", Peer(1, 100, 0, 0, None)) is None
    assert len(w.registry) == 2


def test_each_source_gets_its_own_bucket_of_new_ids_refilled_over_a_minute():
    w = World()
    w.registry.limiter.per_minute = 3
    peer = Peer(1, 100, 1000, 1000, None)
    results = [w.registry.apply(Heartbeat(f"u-{i}", 100), "unix", peer) for i in range(5)]
    assert results == [None, None, None, "rate_limited", "rate_limited"]
    assert w.registry.apply(Heartbeat("u-0", 100), "unix", peer) is None  # known: no token
    assert w.registry.admit("h-1", "10.0.0.5") is None  # another source
    w.advance(20)  # a third of a minute: one token back
    assert w.registry.apply(Heartbeat("u-9", 100), "unix", peer) is None
    assert w.registry.apply(Heartbeat("u-10", 100), "unix", peer) == "rate_limited"


def test_the_limiter_forgets_idle_sources_instead_of_growing():
    from hbdaemon.registry import NewAgentLimiter
    clock = FakeClock()
    limiter = NewAgentLimiter(10, clock)
    limiter.MAX_SOURCES = 100
    for i in range(250):
        assert limiter.allow(f"addr:{i}")
        clock.advance(1.0)
    assert len(limiter._buckets) <= 100


def test_no_heartbeat_agents_are_forgotten_after_forget_silent_after():
    w = World(forget_silent_after=50.0)
    w.beat()
    w.advance(11)
    w.registry.check()
    assert w.state() == "no_heartbeat"
    w.advance(49)
    w.registry.check()
    assert w.registry.get("a") is not None
    w.advance(2)
    w.registry.check()
    assert w.registry.get("a") is None
    assert w.notes == [("a", "forgotten", "forgotten after 51s no_heartbeat")]
    assert w.registry.counts()["no_heartbeat"] == 0


def test_counts_follow_every_change():
    w = World()
    for i in range(5):
        w.beat(f"a-{i}", pid=100 + i, conn=i)
    w.beat("a-0", pid=100, conn=0, status="stopping")
    w.advance(11)
    w.registry.check()
    assert w.registry.counts() == {"unknown": 0, "healthy": 0, "over_threshold": 0,
                                   "no_heartbeat": 4, "dead": 0, "stopped": 1}
    w.registry.connection_closed(1, ["a-1"])
    w.registry.forget("a-1")
    assert sum(w.registry.counts().values()) == len(w.registry) == 4


def test_events_are_emitted_outside_the_registry_lock():
    w = World()
    seen = []
    # a sink that reads the registry would deadlock if it were called under its lock
    w.registry._on_event = lambda agent_id, *rest, **kw: seen.append(w.registry.get(agent_id))
    w.beat()
    w.advance(11)
    w.registry.check()
    assert [r["state"] for r in seen] == ["healthy", "no_heartbeat"]


def test_a_health_pass_over_many_agents_holds_the_lock_in_slices(monkeypatch):
    from hbdaemon import registry as registry_module
    monkeypatch.setattr(registry_module, "SLICE", 10)
    w = World()
    for i in range(95):
        w.registry.apply(Heartbeat(f"a-{i}", 1), "http", remote="10.0.0.1")
    holds = []
    real_lock = w.registry._lock

    class CountingLock:
        def __enter__(self):
            holds.append(1)
            return real_lock.__enter__()

        def __exit__(self, *exc):
            return real_lock.__exit__(*exc)
    w.registry._lock = CountingLock()
    w.advance(11)
    w.registry.check()
    assert w.registry.counts()["no_heartbeat"] == 95
    assert len(holds) >= 10  # one list copy, then ten slices of at most ten


def test_forgetting_drops_the_cached_policy():
    w = World()
    w.registry.set_policies(PolicySet(HealthCheckConfig(), (OverrideConfig(match="db-*"),)))
    w.beat("a", transport="http")
    policies = w.registry._policies
    assert "a" in policies._cache  # cached only while there are overrides to match
    w.registry.forget("a")
    assert "a" not in policies._cache


def test_a_connection_that_spoke_for_many_ids_checks_its_process_once():
    w = World()
    checks = []
    w.registry._wait_gone = lambda pid, started=None: checks.append(pid) or pid in w.dead_pids
    for i in range(20):
        w.beat(f"t-{i}", pid=100, conn=4)
    w.registry.connection_closed(4, [f"t-{i}" for i in range(20)] + ["unknown"])
    assert checks == [100]
    assert all(not w.registry.get(f"t-{i}")["connected"] for i in range(20))
    w.dead_pids.add(100)
    for i in range(20):
        w.beat(f"t-{i}", pid=100, conn=5)
    w.registry.connection_closed(5, [f"t-{i}" for i in range(20)])
    assert {w.state(f"t-{i}") for i in range(20)} == {"dead"} and len(checks) == 2


def test_an_id_spoken_for_on_the_socket_stays_its_uids_while_its_agent_is_away():
    w = World()
    w.registry.apply(Heartbeat("svc", 100), "unix", Peer(1, 100, 110, 110, None))
    w.registry.connection_closed(1, ["svc"])  # the agent restarts (or the daemon did)
    grabber = Peer(2, 200, 65534, 65534, None)
    assert w.registry.apply(Heartbeat("svc", 200), "unix", grabber) == "id_conflict"
    assert w.notes[-1][2] == ("a Unix connection of uid 65534 sent heartbeats for this id, "
                              "which uid 110 owns on the socket; they are refused")
    assert w.registry.apply(Heartbeat("svc", 101), "unix", Peer(3, 101, 110, 110, None)) is None
    w.registry.connection_closed(3, ["svc"])
    assert w.registry.apply(Heartbeat("svc", 1), "unix", Peer(4, 1, 0, 0, None)) is None  # root
    assert w.registry.get("svc")["owner_uid"] == 0


def test_loopback_is_one_source_and_ipv6_counts_by_64():
    w = World()
    w.registry.limiter.per_minute = 2
    for i, remote in enumerate(("127.0.0.1", "127.10.0.7", "::1", "::ffff:127.0.0.2")):
        assert w.registry.admit(f"l-{i}", remote) == (None if i < 2 else "rate_limited")
    for i, remote in enumerate(("2001:db8::1", "2001:db8::2", "2001:db8::ffff")):
        assert w.registry.admit(f"v6-{i}", remote) == (None if i < 2 else "rate_limited")
    assert w.registry.admit("other", "2001:db8:0:1::1") is None  # another /64


def test_a_connection_whose_process_is_gone_at_eof_is_dead_in_one_pass():
    w = World()
    for i in range(3):
        w.beat(f"t-{i}", pid=100, conn=4)
    asked = []
    w.registry.connection_closed(4, ["t-0", "t-1", "t-2"],
                                 exited=lambda timeout: asked.append(timeout) or True)
    assert asked == [0.0]  # looked once, without waiting
    assert {w.state(f"t-{i}") for i in range(3)} == {"dead"}
    assert w.events[-1][3] == "process 100 is gone: connection closed without stopping"
    assert not w.registry.get("t-0")["connected"]


def test_a_connection_whose_process_still_runs_at_eof_is_waited_for_then_kept():
    w = World()
    w.beat("a", pid=100, conn=4)
    asked = []
    w.registry.connection_closed(4, ["a"], exited=lambda timeout: asked.append(timeout) and False)
    assert asked[0] == 0.0 and asked[1] > 0  # a look, then one bounded wait
    assert w.state("a") == "healthy" and not w.registry.get("a")["connected"]


def test_intake_waits_at_the_turnstile_while_a_verdict_waits_for_the_lock():
    import threading
    w = World()
    w.beat("a", pid=100, conn=1)
    applied = threading.Event()
    with w.registry._urgent_lock():
        thread = threading.Thread(target=lambda: (w.beat("b", pid=200, conn=2), applied.set()))
        thread.start()
        assert not applied.wait(0.2)  # held back, not queued on the lock ahead of the verdict
    assert applied.wait(5)
    thread.join(5)
    assert w.state("b") == "healthy"


def test_flapping_clears_after_a_steady_flap_window():
    w = flapping_world()
    assert w.registry.get("a")["flapping"] is True
    for _ in range(13):  # steady past the window: a heartbeat every 5 s, no change
        w.advance(5)
        w.beat()
        w.registry.check()
    rec = w.registry.get("a")
    assert rec["flapping"] is False and rec["recent_changes"] == 0 and rec["state"] == "healthy"
    assert "a" in dict(w.registry.take_dirty())  # the cleared flag is stored and scraped


def test_a_local_agent_silent_then_gone_is_dead_at_the_next_pass():
    w = World()
    w.beat("hung", pid=300, conn=3)  # SIGSTOPped past the idle timeout: its socket closed
    w.registry.connection_closed(3, ["hung"])
    w.beat("web", pid=301, transport="http")  # a local HTTP agent
    w.advance(11)
    w.registry.check()
    assert w.state("hung") == w.state("web") == "no_heartbeat"
    w.advance(100)
    w.registry.check()
    assert w.state("hung") == "no_heartbeat"  # still there: stays no_heartbeat
    w.dead_pids.update({300, 301})  # then killed
    w.registry.check()
    assert w.state("hung") == w.state("web") == "dead"
    assert w.events[-1][3].startswith("process 301 is gone (no heartbeat for 111")


def test_restart_grace_is_sized_from_the_agents_observed_interval():
    w = World(heartbeat_timeout=5.0)
    for _ in range(5):  # a 3 s interval against a 5 s timeout, as the Go agent runs
        w.beat("go")
        w.advance(3)
    w.beat("fast")
    assert w.registry.get("go")["interval"] == pytest.approx(3.0)
    stored = [d for _, d in w.registry.take_dirty()]
    w2 = World(heartbeat_timeout=5.0)
    w2.registry.load(stored)
    w2.advance(7.0)  # two intervals and a bit: the Go agent reconnects at its next tick
    w2.registry.check()
    assert w2.state("go") == "unknown" and w2.state("fast") == "no_heartbeat"
    w2.advance(0.6)  # 2.5 intervals
    w2.registry.check()
    assert w2.state("go") == "no_heartbeat"
    next(d for d in stored if d["agent_id"] == "go")["interval"] = 1e12  # a broken file
    w3 = World(heartbeat_timeout=5.0)
    w3.registry.load(stored)
    assert w3.registry.get("go")["interval"] is None


def test_a_local_http_agent_is_judged_against_its_process_start_time():
    w = World()
    assert w.registry.needs_start_time("web", 301)
    w.registry.apply(Heartbeat("web", 301), "http", local=True, started=1000.0)
    assert not w.registry.needs_start_time("web", 301)
    assert w.registry.needs_start_time("web", 302)  # restarted: a new pid
    seen = []
    w.registry._pid_gone = lambda pid, started=None: seen.append((pid, started)) or False
    w.advance(11)
    w.registry.check()
    assert seen == [(301, 1000.0)]


def test_an_http_heartbeat_applied_after_a_newer_one_is_superseded_not_applied():
    w = World()
    # two workers took the agent's two heartbeats; the second (stopping) got applied first
    assert w.registry.apply(Heartbeat("web", 301, status="stopping"), "http", received=2.0) is None
    assert w.registry.apply(Heartbeat("web", 301), "http", received=1.0) == "superseded"
    assert w.state("web") == "stopped" and w.registry.get("web")["heartbeats"] == 1
    assert w.registry.apply(Heartbeat("web", 301), "http", received=3.0) is None
    assert w.state("web") == "healthy"


@pytest.mark.parametrize("field,value", [
    ("check_pid", "x"), ("check_pid", 1.5), ("check_pid", [1]), ("check_started", "x"),
    ("state_since", "x"), ("last_seen", "bad"), ("agent_time", 12), ("agent_time", "bad"),
    ("cpu", "busy"), ("memory", "1"), ("heartbeats", "x"), ("connected", True),
    ("interval", float("nan")), ("local", "yes"), ("summary", [1]), ("state", ["dead"])])
def test_a_stored_field_of_the_wrong_kind_breaks_nothing(field, value):
    from hbdaemon import metrics
    from hbdaemon.events import EventLog
    from hbdaemon.stats import ReceiverStats
    w = World()
    w.registry.load([{"agent_id": "seed", "state": "dead", "pid": 5, field: value},
                     [1, 2], "5", {"agent_id": 7}])
    w.beat("victim", pid=300, transport="http")
    w.dead_pids.add(300)
    w.advance(11)
    w.registry.check()  # the checker still convicts
    assert w.state("victim") == "dead"
    assert w.registry.get("seed")["connected"] is False
    assert [a["agent_id"] for a in w.registry.snapshot()] == ["seed", "victim"]
    metrics.render(w.registry, ReceiverStats(), EventLog(10),
                   lambda: {"max_agents": 1, "queue_depth": 0, "queue_capacity": 1,
                            "unix_connections": 0, "http_connections": 0,
                            "connections_evicted": 0, "hook_runs": 0, "hook_failures": 0,
                            "store_errors": 0})
    assert w.registry.apply(Heartbeat("seed", 5), "http") is None  # and it can be heard again


def test_an_anonymous_program_keeps_one_record_across_restarts_and_two_instances_get_two():
    w = World()
    name = lambda pid, conn: w.registry.name_anonymous("agent@uid0", Peer(conn, pid, 0, 0, None))
    assert name(100, 1) == "agent@uid0"
    w.beat("agent@uid0", pid=100, conn=1)
    assert name(100, 1) == "agent@uid0"        # the holder itself, asking again
    assert name(200, 2) == "agent@uid0.2"      # a second live instance
    w.beat("agent@uid0.2", pid=200, conn=2)
    w.beat("agent@uid0", pid=100, conn=1, status="stopping")
    w.registry.connection_closed(1, ["agent@uid0"])
    assert w.state("agent@uid0") == "stopped"
    assert name(300, 3) == "agent@uid0"        # restarted: takes up its stopped record
    w.beat("agent@uid0", pid=300, conn=3)
    assert w.state("agent@uid0") == "healthy" and w.registry.get("agent@uid0")["pid"] == 300


def test_an_anonymous_name_held_by_a_hung_process_is_not_taken_but_a_dead_ones_is():
    w = World()
    w.beat("agent@uid0", pid=100, conn=1)
    w.registry.connection_closed(1, ["agent@uid0"])  # idle timeout: process 100 still runs
    peer = Peer(2, 200, 0, 0, None)
    assert w.registry.name_anonymous("agent@uid0", peer) == "agent@uid0.2"
    w.dead_pids.add(100)
    assert w.registry.name_anonymous("agent@uid0", peer) == "agent@uid0"


def test_a_pass_looks_each_process_up_once_however_many_agents_it_speaks_for():
    w = World(heartbeat_timeout=10.0)
    asked = []
    w.registry._pid_gone = lambda pid, started=None: asked.append(pid) or False
    for n in range(50):
        w.beat(f"h{n}", pid=500, transport="http")  # one local program, fifty ids
    w.advance(11)
    w.registry.check()
    assert asked == [500]
    assert all(w.state(f"h{n}") == "no_heartbeat" for n in range(50))
    asked.clear()
    w.advance(1)
    w.registry.check()  # watched in no_heartbeat: once a pass, not once an agent
    assert asked == [500]


def test_flapping_is_told_to_the_notice_sink_after_the_lock_not_logged_under_it():
    notices = []
    w = World()
    registry = w.registry

    def sink(label, level, message, *args):
        assert not registry._lock.locked()  # never under the registry lock
        notices.append((label, message % args))

    registry._on_notice = sink
    w.beat()
    for _ in range(3):  # healthy -> no_heartbeat -> healthy ...: 5 changes
        w.advance(11)
        w.registry.check()
        w.beat()
    assert [label for label, _ in notices] == ["flapping"]
    assert notices[0][1].startswith("agent a: flapping (")


def test_a_watched_target_that_exited_is_dead_naming_how_and_comes_back_when_it_runs():
    w = World()
    w.beat("nginx", pid=500, conn=1)
    w.registry.apply(Heartbeat("nginx", 500, status="exited", signal=9, agent_pid=100), "unix",
                     Peer(1, 100, 0, 0, None))
    rec = w.registry.get("nginx")
    assert rec["state"] == "dead" and rec["reason"] == "process 500 was killed by signal 9 (SIGKILL)"
    w.registry.apply(Heartbeat("nginx", 600, agent_pid=100), "unix", Peer(1, 100, 0, 0, None))
    assert w.state("nginx") == "healthy" and w.registry.get("nginx")["pid"] == 600


def test_targets_of_a_watcher_that_died_are_dead_naming_the_watcher():
    w = World()
    peer = Peer(7, 100, 0, 0, None)
    for name, pid in (("nginx", 500), ("redis", 501)):
        w.registry.apply(Heartbeat(name, pid, agent_pid=100), "unix", peer)
    w.dead_pids.add(100)
    w.registry.connection_closed(7, ["nginx", "redis"])
    assert w.state("nginx") == w.state("redis") == "dead"
    assert w.registry.get("redis")["reason"] == ("its watcher (process 100, which spoke for pid "
                                                 "501) is gone: connection closed without stopping")


def test_an_anonymous_program_never_takes_an_http_agents_record():
    w = World()
    w.beat("agent.py@uid0", pid=3999999, transport="http")  # someone posted this id
    peer = Peer(5, 200, 0, 0, None)
    assert w.registry.name_anonymous("agent.py@uid0", peer) == "agent.py@uid0.2"


def test_changes_since_a_cursor_list_state_changes_and_forgotten_ids_not_every_heartbeat():
    w = World()
    w.beat("a", transport="http")
    w.beat("b", transport="http")
    cursor = w.registry.summary()["cursor"]
    assert w.registry.changes(cursor, 10) == ([], [], cursor, False)
    for _ in range(3):
        w.beat("a", transport="http")  # heartbeats that change no state: nothing to poll
    assert w.registry.changes(cursor, 10)[0] == []
    w.beat("c", transport="http")
    w.advance(10.5)
    w.beat("c", transport="http")
    w.registry.check()  # a and b: no_heartbeat
    w.registry.forget("b")
    records, forgotten, following, more = w.registry.changes(cursor, 10)
    assert [r["agent_id"] for r in records] == ["c", "a"] and forgotten == ["b"]
    assert records[1]["state"] == "no_heartbeat" and not more
    assert w.registry.changes(following, 10)[:2] == ([], [])
    first = w.registry.changes(cursor, 1)  # a page at a time, oldest first
    assert [r["agent_id"] for r in first[0]] == ["c"] and first[3] is True
    rest = w.registry.changes(first[2], 1)
    assert [r["agent_id"] for r in rest[0]] == ["a"] and rest[3] is True
    assert w.registry.changes(rest[2], 1)[1:] == (["b"], following, False)


def test_changes_refuse_a_malformed_cursor_and_reset_a_stale_one(monkeypatch):
    w = World()
    w.beat("a", transport="http")
    cursor = w.registry.cursor()
    run, seq = cursor.split(".")
    for bad in ("", "x", f"{run}.", f"{run}.-1", f"{run}.1e3", f"{run}.{'9' * 19}", f"{run}.٣",
                "..", f"{run}x.1"):
        with pytest.raises(ValueError):
            w.registry.changes(bad, 10)
    assert w.registry.changes("00000000.0", 10) is None  # another run of the daemon
    assert w.registry.changes(f"{run}.{int(seq) + 5}", 10) is None  # from the future
    monkeypatch.setattr("hbdaemon.registry.MAX_TOMBSTONES", 3)
    for n in range(6):  # forgotten ids beyond what is kept: an old cursor must start again
        w.beat(f"gone-{n}", transport="http")
        w.registry.forget(f"gone-{n}")
    assert w.registry.changes(cursor, 10) is None
    assert w.registry.changes(w.registry.cursor(), 10) == ([], [], w.registry.cursor(), False)


def test_a_downstream_daemon_s_problems_are_kept_while_they_fail_there():
    w = World()

    def report(problems, total=None, events=()):
        w.registry.apply(Heartbeat("host-b", 100, summary={"dead": len(problems)},
                                   events=[(a, s, "r", 0.0) for a, s in events],
                                   problems=[(a, s, "r", 0.0) for a, s in problems],
                                   problems_total=len(problems) if total is None else total),
                         "http", None)

    report([("db-1", "dead"), ("web-1", "over_threshold")])
    assert w.state("host-b:db-1") == "dead" and w.state("host-b:web-1") == "over_threshold"
    w.advance(1000)
    w.registry.check()  # judged where they run: no deadline here
    assert w.state("host-b:web-1") == "over_threshold"
    report([("db-1", "dead")], total=2)  # a partial list says nothing of the rest
    assert w.state("host-b:web-1") == "over_threshold"
    report([("db-1", "dead")])  # the whole list: web-1 fails no more
    assert w.registry.get("host-b:web-1") is None
    assert ("host-b:web-1", "over_threshold", "unknown") in [e[:3] for e in w.events]
    report([], events=[("db-1", "healthy")])
    assert w.registry.get("host-b:db-1") is None
    assert [e[2] for e in w.events if e[0] == "host-b:db-1"] == ["dead", "healthy"]
    report([("db-1", "dead")])
    assert w.registry.daemon_role("host-b:db-1") == "host-b"
    assert w.registry.daemon_role("host-b") is True
    w.registry.forget("host-b")  # its relayed agents go with it
    assert w.registry.get("host-b:db-1") is None and len(w.registry) == 0


def test_a_routine_heartbeat_is_written_within_a_minute_a_change_at_the_next_pass():
    from hbdaemon.registry import TOUCH_INTERVAL
    w = World()
    w.beat("a", transport="http")
    assert [a for a, _ in w.registry.take_dirty()] == ["a"]  # new: at once
    w.advance(1)
    w.beat("a", transport="http")
    assert w.registry.take_dirty() == []  # only last_seen and the count moved
    w.beat("a", transport="http", version="2.0")
    assert [a for a, _ in w.registry.take_dirty()] == ["a"]  # a new version: at once
    w.beat("a", transport="http", version="2.0")
    assert [a for a, _ in w.registry.take_dirty(everything=True)] == ["a"]  # the last pass
    w.beat("a", transport="http", version="2.0")
    w.advance(TOUCH_INTERVAL)
    stored = w.registry.take_dirty()
    assert [a for a, _ in stored] == ["a"] and stored[0][1]["heartbeats"] == 5


def test_relayed_agents_are_new_ids_of_their_source_and_stay_in_one_namespace():
    from hbdaemon.config import HealthCheckConfig
    clock = FakeClock()
    reg = Registry(PolicySet(HealthCheckConfig()), lambda *a, **k: None, clock=clock,
                   new_agents_per_minute=5)

    def report(sender, problems, events=()):
        reg.apply(Heartbeat(sender, 100, summary={}, events=list(events),
                            problems=[(a, "dead", "r", 0.0) for a in problems],
                            problems_total=len(problems)), "http", None, remote="10.0.0.1")

    report("flood", [f"a{n}" for n in range(20)])  # one source: 5 new ids a minute,
    assert len(reg) == 5  # the sender's own among them
    assert sum(1 for r in reg.snapshot() if r["relayed_by"] == "flood") == 4
    report("a:b", ["c"])  # a sender whose id holds ':' relays nothing
    assert reg.get("a:b:c") is None
    report("a", ["b:c"])  # nor is an agent whose id holds ':' relayed
    assert reg.get("a:b:c") is None
    # an unknown state from a restarted downstream is not a recovery
    clock.advance(61)
    report("x", ["db"])
    assert reg.get("x:db")["state"] == "dead"
    reg.apply(Heartbeat("x", 100, summary={}, events=[("db", "unknown", "restarted", 0.0)]),
              "http", None, remote="10.0.0.2")
    assert reg.get("x:db")["state"] == "dead"


def test_the_counts_kept_as_records_change_match_a_count_of_the_records():
    import random
    rng = random.Random(7)
    w = World()
    for _ in range(3000):
        agent = f"a{rng.randrange(40)}"
        roll = rng.random()
        if roll < 0.5:
            w.beat(agent, transport=rng.choice(["http", "udp", "unix"]), conn=rng.randrange(3),
                   status=rng.choice(["running", "running", "stopping", "exited"]),
                   cpu=rng.choice([1.0, 99.0]))
        elif roll < 0.6:
            w.registry.forget(agent)
        elif roll < 0.7:
            w.registry.connection_closed(rng.randrange(3), [agent], lambda timeout: False)
        elif roll < 0.8:
            w.registry.apply(Heartbeat("host", 1, summary={}, problems=[
                (agent, "dead", "r", 0.0)], problems_total=1), "http", None)
        else:
            w.advance(rng.choice([0.5, 3.0, 11.0]))
            w.registry.check()
    records = w.registry.snapshot()
    summary = w.registry.summary()
    assert summary["total"] == len(records)
    transports = {}
    for r in records:
        transports[r["transport"] or "none"] = transports.get(r["transport"] or "none", 0) + 1
    assert summary["by_transport"] == transports
    failing = sorted(r["agent_id"] for r in records
                     if r["state"] in ("dead", "no_heartbeat", "over_threshold"))
    assert [r["agent_id"] for r in w.registry.page("dead,no_heartbeat,over_threshold")[0]] \
        == failing
    problems = [r for r in records if r["state"] in ("dead", "no_heartbeat")]
    oldest = min(problems, key=lambda r: r["state_since"]) if problems else None
    assert (summary["oldest_problem"] or {}).get("since") == (oldest or {}).get("state_since")
