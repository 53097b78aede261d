"""Signed UDP heartbeats: agentd and the upstream reporter sending them, and the daemon
dropping (and counting) every datagram it must not take."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest

from hbdaemon.protocol import format_rfc3339
from hbdaemon.keyfile import Key, sign as sign_with
from support.daemon import free_port
from support.wait import wait_for

pytestmark = pytest.mark.timeout(90)


def sign(key_id: str, secret: bytes, payload: bytes) -> bytes:
    return sign_with(Key(key_id, secret), payload)
SECRET = "0123456789abcdef0123"


def keys_file(tmp, text=f"fleet {SECRET}\nweb {SECRET}web web-*\n"):
    path = os.path.join(tmp, "udp.keys")
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


def agent_key(tmp, line=f"fleet {SECRET}", name="agent.key"):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(line + "\n")
    return path


def udp_daemon(daemon_factory, short_tmp, udp=None, **more):
    port = free_port()
    d = daemon_factory(udp={"port": port, "keys_file": keys_file(short_tmp), **(udp or {})},
                       **more).start()
    d.udp_port = port
    return d


def rejected(d) -> dict:
    return {r: n for (t, r), n in _rejections(d).items() if t == "udp"}


def _rejections(d) -> dict:
    out = {}
    for line in d.get("/metrics")[2].splitlines():
        if line.startswith("hbdaemon_heartbeats_rejected_total{"):
            labels, value = line[len("hbdaemon_heartbeats_rejected_total{"):].split("} ")
            pairs = dict(p.split("=", 1) for p in labels.split(","))
            out[(pairs["transport"].strip('"'), pairs["reason"].strip('"'))] = int(value)
    return out


def test_agentd_over_udp_is_healthy_and_a_kill_9_is_seen(daemon_factory, agentd_factory,
                                                         short_tmp):
    d = udp_daemon(daemon_factory, short_tmp,
                   agent={"health_check": {"heartbeat_timeout": "1s"}})
    a = agentd_factory("udp-agent", heartbeat={
        "transport": "udp", "udp_target": f"127.0.0.1:{d.udp_port}",
        "key_file": agent_key(short_tmp)}).start()
    rec = d.wait_state("udp-agent", "healthy")
    assert rec["transport"] == "udp" and rec["pid"] == a.proc.pid
    assert a.api("/status")["transport"] == "udp"
    a.proc.kill()
    a.proc.wait()
    rec = d.wait_state("udp-agent", "dead", timeout=5)  # late, then its pid is gone
    assert "gone" in rec["reason"]


def test_agentd_says_what_is_missing_for_udp(agentd_factory, short_tmp):
    for heartbeat, needle in (({"transport": "udp", "key_file": agent_key(short_tmp)},
                               "heartbeat.udp_target"),
                              ({"transport": "udp", "udp_target": "127.0.0.1:9"},
                               "heartbeat.key_file"),
                              ({"transport": "udp", "udp_target": "127.0.0.1:9",
                                "key_file": agent_key(short_tmp, "only-an-id", "bad.key")},
                               "heartbeat.key_file"),
                              ({"transport": "udp", "udp_target": "127.0.0.1",
                                "key_file": agent_key(short_tmp)}, "HOST:PORT")):
        a = agentd_factory("bad-udp", heartbeat=heartbeat)
        out = subprocess.run([sys.executable, "-m", "agentd", "-c", a.config_path,
                              "--check-config"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and needle in out.stderr, (heartbeat, out.stderr)


def test_a_downstream_daemon_reports_over_udp(daemon_factory, short_tmp):
    up = udp_daemon(daemon_factory, short_tmp)
    down = daemon_factory("down", manager={
        "url": f"udp://127.0.0.1:{up.udp_port}", "key_file": agent_key(short_tmp),
        "agent_id": "host-c", "heartbeat_interval": "0.3s"}).start()
    assert down.post({"agent_id": "app-1", "pid": os.getpid()})[0] == 200
    rec = up.wait_state("host-c", "healthy")
    assert rec["transport"] == "udp"
    wait_for(lambda: (up.agent("host-c")["summary"] or {}).get("healthy") == 1, what="summary")
    db = down.unix_agent("db-1", interval=0.1)  # its agents' changes go up in datagrams too
    down.wait_state("db-1", "healthy")
    db.kill()
    db.wait(5)
    assert up.wait_state("host-c:db-1", "dead", timeout=3)["relayed_by"] == "host-c"
    db = down.unix_agent("db-1", interval=0.1)
    down.wait_state("db-1", "healthy")
    wait_for(lambda: up.get("/agents/host-c:db-1")[0] == 404, 3, what="the relayed agent dropped")
    db.kill()
    db.wait(5)
    assert down.stop() == 0
    up.wait_state("host-c", "stopped")


def test_every_datagram_it_must_not_take_is_dropped_and_counted(daemon_factory, short_tmp):
    d = udp_daemon(daemon_factory, short_tmp)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    to = ("127.0.0.1", d.udp_port)

    def beat(agent_id, key="fleet", secret=SECRET, ts=None, **extra):
        doc = {"agent_id": agent_id, "pid": os.getpid(),
               "timestamp": format_rfc3339(time.time() if ts is None else ts), **extra}
        return sign(key, secret.encode(), json.dumps(doc).encode())

    good = beat("web-1")
    for datagram in (good, good,                                  # the second: a replay
                     beat("db-1", key="web", secret=SECRET + "web"),  # outside the key's globs
                     beat("web-2", secret="wrong-secret-wrong-secret"),
                     beat("web-3", key="nobody"),
                     beat("web-4", ts=time.time() - 300),           # outside max_skew
                     beat("web-5", ts=time.time() + 300),
                     sign("fleet", SECRET.encode(), b'{"agent_id": "web-6", "pid": 7}'),
                     b"HB1 fleet " + b"0" * 64 + b" " + b"x" * 1400,
                     b"HB2 fleet x {}", b"", b"HB1",
                     sign("fleet", SECRET.encode(), b"not json"),
                     sign("fleet", SECRET.encode(), b"[" * 1300)):
        sock.sendto(datagram, to)
    wait_for(lambda: sum(rejected(d).values()) >= 13, 5, what="every drop counted")
    assert rejected(d) == {"replay": 1, "not_permitted": 1, "bad_mac": 1, "unknown_key": 1,
                           "stale": 2, "no_timestamp": 1, "too_large": 1, "bad_format": 3,
                           "invalid_message": 2}
    assert d.state("web-1") == "healthy" and d.get("/agents")[2]["agents"][0]["agent_id"] == "web-1"
    assert len(d.get("/agents")[2]["agents"]) == 1


def test_a_fuzz_of_datagrams_leaves_the_daemon_up(daemon_factory, short_tmp):
    d = udp_daemon(daemon_factory, short_tmp)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rng = random.Random(12)
    valid = sign("fleet", SECRET.encode(), json.dumps(
        {"agent_id": "f-1", "pid": os.getpid(), "timestamp": format_rfc3339(time.time())}).encode())
    for n in range(3000):
        kind = n % 3
        if kind == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 1500)))
        elif kind == 1:  # a valid datagram with bytes flipped
            data = bytearray(valid)
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        else:
            data = b"HB1 fleet " + bytes(rng.randrange(256) for _ in range(80))
        sock.sendto(data, ("127.0.0.1", d.udp_port))
    wait_for(lambda: d.get("/stats")[2]["received_by_transport"].get("udp", 0) >= 2900, 10,
             what="the datagrams read")
    assert d.get("/healthz")[0] == 200
    assert d.proc.poll() is None
    assert all(a["agent_id"] in ("f-1",) for a in d.get("/agents")[2]["agents"])


def test_udp_keys_are_checked_at_start_and_reloaded(daemon_factory, short_tmp):
    port = free_port()
    bad = daemon_factory("bad", udp={"port": port})
    out = subprocess.run([sys.executable, "-m", "hbdaemon", "-c", bad.config_path,
                          "--check-config"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "udp.keys_file" in out.stderr
    path = keys_file(short_tmp, "k1 short\n")
    bad.write_config(dict(bad.config, udp={"port": port, "keys_file": path}))
    out = subprocess.run([sys.executable, "-m", "hbdaemon", "-c", bad.config_path,
                          "--check-config"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "line 1" in out.stderr and "16" in out.stderr
    d = udp_daemon(daemon_factory, short_tmp)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    beat = sign("newkey", b"a-brand-new-secret-0001", json.dumps(
        {"agent_id": "r-1", "pid": os.getpid(), "timestamp": format_rfc3339(time.time())}).encode())
    sock.sendto(beat, ("127.0.0.1", d.udp_port))
    wait_for(lambda: rejected(d).get("unknown_key") == 1, 5, what="an unknown key")
    keys_file(short_tmp, f"fleet {SECRET}\nnewkey a-brand-new-secret-0001\n")
    d.signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in d.log(), 5, what="the reload")
    sock.sendto(sign("newkey", b"a-brand-new-secret-0001", json.dumps(
        {"agent_id": "r-1", "pid": os.getpid(), "timestamp": format_rfc3339(time.time())}
    ).encode()), ("127.0.0.1", d.udp_port))
    d.wait_state("r-1", "healthy")


def test_a_datagram_captured_before_a_restart_cannot_be_replayed_after_it(daemon_factory,
                                                                        short_tmp):
    d = udp_daemon(daemon_factory, short_tmp)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def beat(ts):
        return sign("fleet", SECRET.encode(), json.dumps(
            {"agent_id": "r-2", "pid": os.getpid(), "timestamp": format_rfc3339(ts)}).encode())

    now = time.time()
    captured, older = beat(now), beat(now - 1)
    sock.sendto(captured, ("127.0.0.1", d.udp_port))
    d.wait_state("r-2", "healthy")
    sock.sendto(older, ("127.0.0.1", d.udp_port))  # overtaken: not newer than the last
    wait_for(lambda: rejected(d).get("replay") == 1, 5, what="the older one dropped")
    assert d.stop() == 0
    d.start()
    sock.sendto(captured, ("127.0.0.1", d.udp_port))
    wait_for(lambda: rejected(d).get("replay") == 1, 5, what="the replay after the restart")
    assert d.state("r-2") == "unknown"
    sock.sendto(beat(time.time()), ("127.0.0.1", d.udp_port))
    d.wait_state("r-2", "healthy")


def test_a_datagram_captured_before_a_kill_9_cannot_be_replayed_after_it(daemon_factory,
                                                                       short_tmp):
    # routine heartbeats reach the disk a minute apart: the time of the store's last pass
    # is what bounds a replay after a crash
    d = udp_daemon(daemon_factory, short_tmp, daemon={"store_interval": "0.2s"})
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def beat():
        return sign("fleet", SECRET.encode(), json.dumps(
            {"agent_id": "r-3", "pid": os.getpid(), "timestamp": format_rfc3339(time.time())}
        ).encode())

    sock.sendto(beat(), ("127.0.0.1", d.udp_port))
    d.wait_state("r-3", "healthy")
    time.sleep(0.3)
    captured = beat()  # a routine heartbeat: its timestamp is not written at once
    sock.sendto(captured, ("127.0.0.1", d.udp_port))
    wait_for(lambda: d.get("/stats")[2]["processed_by_transport"]["udp"] == 2, 5,
             what="the second heartbeat taken")
    time.sleep(0.6)  # a store pass or more after it
    d.proc.kill()
    d.proc.wait(5)
    d.start()
    sock.sendto(captured, ("127.0.0.1", d.udp_port))
    wait_for(lambda: rejected(d).get("replay") == 1, 5, what="the replay after the crash")
    assert d.state("r-3") == "unknown"
    sock.sendto(beat(), ("127.0.0.1", d.udp_port))
    d.wait_state("r-3", "healthy")


def test_a_datagram_held_back_cannot_bring_a_dead_agent_back(daemon_factory, short_tmp):
    d = udp_daemon(daemon_factory, short_tmp)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    now = time.time()

    def beat(ts, status):
        return sign("fleet", SECRET.encode(), json.dumps(
            {"agent_id": "ord-1", "pid": os.getpid(), "timestamp": format_rfc3339(ts),
             "status": status}).encode())

    held = beat(now - 0.5, "running")
    sock.sendto(beat(now - 1, "running"), ("127.0.0.1", d.udp_port))
    d.wait_state("ord-1", "healthy")
    sock.sendto(beat(now, "exited"), ("127.0.0.1", d.udp_port))
    d.wait_state("ord-1", "dead")
    sock.sendto(held, ("127.0.0.1", d.udp_port))
    wait_for(lambda: rejected(d).get("replay") == 1, 5, what="the held-back one dropped")
    assert d.state("ord-1") == "dead"


def test_agentd_takes_a_key_rotated_in_place_on_sighup(daemon_factory, agentd_factory,
                                                       short_tmp):
    d = udp_daemon(daemon_factory, short_tmp)
    key = agent_key(short_tmp, f"fleet {SECRET}", "rotating.key")
    a = agentd_factory("rot-1", heartbeat={"transport": "udp", "key_file": key,
                                           "udp_target": f"127.0.0.1:{d.udp_port}"}).start()
    d.wait_state("rot-1", "healthy")
    new_secret = "a-rotated-secret-000000"
    keys_file(short_tmp, f"fleet {new_secret}\n")
    d.signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in d.log(), 5, what="the daemon's reload")
    agent_key(short_tmp, f"fleet {new_secret}", "rotating.key")
    a.signal(signal.SIGHUP)
    wait_for(lambda: "reload" in a.log(), 5, what="agentd's reload")
    before = d.agent("rot-1")["heartbeats"]
    wait_for(lambda: d.agent("rot-1")["heartbeats"] >= before + 3, 5,
             what="heartbeats signed with the new key")


def test_hypothesis_datagrams_are_each_taken_or_dropped_with_a_reason(daemon_factory, short_tmp):
    """Well signed payloads of any shape and raw bytes: every datagram is counted as taken
    or dropped by reason, no error is logged, and only well-formed heartbeats make agents."""
    from hypothesis import HealthCheck, given, settings, strategies as st
    d = udp_daemon(daemon_factory, short_tmp, udp={"max_skew": "1h"})
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = [0]
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
        | st.text(max_size=40), lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
    payloads = st.fixed_dictionaries(
        {"agent_id": st.one_of(st.from_regex(r"hyp-[a-z0-9]{1,8}", fullmatch=True),
                               st.text(max_size=20)),
         "pid": st.one_of(st.integers(-5, 2**32), st.text(max_size=5)),
         "timestamp": st.one_of(st.just(format_rfc3339(time.time())), st.text(max_size=30))},
        optional={"cpu": json_values, "memory": json_values, "status": json_values,
                  "summary": json_values, "events": json_values, "problems": json_values})

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(datagram=st.one_of(
        payloads.map(lambda doc: sign("fleet", SECRET.encode(), json.dumps(doc).encode())),
        st.binary(max_size=1500),
        st.binary(max_size=200).map(lambda tail: b"HB1 fleet " + tail)))
    def send(datagram):
        sock.sendto(datagram, ("127.0.0.1", d.udp_port))
        sent[0] += 1

    send()
    stats = lambda: d.get("/stats")[2]  # noqa: E731
    wait_for(lambda: stats()["received_by_transport"].get("udp", 0) >= sent[0], 10,
             what="every datagram read")
    wait_for(lambda: stats()["processed_by_transport"].get("udp", 0) + sum(rejected(d).values())
             == sent[0], 10, what="every datagram taken or dropped with a reason")
    assert d.get("/healthz")[0] == 200 and " ERROR " not in d.log()
    for agent in d.get("/agents")[2]["agents"]:
        assert agent["transport"] in ("udp", "relay"), agent
