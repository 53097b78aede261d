"""Start, signals, restart and hooks of the real daemon process."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time


from support.wait import wait_for


def beat(agent_id, **fields):
    return {"agent_id": agent_id, "pid": os.getpid(), **fields}


def test_sigterm_drains_removes_the_socket_and_exits_0(daemon_factory):
    import threading
    d = daemon_factory().start()
    agent = d.unix_agent("a", interval=0.1)
    accepted, stop = [], threading.Event()

    def post_until_refused(k):  # heartbeats still arriving while SIGTERM lands
        for i in range(10_000):
            if stop.is_set():
                return
            try:
                status = d.post(beat(f"h{k}-{i}"))[0]
            except OSError:
                return
            if status == 200:
                accepted.append(f"h{k}-{i}")
            elif status == 503:
                return

    posters = [threading.Thread(target=post_until_refused, args=(k,)) for k in range(4)]
    for t in posters:
        t.start()
    wait_for(lambda: len(accepted) >= 40, what="heartbeats accepted")
    assert d.stop() == 0
    stop.set()
    for t in posters:
        t.join(10)
    assert not os.path.exists(d.socket_path)
    log = d.log()
    assert "stopping: draining" in log and "stopped" in log
    agent.kill()
    agent.wait(5)
    d.start()  # what the daemon wrote at its stop: every heartbeat answered 200 was applied
    known = {a["agent_id"] for a in d.get("/agents")[2]["agents"]}
    assert set(accepted) <= known, sorted(set(accepted) - known)[:5]


def test_sigint_also_stops_cleanly(daemon_factory):
    d = daemon_factory().start()
    d.signal(signal.SIGINT)
    assert d.proc.wait(15) == 0
    assert not os.path.exists(d.socket_path)


def test_restart_after_kill_9_keeps_agents_and_events_as_unknown(daemon_factory):
    d = daemon_factory(daemon={"store_interval": "0.1s"}).start()
    d.post(beat("keep", version="7.1"))
    d.post(beat("gone", status="stopping"))
    d.wait_state("keep", "healthy")
    d.wait_state("gone", "stopped")
    d.wait_events("gone", lambda e: e["to"] == "stopped")
    wait_for(lambda: d.agent("keep")["heartbeats"] == 1, what="keep's record")
    time.sleep(0.3)  # a few store_intervals (0.1 s): the records are written too
    before = d.events()
    d.proc.kill()
    d.proc.wait(5)
    assert os.path.exists(d.socket_path)  # left behind by kill -9: stale
    d.start()
    rec = d.agent("keep")
    assert rec["state"] == "unknown" and rec["version"] == "7.1"
    assert d.state("gone") == "stopped"
    (restarted,) = d.wait_events("keep", lambda e: e["to"] == "unknown")
    assert "daemon restarted" in restarted["reason"]
    after = d.events()
    assert [e["id"] for e in after[:len(before)]] == [e["id"] for e in before]
    d.post(beat("keep"))
    d.wait_state("keep", "healthy")


def test_an_event_seen_through_the_api_survives_kill_9_and_its_id_is_never_reused(daemon_factory):
    d = daemon_factory().start()  # the production store_interval: events must not wait for it
    seen = []
    for trial in range(3):
        agent = f"svc-{trial}"
        assert d.post(beat(agent))[0] == 200
        assert d.post(beat(agent, status="stopping"))[0] == 200
        (ev,) = d.wait_events(agent, lambda e: e["to"] == "stopped", timeout=5)
        d.proc.kill()  # at once: nothing else gets a chance to be written
        d.proc.wait(5)
        seen.append(ev)
        d.start()
        ids = {e["id"]: e for e in d.events()}
        for old in seen:  # every event anyone saw is still there, under the same id
            assert ids[old["id"]] == old
        assert d.state(agent) == "stopped"  # not unknown, then dead
        assert d.post(beat(f"new-{trial}"))[0] == 200
        (fresh,) = d.wait_events(f"new-{trial}", lambda e: e["to"] == "healthy")
        assert fresh["id"] > max(e["id"] for e in seen)


def test_unknown_agents_get_one_timeout_of_grace_after_restart(daemon_factory):
    d = daemon_factory(agent={"health_check": {"heartbeat_timeout": "1s"}}).start()
    d.post(beat("later"))
    d.wait_state("later", "healthy")
    assert d.stop() == 0
    d.start()
    assert d.state("later") == "unknown"
    d.wait_state("later", "no_heartbeat", timeout=5)


def test_a_live_daemon_on_the_socket_is_not_displaced(daemon_factory):
    first = daemon_factory("one").start()
    second = daemon_factory("two")
    second.config["unix"]["socket_path"] = first.socket_path
    second.write_config()
    second.start(wait=False)
    assert second.proc.wait(15) == 1
    assert "another daemon is listening" in second.log()
    assert first.get("/healthz")[0] == 200 and os.path.exists(first.socket_path)


def test_a_stale_socket_is_removed_and_a_non_socket_is_left_alone(daemon_factory):
    d = daemon_factory()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(d.socket_path)
    stale.close()
    d.start()
    assert "removing stale socket" in d.log()
    assert d.stop() == 0
    with open(d.socket_path, "w") as f:
        f.write("precious")
    d.start(wait=False)
    assert d.proc.wait(15) == 1
    assert "is not a socket; not removing it" in d.log()
    with open(d.socket_path) as f:
        assert f.read() == "precious"


def test_port_in_use_is_a_clear_failure(daemon_factory):
    d = daemon_factory()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", d.port))
    blocker.listen()
    d.start(wait=False)
    assert d.proc.wait(15) == 1
    assert f"cannot listen on http 127.0.0.1:{d.port}" in d.log()
    assert not os.path.exists(d.socket_path)
    blocker.close()


def test_bad_config_exits_2_with_one_clear_line(daemon_factory):
    d = daemon_factory(http={"port": "eighty"})
    d.start(wait=False)
    assert d.proc.wait(15) == 2
    assert "http.port: 'eighty' is not allowed" in d.log()


def test_check_config_as_a_process(daemon_factory):
    d = daemon_factory()
    run = subprocess.run([sys.executable, "-m", "hbdaemon", "--check-config", "-c", d.config_path],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and "configuration OK" in run.stdout
    run = subprocess.run([sys.executable, "-m", "hbdaemon", "--version"], capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 0 and run.stdout.startswith("hbdaemon ")


def test_check_config_refuses_a_log_file_or_state_dir_the_daemon_could_not_write(daemon_factory,
                                                                                 short_tmp):
    d = daemon_factory()
    for args, needle in (
            (["--set", "log.file=/nonexistent/dir/hb.log"], "log.file: /nonexistent/dir/hb.log "
                                                            "will not be writable: its directory"),
            (["--set", f"log.file={short_tmp}"], "is a directory"),
            (["--set", "daemon.state_dir=/dev/null/x"], "daemon.state_dir")):
        run = subprocess.run([sys.executable, "-m", "hbdaemon", "--check-config", "-c",
                              d.config_path, *args], capture_output=True, text=True, timeout=30)
        assert run.returncode == 2 and needle in run.stderr, run.stderr
    run = subprocess.run([sys.executable, "-m", "agentd", "--check-config", "--set",
                          "log.file=/nonexistent/dir/agentd.log"], capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 2 and "log.file" in run.stderr and "does not exist" in run.stderr


def test_sighup_reloads_thresholds_and_refuses_a_bad_config(daemon_factory):
    d = daemon_factory().start()
    d.post(beat("r"))
    assert d.wait_state("r", "healthy")["heartbeat_timeout"] == 30.0
    conn = d.unix_agent("conn", interval=0.2)
    d.config["agent"]["health_check"]["heartbeat_timeout"] = "12s"
    d.write_config()
    d.signal(signal.SIGHUP)
    wait_for(lambda: d.agent("r")["heartbeat_timeout"] == 12.0, what="new timeout applied")
    with open(d.config_path, "w") as f:
        f.write("agent: {health_check: {heartbeat_timeout: never}}\n")
    d.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in d.log(), what="reload refused")
    assert d.agent("r")["heartbeat_timeout"] == 12.0
    assert d.agent("conn")["connected"] is True  # reloads never drop connections
    beats = d.agent("conn")["heartbeats"]
    wait_for(lambda: d.agent("conn")["heartbeats"] > beats, what="agent still beating")
    conn.kill()
    conn.wait(5)
    assert d.stop() == 0


def test_hooks_run_on_events_with_the_event_in_the_environment(daemon_factory, short_tmp):
    out = os.path.join(short_tmp, "hook.out")
    script = f'echo "$HB_AGENT_ID $HB_FROM $HB_TO $HB_PID" >> {out}'
    d = daemon_factory(hooks=[{"on": ["dead"], "command": ["/bin/sh", "-c", script]},
                              {"on": ["dead"], "command": ["/bin/sleep", "60"], "timeout": "0.5s"}]).start()
    agent = d.unix_agent("crashy", interval=0.1)
    agent.kill()
    agent.wait(5)
    d.wait_state("crashy", "dead")
    wait_for(lambda: os.path.exists(out), what="hook output")
    with open(out) as f:
        assert f.read().split() == ["crashy", "healthy", "dead", str(agent.pid)]
    wait_for(lambda: "killed after 0.5s timeout" in d.log(), what="hanging hook killed")
    assert d.post(beat("still-serving"))[0] == 200
    stats = d.get("/stats")[2]
    assert stats["hook_runs"] == 2 and stats["hook_failures"] == 1


def _runs(path):
    """Lines a hook appended, split in words (none yet: [])."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f]


