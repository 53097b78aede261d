"""agentd in pieces: config, scheduler (fake clock and timer), backoff, sampler, encoder, API."""

import pytest

from agentd import cli as agentd_cli
from agentd.api import prometheus, route
from agentd.config import AgentdConfig, ConfigError, load_config
from agentd.protocol import encode_heartbeat
from agentd.scheduler import Scheduler, next_due
from agentd.stats import AgentStats, ProcessSampler
from agentd.transport import Backoff
from hbdaemon.protocol import parse_heartbeat, parse_rfc3339
from support.clock import FakeClock

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- config -------------------------------------------------------------------------------

def test_defaults_match_the_design():
    cfg = load_config("/nonexistent", environ={})
    hb = cfg.heartbeat
    assert (hb.transport, hb.socket_path, hb.url, hb.interval, hb.timeout, hb.reconnect_min,
            hb.reconnect_max) == ("unix", "/run/hbdaemon/hbdaemon.sock",
                                  "http://127.0.0.1:8690/heartbeat", 30.0, 5.0, 1.0, 30.0)
    assert (cfg.http.host, cfg.http.port, cfg.log.level) == ("127.0.0.1", 8691, "info")
    assert cfg.effective_agent_id.endswith("-agentd")


def test_packaged_config_holds_exactly_the_defaults():
    cfg = load_config(os.path.join(REPO, "etc/agentd/agentd.yaml"), environ={}, required=True)
    assert cfg == AgentdConfig()


def test_environment_and_go_names_agentd_wins():
    env = {"AGENT_AGENT_ID": "go-name", "AGENT_HEARTBEAT_INTERVAL": "10s", "AGENT_HTTP_PORT": "0",
           "AGENT_LOG_LEVEL": "debug", "AGENT_HEARTBEAT_SOCKET_PATH": "/tmp/daemon.sock"}
    cfg = load_config("/nonexistent", environ=env)
    assert (cfg.agent_id, cfg.heartbeat.interval, cfg.http.port, cfg.log.level,
            cfg.heartbeat.socket_path) == ("go-name", 10.0, 0, "debug", "/tmp/daemon.sock")
    cfg = load_config("/nonexistent", environ=dict(env, AGENTD_AGENT_ID="new-name",
                                                   AGENTD_HEARTBEAT_INTERVAL="5s"))
    assert (cfg.agent_id, cfg.heartbeat.interval) == ("new-name", 5.0)


@pytest.mark.parametrize("text,needle", [
    ("heartbeat: {transport: carrier-pigeon}\n", "heartbeat.transport"),
    ("heartbeat: {interval: 0s}\n", "heartbeat.interval"),
    ("agent_id: 'has space'\n", "agent_id"),
    ("heartbeat: {url: 'ftp://x'}\n", "heartbeat.url"),
    ("heartbeat: {reconnect_min: 1m, reconnect_max: 10s}\n", "must not exceed reconnect_max"),
    ("hearbeat: {}\n", "hearbeat: unknown key"),
])
def test_config_errors_name_the_key(tmp_path, text, needle):
    path = tmp_path / "agentd.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(str(path), environ={})
    assert needle in str(err.value) and str(path) in str(err.value)


