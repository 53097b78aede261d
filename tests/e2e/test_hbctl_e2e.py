"""hbctl against a real daemon: the table, details, events, stats, forget, Nagios check, send."""

import json
import os
import subprocess
import sys
import time


def hbctl(d, *args, token_file=None):
    cmd = [sys.executable, "-m", "hbdaemon.ctl", "-c", d.config_path, *args]
    if token_file:
        cmd[5:5] = ["--token-file", token_file]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stdout, proc.stderr


def beat(d, agent_id, **fields):
    assert d.post({"agent_id": agent_id, "pid": os.getpid(), **fields})[0] == 200


def test_status_table_json_and_exit_3_when_down(daemon_factory):
    d = daemon_factory().start()
    beat(d, "web-1", version="2.1", cpu=12.5, memory=50 * 2**20)
    d.wait_state("web-1", "healthy")
    rc, out, _ = hbctl(d, "status")
    assert rc == 0
    header, row = out.splitlines()[:2]
    assert header.split()[:3] == ["AGENT", "STATE", "SINCE"]
    assert row.split()[:2] == ["web-1", "healthy"] and "50.0MiB" in row and "12.5%" in row
    assert "\033[" not in out  # no colour when not on a terminal
    rc, out, _ = hbctl(d, "status", "--json")
    assert rc == 0 and json.loads(out)[0]["agent_id"] == "web-1"
    assert d.stop() == 0
    rc, out, err = hbctl(d, "status")
    assert rc == 3 and "is hbdaemon running?" in err


def test_control_characters_from_agents_do_not_reach_the_terminal(daemon_factory):
    d = daemon_factory().start()
    beat(d, "tricky", version="\x1b[2J\x1b]0;owned\x07v1")
    d.wait_state("tricky", "healthy")
    for args in (("status",), ("show", "tricky")):
        rc, out, _ = hbctl(d, *args)
        assert rc == 0 and "\x1b" not in out and "\x07" not in out and "?[2J" in out


def test_follow_starts_after_the_newest_event(daemon_factory):
    d = daemon_factory().start()
    beat(d, "old")
    d.wait_state("old", "healthy")
    proc = subprocess.Popen([sys.executable, "-m", "hbdaemon.ctl", "-c", d.config_path, "events",
                             "--since", "2999-01-01T00:00:00Z", "--follow"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # a poll or two with nothing new
        beat(d, "new")
        assert " new " in proc.stdout.readline()  # not the old event first
    finally:
        proc.kill()
        proc.wait(5)


def test_show_events_stats_and_forget(daemon_factory):
    d = daemon_factory().start()
    beat(d, "db-1")
    d.wait_state("db-1", "healthy")
    rc, out, _ = hbctl(d, "show", "db-1")
    assert rc == 0 and "state" in out and "unknown -> healthy" in out
    rc, out, _ = hbctl(d, "events", "--since", "5m", "--agent", "db-1")
    assert rc == 0 and "db-1  unknown -> healthy  first heartbeat" in out
    rc, out, _ = hbctl(d, "stats")
    assert rc == 0 and "total_processed" in out
    rc, out, _ = hbctl(d, "forget", "db-1")
    assert rc == 0 and "forgotten" in out
    rc, _, err = hbctl(d, "show", "db-1")
    assert rc == 1 and "no agent 'db-1'" in err
    rc, out, _ = hbctl(d, "events", "--agent", "db-1")
    assert rc == 0 and "db-1  forgotten:  forgotten on request by DELETE from 127.0.0.1" in out
    rc, _, err = hbctl(d, "show", "not an id")
    assert rc == 2


def test_events_follow_prints_new_events(daemon_factory):
    d = daemon_factory().start()
    proc = subprocess.Popen([sys.executable, "-m", "hbdaemon.ctl", "-c", d.config_path, "events",
                             "--follow", "--json"], stdout=subprocess.PIPE, text=True)
    try:
        beat(d, "late")
        line = proc.stdout.readline()
        assert json.loads(line)["agent_id"] == "late"
    finally:
        proc.kill()
        proc.wait(5)


def test_check_speaks_nagios(daemon_factory):
    d = daemon_factory(agent={"health_check": {"cpu_threshold": 10, "threshold_duration": 0,
                                               "heartbeat_timeout": "1s"}}).start()
    beat(d, "ok-1", cpu=1.0, memory=12_000_000)
    d.wait_state("ok-1", "healthy")
    rc, out, _ = hbctl(d, "check", "ok-1")
    assert rc == 0 and out.startswith("OK - agent ok-1 is healthy") and "| cpu=1%;10 memory=12.0MB;" in out
    beat(d, "hot-1", cpu=50.0)
    d.wait_state("hot-1", "over_threshold")
    rc, out, _ = hbctl(d, "check", "hot-1")
    assert rc == 1 and out.startswith("WARNING - agent hot-1 is over_threshold")
    s = d.unix_send(json.dumps({"agent_id": "quiet", "pid": os.getpid()}).encode() + b"\n")
    d.wait_state("quiet", "no_heartbeat", timeout=5)
    rc, out, _ = hbctl(d, "check", "quiet")
    assert rc == 2 and out.startswith("CRITICAL - agent quiet is no_heartbeat")
    rc, out, _ = hbctl(d, "check", "--all")
    assert rc == 2 and out.startswith("CRITICAL - ") and "quiet no_heartbeat" in out and "| healthy=" in out
    rc, out, _ = hbctl(d, "check", "nobody")
    assert rc == 3 and out.startswith("UNKNOWN - ")
    s.close()
    assert d.stop() == 0
    rc, out, _ = hbctl(d, "check", "ok-1")
    assert rc == 3 and out.startswith("UNKNOWN - cannot reach hbdaemon")


def test_send_over_http_and_the_socket(daemon_factory):
    d = daemon_factory().start()
    rc, out, _ = hbctl(d, "send", "--agent-id", "script-1", "--cpu", "2.5")
    assert rc == 0 and "accepted" in out
    rec = d.wait_state("script-1", "healthy")
    assert rec["transport"] == "http" and rec["pid"] == os.getpid()  # hbctl's parent: us
    rc, out, _ = hbctl(d, "send", "--agent-id", "script-2", "--transport", "unix",
                       "--socket", d.socket_path, "--status", "stopping")
    assert rc == 0
    assert d.wait_state("script-2", "stopped")["transport"] == "unix"


def test_token_errors_are_clear(daemon_factory, short_tmp):
    token = os.path.join(short_tmp, "token")
    wrong = os.path.join(short_tmp, "wrong")
    for path, text in ((token, "secret"), (wrong, "nope")):
        with open(path, "w") as f:
            f.write(text)
    d = daemon_factory(http={"auth_token_file": token}).start()
    beat_doc = {"agent_id": "t1", "pid": os.getpid()}
    assert d.post(beat_doc, {"Authorization": "Bearer secret"})[0] == 200
    d.wait_state("t1", "healthy")
    rc, _, err = hbctl(d, "forget", "t1", token_file=wrong)
    assert rc == 1 and "refused the token (401)" in err
    rc, out, _ = hbctl(d, "forget", "t1")  # the token file named in the daemon's config
    assert rc == 0
