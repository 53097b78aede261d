"""Configuration: DESIGN.md's keys and defaults, the environment rule, clear errors."""

import os
import shutil
import tempfile

import pytest

from hbdaemon import cli
from hbdaemon.config import Config, ConfigError, load_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write(tmp_path, text, name="hb.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_seed_defaults():
    cfg = load_config("/nonexistent/hbdaemon.yaml", environ={})
    hc = cfg.agent.health_check
    assert (hc.heartbeat_timeout, hc.cpu_threshold, hc.memory_threshold, hc.threshold_duration) == \
        (90.0, 50.0, 524288000, 60.0)
    assert (cfg.manager.heartbeat_interval, cfg.manager.reconnect_interval, cfg.manager.timeout) == \
        (60.0, 10.0, 30.0)
    assert (cfg.http.host, cfg.http.port, cfg.http.workers, cfg.http.queue_size) == ("127.0.0.1", 8690, 8, 1000)
    assert cfg.unix.socket_path == "/run/hbdaemon/hbdaemon.sock"
    assert cfg.unix.socket_mode == 0o660 and cfg.unix.socket_group == "hbdaemon"
    assert cfg.unix.max_connections == 1024 and cfg.unix_idle_timeout == 270.0
    assert cfg.daemon.state_dir == "/var/lib/hbdaemon" and cfg.daemon.shutdown_timeout == 10.0
    assert (cfg.agent.restart.max_retries, cfg.agent.restart.backoff_base, cfg.agent.restart.backoff_max) == (10, 10.0, 60.0)
    assert cfg.agent.health_check.forget_after == 86400.0
    assert cfg.log.level == "info" and cfg.log.file == "" and cfg.log.format == "text"


def test_packaged_config_holds_exactly_the_defaults():
    packaged = load_config(os.path.join(REPO, "etc/hbdaemon/hbdaemon.yaml"), environ={}, required=True)
    assert packaged == Config()


def test_empty_file_is_valid(tmp_path):
    assert load_config(write(tmp_path, ""), environ={}) == Config()


def test_file_values_and_units(tmp_path):
    cfg = load_config(write(tmp_path, """
agent:
  health_check: {heartbeat_timeout: 1m30s, memory_threshold: 512MiB, threshold_duration: 500ms}
unix: {socket_mode: "0600"}
"""), environ={})
    hc = cfg.agent.health_check
    assert (hc.heartbeat_timeout, hc.memory_threshold, hc.threshold_duration) == (90.0, 512 * 2**20, 0.5)
    assert cfg.unix.socket_mode == 0o600


def test_environment_rule_and_precedence(tmp_path):
    path = write(tmp_path, "http: {port: 9000}\nagent: {health_check: {heartbeat_timeout: 10s}}\n")
    env = {"HBDAEMON_HTTP_PORT": "0", "HBDAEMON_AGENT_HEALTH_CHECK_HEARTBEAT_TIMEOUT": "30s",
           "HBDAEMON_UNIX_VERIFY_PEER_PID": "false"}
    cfg = load_config(path, environ=env)
    assert cfg.http.port == 0 and cfg.agent.health_check.heartbeat_timeout == 30.0
    assert cfg.unix.verify_peer_pid is False
    cfg = load_config(path, environ=env, overrides={"http.port": "8123"})
    assert cfg.http.port == 8123


def test_hooks_and_overrides_from_environment_as_yaml():
    cfg = load_config("/nonexistent", environ={
        "HBDAEMON_HOOKS": '[{on: [dead], command: ["/bin/true"]}]',
        "HBDAEMON_AGENT_OVERRIDES": '[{match: "db-*", heartbeat_timeout: 5s}]'})
    assert cfg.hooks[0].command == ("/bin/true",) and cfg.hooks[0].on == ("dead",)
    assert cfg.agent.overrides[0].heartbeat_timeout == 5.0


@pytest.mark.parametrize("text,needle", [
    ("http:\n  prot: 1\n", "line 2: http.prot: unknown key"),
    ("http:\n  port: abc\n", "line 2: http.port: 'abc' is not allowed; expected a whole number from 0 to 65535"),
    ("agent:\n  health_check:\n    heartbeat_timeout: -5s\n", "line 3: agent.health_check.heartbeat_timeout"),
    ("log: {level: loud}\n", "log.level: 'loud' is not allowed; expected one of debug, info, warning, error"),
    ("http: [1, 2]\n", "http: must be a mapping"),
    ("hooks:\n  - on: [dead]\n", "hooks[0].command: required"),
    ("hooks:\n  - on: [sad]\n    command: [x]\n", "hooks[0].on"),
    ("agent: {restart: {backoff_base: 2m, backoff_max: 1m}}\n", "must not exceed backoff_max"),
    ("unix: {socket_path: /tmp/" + "x" * 120 + "}\n", "at most 107 bytes"),
    ("- just a list\n", "top level must be a mapping"),
    ("manager: {url: 'central:8690'}\n", "manager.url: 'central:8690' is not allowed"),
    ("manager: {agent_id: 'my host'}\n", "manager.agent_id: 'my host' is not allowed"),
])
def test_errors_name_file_key_line_and_what_is_allowed(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert path in str(err.value)
    assert needle in str(err.value)


def test_malformed_yaml_gives_line_and_column(tmp_path):
    path = write(tmp_path, "http:\n  port: 1\n bad: [\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert f"{path}, line 3" in str(err.value) and "not valid YAML" in str(err.value)


@pytest.mark.parametrize("text,needle", [
    ("http:\n  port: 1\n  auth_token_file: /etc/t\nlog: {level: info}\nhttp:\n  port: 2\n",
     "line 5: http is given twice (first at line 1)"),  # would drop the token silently
    ("agent:\n  health_check: {heartbeat_timeout: 1s, heartbeat_timeout: 2s}\n",
     "agent.health_check.heartbeat_timeout is given twice"),
    ("hooks:\n  - on: [dead]\n    command: [a]\n    command: [b]\n",
     "line 4: hooks[0].command is given twice (first at line 3)"),
])
def test_a_key_given_twice_is_refused_not_silently_the_last(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert str(path) in str(err.value) and needle in str(err.value)


def test_the_same_key_in_two_mappings_is_no_duplicate(tmp_path):
    cfg = load_config(write(tmp_path, "hooks:\n  - {on: [dead], command: [a]}\n"
                            "  - {on: [healthy], command: [b]}\nunix: {socket_group: ''}\n"),
                      environ={})
    assert [h.command for h in cfg.hooks] == [("a",), ("b",)]


def test_environment_error_names_the_variable():
    with pytest.raises(ConfigError) as err:
        load_config("/nonexistent", environ={"HBDAEMON_HTTP_WORKERS": "lots"})
    assert "environment HBDAEMON_HTTP_WORKERS: http.workers" in str(err.value)


def test_named_file_must_exist():
    with pytest.raises(ConfigError, match="no such file"):
        load_config("/nonexistent/x.yaml", environ={}, required=True)


def test_check_config_exit_codes(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HBDAEMON_CONFIG", raising=False)
    good = write(tmp_path, "unix: {socket_group: ''}\n")
    assert cli.main(["--check-config", "-c", good]) == 0
    assert "configuration OK" in capsys.readouterr().out
    bad = write(tmp_path, "http: {port: 70000}\n", "bad.yaml")
    assert cli.main(["--check-config", "-c", bad]) == 2
    assert "http.port" in capsys.readouterr().err
    assert cli.main(["--check-config", "-c", good, "--set", "nope.key=1"]) == 2
    assert cli.main(["--check-config", "-c", good, "--set",
                     "http.auth_token_file=/nonexistent/token"]) == 2
    assert "cannot read /nonexistent/token" in capsys.readouterr().err


def test_missing_group_is_a_config_error(tmp_path):
    path = write(tmp_path, "unix: {socket_group: no-such-group-hb}\n")
    assert cli.main(["--check-config", "-c", path]) == 2


HUGE = "1" + "0" * 400


@pytest.mark.parametrize("text", [
    f"agent: {{health_check: {{heartbeat_timeout: {HUGE}}}}}",
    f"agent: {{health_check: {{memory_threshold: {HUGE}}}}}",
    f"agent: {{health_check: {{memory_threshold: {'9' * 400}MB}}}}",
    f"agent: {{health_check: {{cpu_threshold: {HUGE}}}}}",
    f"agent: {{max_agents: {HUGE}}}",
    "agent: {health_check: {heartbeat_timeout: .nan}}",
    "http: {tokens: [{token_file: /x}]}",
    "http: {tokens: [{token_file: /x, agents: []}]}",
    "http: {tokens: [{agents: [a-*]}]}",
    "http: {tokens: {token_file: /x, agents: [a]}}",
])
def test_hostile_values_are_clear_errors_not_crashes(tmp_path, text):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), environ={})
    assert "hb.yaml" in str(err.value)


def test_trust_keys_and_defaults(tmp_path):
    cfg = load_config("/nonexistent/hbdaemon.yaml", environ={})
    assert (cfg.agent.max_agents, cfg.agent.new_agents_per_minute) == (50000, 1000)
    assert cfg.agent.health_check.forget_silent_after == 7 * 86400.0 and cfg.http.tokens == ()
    cfg = load_config(write(tmp_path, "http: {tokens: [{token_file: /etc/t, agents: db-*}]}"),
                      environ={"HBDAEMON_AGENT_MAX_AGENTS": "10"})
    assert cfg.http.tokens[0].agents == ("db-*",) and cfg.agent.max_agents == 10


def test_a_missing_token_file_is_named_at_check_time(tmp_path):
    from hbdaemon.daemon import preflight
    cfg = load_config(write(tmp_path, "unix: {socket_group: ''}\n"
                                      "http: {tokens: [{token_file: /nonexistent/t, agents: [a]}]}"),
                      environ={})
    with pytest.raises(ConfigError) as err:
        preflight(cfg)
    assert "http.tokens[0].token_file: cannot read /nonexistent/t" in str(err.value)


def test_unwritable_judges_for_the_service_user_when_root_else_for_the_caller(tmp_path):
    from hbdaemon.logsetup import unwritable
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    assert unwritable(str(tmp_path / "hb.log")) is None
    assert unwritable(str(tmp_path / "new" / "state"), directory=True) is None  # created
    assert "does not exist" in unwritable(str(tmp_path / "new" / "hb.log"))
    if os.geteuid() == 0:  # root may write anywhere: judged for the service's user
        assert unwritable(str(closed / "hb.log"), "nobody") in (
            f"{closed} is not writable by user nobody, whom the service runs as",
            f"{tmp_path.parent} is not reachable (no search permission) by user nobody, "
            "whom the service runs as")  # pytest's base directory is 0700
        top = tempfile.mkdtemp(dir="/tmp")  # /tmp is searchable by all
        try:
            open_dir = os.path.join(top, "open")
            os.mkdir(open_dir, 0o777)
            os.chmod(open_dir, 0o777)
            assert unwritable(os.path.join(open_dir, "hb.log"), "nobody") == \
                f"{top} is not reachable (no search permission) by user nobody, whom the " \
                "service runs as"
            os.chmod(top, 0o711)
            assert unwritable(os.path.join(open_dir, "hb.log"), "nobody") is None
            assert unwritable(str(closed / "hb.log"), "no-such-user-here") is None  # as root
        finally:
            shutil.rmtree(top)
    else:
        closed.chmod(0o500)
        assert "is not writable by uid" in unwritable(str(closed / "hb.log"), "nobody")
        closed.chmod(0o700)


def test_unwritable_names_a_read_only_file_system(tmp_path, monkeypatch):
    from hbdaemon import logsetup

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(logsetup.os, "statvfs", lambda path: ReadOnly())
    assert "read-only file system" in logsetup.unwritable(str(tmp_path / "hb.log"))


@pytest.mark.parametrize("value", ["[http://a:8690, 'udp://b:8692']", "'http://a:8690, udp://b:8692'",
                                   "'http://a:8690  udp://b:8692'"])
def test_manager_url_lists_several_upstreams(tmp_path, value):
    cfg = load_config(write(tmp_path, f"manager: {{url: {value}, key_file: /etc/k}}\n"), environ={})
    assert cfg.manager.urls == ["http://a:8690", "udp://b:8692"]


@pytest.mark.parametrize("value,needle", [("'http://a:1 http://a:1'", "listed twice"),
                                          ("[http://a:1, 'central:1']", "is not allowed"),
                                          ("[" + ", ".join(f"'http://h{n}:1'" for n in range(9)) + "]",
                                           "at most 8")])
def test_manager_url_lists_are_checked(tmp_path, value, needle):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, f"manager: {{url: {value}}}\n"), environ={})
    assert needle in str(err.value)