def _kept_runs(d) -> int:
    """Hook runs (with their event) the daemon has written to its state store."""
    db = sqlite3.connect(os.path.join(d.config["daemon"]["state_dir"], "hbdaemon.db"), timeout=5)
    try:
        return sum(json.loads(data)["event"] is not None
                   for data, in db.execute("SELECT data FROM hook_runs"))
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        db.close()


def test_a_hook_retry_waiting_at_a_kill_9_runs_after_the_restart(daemon_factory, short_tmp):
    out = os.path.join(short_tmp, "hook.out")
    script = f'echo "$HB_AGENT_ID $HB_TO $HB_EVENT_ID" >> {out}; exit 1'  # fails: retried
    d = daemon_factory(hooks=[{"on": ["dead"], "command": ["/bin/sh", "-c", script]}],
                       agent={"restart": {"backoff_base": "2s", "max_retries": 5}},
                       daemon={"store_interval": "0.2s"}).start()
    agent = d.unix_agent("crashy", interval=0.1)
    agent.kill()
    agent.wait(5)
    d.wait_state("crashy", "dead")
    wait_for(lambda: len(_runs(out)) == 1, what="the first run")
    wait_for(lambda: _kept_runs(d) == 1, what="the waiting retry written")
    d.proc.kill()
    d.proc.wait(5)
    assert len(_runs(out)) == 1  # the retry was still waiting out its 2 s backoff
    d.start()
    assert d.state("crashy") == "dead"  # no new event: only the kept run can fire the hook
    wait_for(lambda: len(_runs(out)) >= 2, timeout=10, what="the retry after the restart")
    first, again = _runs(out)[:2]
    assert first == again and first[:2] == ["crashy", "dead"]  # the same event, run again
    assert "1 runs waiting from before the restart" in d.log()