def test_go_style_config_flag_and_check_config(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("AGENTD_CONFIG", raising=False)
    path = tmp_path / "agentd.yaml"
    path.write_text("agent_id: from-file\n")
    assert agentd_cli.main(["-config", str(path), "--check-config"]) == 0
    assert "agent from-file" in capsys.readouterr().out
    assert agentd_cli.main([f"-config={path}", "--check-config", "--set", "http.port=x"]) == 2
    assert agentd_cli.main(["-config", str(tmp_path / "missing.yaml"), "--check-config"]) == 2


# -- scheduler ----------------------------------------------------------------------------

def test_next_due_skips_missed_slots_instead_of_bunching():
    assert next_due(100.0, 10.0, 105.0) == 110.0
    assert next_due(100.0, 10.0, 110.0) == 120.0
    assert next_due(100.0, 10.0, 137.5) == 140.0


class FakeTimer:
    armed = []

    def __init__(self, delay, fn):
        self.delay, self.fn, self.cancelled = delay, fn, False
        FakeTimer.armed.append(self)

    def start(self):
        pass

    def cancel(self):
        self.cancelled = True


def run_scheduler(ticks, clock, tick):
    FakeTimer.armed = []
    s = Scheduler(10.0, tick, clock=clock, timer_factory=FakeTimer)
    s.start()
    for advance in ticks:
        timer = FakeTimer.armed[-1]
        clock.advance(timer.delay + advance)
        timer.fn()
    return s


def test_beat_follows_the_deadline_without_drift():
    clock = FakeClock(0.0)
    fired = []
    run_scheduler([0.3] * 5, clock, lambda due: fired.append((clock.now, due)))
    # each firing was 0.3 s late, yet the slots stay on the 10 s grid
    assert [d for _, d in fired] == [True] * 5
    assert [round(t, 1) for t, _ in fired] == [0.3, 10.3, 20.3, 30.3, 40.3]
    assert round(FakeTimer.armed[-1].delay, 1) == 9.7


def test_a_retry_request_fires_early_and_the_slot_still_comes():
    clock = FakeClock(0.0)
    calls = []

    def tick(due):
        calls.append((round(clock.now, 1), due))
        return 2.0 if len(calls) == 1 else None

    run_scheduler([0, 0, 0], clock, tick)
    assert calls == [(0.0, True), (2.0, False), (10.0, True)]


def test_stop_cancels_the_timer():
    clock = FakeClock(0.0)
    s = run_scheduler([], clock, lambda due: None)
    s.stop()
    assert FakeTimer.armed[-1].cancelled


# -- backoff, sampler, encoder ---------------------------------------------------------------

def test_backoff_doubles_with_jitter_within_bounds():
    lows = Backoff(1.0, 30.0, rng=lambda: 0.0)
    assert [lows.next_delay() for _ in range(7)] == [1.0, 1.6, 3.2, 6.4, 12.8, 24.0, 24.0]
    highs = Backoff(1.0, 30.0, rng=lambda: 1.0)
    assert [highs.next_delay() for _ in range(7)] == pytest.approx([1.2, 2.4, 4.8, 9.6, 19.2, 30.0, 30.0])
    highs.reset()
    assert highs.next_delay() == pytest.approx(1.2)


def test_sampler_primes_and_reports_percent_of_the_whole_machine():
    clock, cpu_used = FakeClock(0.0), FakeClock(5.0)
    sampler = ProcessSampler(cpu_time=cpu_used, rss=lambda: 4096, clock=clock, cpu_count=4)
    clock.advance(2.0)
    cpu_used.advance(3.0)  # 1.5 cores busy out of 4
    assert sampler.sample() == (37.5, 4096)
    assert (sampler.cpu, sampler.memory) == (37.5, 4096)


def test_sampler_reports_no_cpu_before_a_whole_window_and_keeps_the_last_figure_after():
    clock, cpu_used = FakeClock(0.0), FakeClock(5.0)
    sampler = ProcessSampler(cpu_time=cpu_used, rss=lambda: 4096, clock=clock, cpu_count=2,
                             min_window=2.4)
    clock.advance(0.005)
    cpu_used.advance(0.005)  # start-up: a whole core for 5 ms
    assert sampler.sample() == (None, 4096)  # not 50 %: no figure yet
    clock.advance(2.995)
    cpu_used.advance(0.055)
    assert sampler.sample() == (pytest.approx(1.0), 4096)  # over the whole 3 s
    clock.advance(0.1)  # a reconnect beat right after: the last figure, the window grows
    cpu_used.advance(0.1)
    assert sampler.sample() == (pytest.approx(1.0), 4096)
    clock.advance(2.9)
    assert sampler.sample() == (pytest.approx(100 * 0.1 / 3.0 / 2), 4096)


def test_a_heartbeat_without_cpu_leaves_the_field_out():
    line = encode_heartbeat("web-1", 4242, "starting", "1.2.3", None, 1 << 20, now=1795811724.5)
    assert b'"cpu"' not in line
    hb = parse_heartbeat(line.rstrip(b"\n"), require_agent_id=True)
    assert hb.cpu == 0.0 and hb.memory == 1 << 20 and not hb.warnings  # the default


def test_sampler_reads_this_process_for_real():
    sampler = ProcessSampler()
    sum(i * i for i in range(200000))
    cpu, rss = sampler.sample()
    assert 0 < cpu <= 100 and 5_000_000 < rss < 500_000_000


def test_encoded_heartbeat_round_trips_through_the_daemons_parser():
    line = encode_heartbeat("web-1", 4242, "running", "1.2.3", 12.345, 1 << 20, now=1795811724.5)
    assert line.endswith(b"\n")
    for require in (True, False):
        hb = parse_heartbeat(line.rstrip(b"\n"), require_agent_id=require)
        assert (hb.agent_id, hb.pid, hb.status, hb.version, hb.cpu, hb.memory) == \
            ("web-1", 4242, "running", "1.2.3", 12.35, 1 << 20)
        assert parse_rfc3339(hb.timestamp) == 1795811724.5


# -- status API -------------------------------------------------------------------------------

class FakeAgent:
    def __init__(self):
        self.clock = FakeClock(0.0)
        self.stats = AgentStats("a1", "1.0", "unix", clock=self.clock, wallclock=lambda: 1795811724.0)
        self.cfg = load_config("/nonexistent", environ={})


def test_health_is_503_until_a_heartbeat_and_after_three_silent_intervals():
    agent = FakeAgent()
    assert route(agent, None, "GET", "/health", {})[0] == 503
    agent.stats.on_success("running", 1.0, 100)
    code, _, doc = route(agent, None, "GET", "/health", {})
    assert code == 200 and doc["status"] == "healthy" and doc["agent_id"] == "a1"
    assert doc["last_heartbeat"] == "2026-11-27T20:35:24.000Z"
    agent.clock.advance(91)
    assert route(agent, None, "GET", "/health", {})[2]["status"] == "unhealthy"


def test_status_has_the_go_fields_and_connection_details():
    agent = FakeAgent()
    agent.stats.on_failure("cannot connect")
    doc = route(agent, None, "GET", "/status", {})[2]
    for field in ("agent_id", "version", "uptime", "heartbeat_count", "heartbeat_failures",
                  "last_heartbeat", "cpu_percent", "memory_bytes", "status", "connected",
                  "transport", "last_error", "consecutive_failures"):
        assert field in doc
    assert (doc["connected"], doc["last_error"], doc["consecutive_failures"]) == (False, "cannot connect", 1)


def test_metrics_are_prometheus_text_or_json_on_request():
    agent = FakeAgent()
    code, ctype, text = route(agent, None, "GET", "/metrics", {})
    assert ctype.startswith("text/plain") and 'agentd_heartbeats_total{agent_id="a1"} 0' in text
    code, ctype, doc = route(agent, None, "GET", "/metrics", {"accept": "application/json"})
    assert ctype == "application/json" and doc["agent_id"] == "a1"
    assert prometheus(agent.stats.snapshot()).count("# TYPE") == 7


def test_reload_route_and_wrong_methods():
    agent = FakeAgent()
    code, _, doc = route(agent, lambda: (True, "ok"), "POST", "/reload", {})
    assert code == 200 and doc["success"] is True and doc["reloaded_at"].endswith("Z")
    assert route(agent, None, "GET", "/reload", {})[0] == 405
    assert route(agent, None, "GET", "/nope", {})[0] == 404
    code, _, doc = route(agent, lambda: (False, "bad"), "POST", "/reload", {})
    assert code == 500 and doc["success"] is False and doc["message"] == "bad"


def test_an_interval_no_timer_can_wait_for_is_a_config_error(tmp_path):
    path = tmp_path / "agentd.yaml"
    path.write_text("heartbeat: {interval: 1e10}\n")
    assert agentd_cli.main(["-config", str(path), "--check-config"]) == 2
    path.write_text("heartbeat: {interval: 24h, reconnect_max: 25h, reconnect_min: 1s}\n")
    assert agentd_cli.main(["-config", str(path), "--check-config"]) == 2
    path.write_text("heartbeat: {interval: 24h}\n")
    assert agentd_cli.main(["-config", str(path), "--check-config"]) == 0


def test_a_callback_that_raises_is_logged_and_the_beat_goes_on(tmp_path, caplog):
    from agentd.agent import HeartbeatSender
    calls = []

    def broken(arg):
        calls.append(arg)
        raise RuntimeError("user code")

    sender = HeartbeatSender("cb", socket_path=str(tmp_path / "none.sock"), interval=30,
                             on_failure=broken)
    sender._started = True  # as start() would, without its timer thread
    assert sender._tick(True) is not None  # no daemon: a retry delay, not an exception
    assert len(calls) == 1 and "heartbeat callback" in caplog.text
    sender.stop()
    assert len(calls) == 2  # the goodbye failed too, and told the callback
    sender.stop()
    assert len(calls) == 2  # once


@pytest.mark.parametrize("text,needle", [
    ("watch: [{agent_id: n}]", "watch[0].agent_id: each watch entry needs exactly one of"),
    ("watch: [{agent_id: n, pidfile: /x, match: y}]", "(got pidfile, match)"),
    ("watch: [{agent_id: n, match: '('}]", "watch[0].match: '(' is not allowed"),
    ("watch: [{pidfile: /x}]", "watch[0].agent_id: required"),
    ("watch: [{agent_id: 'a b', pidfile: /x}]", "watch[0].agent_id"),
    ("watch: [{agent_id: n, match: a}, {agent_id: n, match: b}]", "'n' is already the agent_id of watch[0]"),
    ("agent_id: me\nwatch: [{agent_id: me, match: a}]", "'me' is already agentd's own agent_id"),
    ("watch: [{agent_id: n, unit: 'bad/unit'}]", "watch[0].unit"),
    ("watch: {agent_id: n}", "watch: must be a list"),
])
def test_watch_entries_are_checked_and_errors_name_the_entry(tmp_path, text, needle):
    path = tmp_path / "agentd.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert needle in str(err.value)


def test_a_unit_entry_needs_systemd_on_this_host(tmp_path, monkeypatch):
    from agentd import config
    path = tmp_path / "agentd.yaml"
    path.write_text("watch: [{agent_id: db, unit: postgresql.service}]\n")
    monkeypatch.setattr(config, "SYSTEMD_RUNNING", str(tmp_path / "no-systemd-here"))
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert "does not run systemd" in str(err.value)
    monkeypatch.setattr(config, "SYSTEMD_RUNNING", str(tmp_path))
    assert load_config(str(path)).watch[0].unit == "postgresql.service"


@pytest.mark.parametrize("probe,needle", [
    ("{tcp: 'nohost'}", "watch[0].probe.tcp"),
    ("{tcp: '127.0.0.1:99999'}", "watch[0].probe.tcp"),
    ("{http: 'ftp://x/'}", "watch[0].probe.http"),
    ("{tcp: '127.0.0.1:1', file: /x}", "one of tcp, http or file (got tcp, file)"),
    ("{failures: 0, tcp: '127.0.0.1:1'}", "watch[0].probe.failures"),
    ("{tcp: '127.0.0.1:1', timeout: 1e12}", "watch[0].probe.timeout"),
])
def test_probes_are_checked(tmp_path, probe, needle):
    path = tmp_path / "agentd.yaml"
    path.write_text(f"watch: [{{agent_id: n, match: x, probe: {probe}}}]\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert needle in str(err.value)