def test_hook_runs_queued_behind_the_parallel_limit_run_after_a_kill_9(daemon_factory,
                                                                       short_tmp):
    out = os.path.join(short_tmp, "hook.out")
    script = f'echo "$HB_AGENT_ID" >> {out}; sleep 3'  # holds one of the 8 places for 3 s
    d = daemon_factory(hooks=[{"on": ["dead"], "command": ["/bin/sh", "-c", script]}],
                       daemon={"store_interval": "0.2s"}).start()
    agents = [d.unix_agent(f"crash-{n}", interval=0.2) for n in range(12)]
    for agent in agents:
        agent.kill()
        agent.wait(5)
    for n in range(12):
        d.wait_state(f"crash-{n}", "dead")
    wait_for(lambda: len(_runs(out)) == 8, what="8 runs, 4 queued behind them")
    wait_for(lambda: _kept_runs(d) == 12, what="the 8 running and 4 queued written")
    d.proc.kill()
    d.proc.wait(5)
    d.start()  # the 4 queued run now; the 8 cut short run again (at least once)
    wait_for(lambda: {words[0] for words in _runs(out)} == {f"crash-{n}" for n in range(12)},
             timeout=15, what="every queued run after the restart")
    subprocess.run(["pkill", "-f", f"{out}; sleep 3"], check=False)


def test_json_logs_to_a_file(daemon_factory, short_tmp):
    log_file = os.path.join(short_tmp, "hb.log")
    d = daemon_factory(log={"file": log_file, "format": "json", "level": "info"}).start()
    d.post(beat("j"))
    d.wait_state("j", "healthy")
    assert d.stop() == 0
    with open(log_file) as f:
        lines = [json.loads(line) for line in f]
    assert any("unknown -> healthy" in line["message"] for line in lines)
    assert {"time", "level", "logger", "message"} <= set(lines[0])


def test_a_corrupt_store_is_moved_aside_and_the_daemon_starts_fresh(daemon_factory):
    d = daemon_factory()
    state = d.config["daemon"]["state_dir"]
    os.makedirs(state)
    with open(os.path.join(state, "hbdaemon.db"), "wb") as f:
        f.write(b"garbage" * 1000)
    d.start()
    assert "is unreadable" in d.log() and "moved it to" in d.log()
    assert any(n.startswith("hbdaemon.db.corrupt-") for n in os.listdir(state))
    assert d.post(beat("fresh"))[0] == 200


def test_a_storm_of_signals_never_wedges_the_main_loop(daemon_factory, agentd_factory):
    d = daemon_factory().start()
    a = agentd_factory("stormy", d).start()
    d.wait_state("stormy", "healthy")
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # handlers that took a lock could deadlock here
        for proc in (d.proc, a.proc):
            proc.send_signal(signal.SIGHUP)
    assert d.get("/healthz")[0] == 200 and a.api("/status") is not None
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(15) == 0
    assert d.stop() == 0
