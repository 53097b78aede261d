"""Real servers in this process: queue-full answers, the worker pool, sd_notify, clean teardown."""

import http.client
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from hbdaemon.api import Api
from hbdaemon.config import load_config
from hbdaemon.daemon import Daemon
from hbdaemon.events import EventLog
from hbdaemon.health import PolicySet
from hbdaemon.http_server import HeartbeatHTTPServer
from hbdaemon.registry import Registry
from hbdaemon.sdnotify import Notifier
from hbdaemon.stats import ReceiverStats
from hbdaemon.workers import PoolClosed, WorkerPool
from support.wait import wait_for


def hb_threads():
    return {t.name for t in threading.enumerate() if t.name.startswith("hb-")}


def serve_http(submit, metrics=lambda: "", max_connections=256):
    cfg = load_config("/nonexistent", environ={})
    events = EventLog(10)
    registry = Registry(PolicySet(cfg.agent.health_check), events.record)
    api = Api(registry, events, ReceiverStats(), lambda: {}, metrics)
    server = HeartbeatHTTPServer("127.0.0.1", 0, api, submit, max_connections=max_connections)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="test-http", daemon=True)
    thread.start()
    return server, thread


def post(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", "/heartbeat", body=json.dumps({"agent_id": "a", "pid": 1}))
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused at accept: the answer was sent, and the socket closed, before the body
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    return resp.status, resp.getheader("Retry-After"), body


@pytest.mark.parametrize("error,message", [(queue.Full, "new agents wait"),
                                           (PoolClosed, "shutting down")])
def test_full_or_closed_queue_is_503_with_retry_after(error, message):
    def submit(item, wait=0.0, new=False):
        raise error()
    server, thread = serve_http(submit)
    try:
        status, retry, body = post(server.server_address[1])
        assert (status, retry, body["success"]) == (503, "1", False)
        assert message in body["message"]
    finally:
        server.shutdown()
        server.close()
        thread.join(5)


def test_at_the_cap_only_a_waiting_connection_makes_room_never_one_being_served():
    gate = threading.Event()
    server, thread = serve_http(lambda item, wait=0.0, new=False: None, metrics=lambda: gate.wait(5) and "m 1\n",
                                max_connections=1)
    port = server.server_address[1]
    try:
        busy = socket.create_connection(("127.0.0.1", port), timeout=5)
        busy.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")  # held by the gate
        wait_for(lambda: None in server._conns.values(), what="the request being served")
        status, retry, _ = post(port)
        assert (status, retry) == (503, "1")  # nobody to evict: the one slot is working
        gate.set()
        assert busy.recv(4096).startswith(b"HTTP/1.1 200")
        wait_for(lambda: all(type(v) is float for v in server._conns.values()),
                 what="the served connection waiting for its next request")
        assert post(port)[0] == 200  # now idle between requests: it makes room
        assert busy.recv(1) == b"" and server.evicted_total == 1
        busy.close()
    finally:
        server.shutdown()
        server.close()
        thread.join(5)


def test_worker_pool_drains_its_queue_on_stop():
    done = []
    pool = WorkerPool(lambda item: (time.sleep(0.001), done.append(item)), workers=2, queue_size=500)
    pool.start()
    for i in range(300):
        pool.submit(i)
    pool.stop(timeout=10)
    assert sorted(done) == list(range(300))
    with pytest.raises(PoolClosed):
        pool.submit(1)
    assert not any(t.name.startswith("hb-worker") for t in threading.enumerate())


def test_worker_pool_full_queue_raises_full():
    gate = threading.Event()
    pool = WorkerPool(lambda item: gate.wait(5), workers=1, queue_size=2)
    pool.start()
    pool.submit(1)
    wait_for(lambda: pool.depth == 0, what="worker took the first item")
    pool.submit(2)  # known agents: one place of two
    pool.submit(3, new=True)  # new agents: the other
    with pytest.raises(queue.Full):
        pool.submit(4)
    with pytest.raises(queue.Full):
        pool.submit(5, new=True)
    assert pool.wait_room(True, 0.05) is False
    gate.set()
    assert pool.wait_room(True, 5.0) is True  # a worker took one: a place for a new agent
    pool.stop(timeout=5)


def test_new_and_known_agents_share_the_queue_three_to_one():
    gate = threading.Event()
    pool = WorkerPool(lambda item: gate.wait(5), workers=1, queue_size=1000)
    pool.start()
    pool.submit("first")
    wait_for(lambda: pool.depth == 0, what="worker took the first item")
    for n in range(750):
        pool.submit(n)
    with pytest.raises(queue.Full):
        pool.submit("one known too many")
    for n in range(250):  # a flood of new ids cannot take the known agents' places
        pool.submit(n, new=True)  # and known agents cannot take theirs
    with pytest.raises(queue.Full):
        pool.submit("one new too many", new=True)
    gate.set()
    pool.stop(timeout=10)


def test_a_submit_that_may_wait_gets_the_room_a_worker_frees_and_stop_refuses_it():
    gate, done = threading.Event(), []
    pool = WorkerPool(lambda item: (gate.wait(5), done.append(item)), workers=1, queue_size=2)
    pool.start()
    pool.submit(1)
    wait_for(lambda: pool.depth == 0, what="worker took the first item")
    pool.submit(2)  # the known agents' share (one place of two) is full now
    threading.Timer(0.2, gate.set).start()
    pool.submit(3, wait=5.0)  # waits for the worker to take item 2, instead of a 503
    pool.stop(timeout=5)
    assert done == [1, 2, 3]  # every item let in was applied
    with pytest.raises(PoolClosed):
        pool.submit(4, wait=1.0)


def test_daemon_notifies_systemd_and_leaves_no_thread_or_socket(short_tmp):
    notify_path = os.path.join(short_tmp, "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.settimeout(5)
    before = hb_threads()
    cfg = load_config("/nonexistent", environ={}, overrides={
        "daemon.state_dir": os.path.join(short_tmp, "state"),
        "unix.socket_path": os.path.join(short_tmp, "hb.sock"), "unix.socket_group": "",
        "http.port": "0"})
    daemon = Daemon(cfg, notifier=Notifier({"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "200000"}))
    daemon.start()
    assert listener.recv(4096).startswith(b"READY=1")
    runner = threading.Thread(target=daemon.run_forever, name="test-run", daemon=True)
    runner.start()
    assert listener.recv(4096) == b"WATCHDOG=1"
    client = socket.socket(socket.AF_UNIX)
    client.connect(cfg.unix.socket_path)
    client.sendall(json.dumps({"agent_id": "x", "pid": os.getpid()}).encode() + b"\n")
    wait_for(lambda: daemon.registry.get("x"), what="heartbeat applied")
    daemon.request_stop()
    runner.join(5)
    daemon.stop()
    messages = []
    while True:
        msg = listener.recv(4096)
        messages.append(msg)
        if msg == b"STOPPING=1":
            break
    assert not os.path.exists(cfg.unix.socket_path)
    assert client.recv(1) == b""
    client.close()
    wait_for(lambda: hb_threads() <= before, timeout=5, what=f"threads to end: {hb_threads() - before}")
    listener.close()


def test_the_usual_200_is_the_same_answer_on_keep_alive_and_on_a_closing_connection():
    server, thread = serve_http(lambda item, wait=0.0, new=False: None)
    port = server.server_address[1]
    body = b'{"agent_id": "a", "pid": 1}'
    try:
        answers = []
        for version, extra in (("HTTP/1.1", b""), ("HTTP/1.0", b"")):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(f"POST /heartbeat {version}\r\nHost: localhost\r\n".encode() + extra
                          + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                if version == "HTTP/1.1":
                    s.shutdown(socket.SHUT_WR)
                data = b""
                while not data.endswith(b"}"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            answers.append(data)
        for data in answers:
            head, _, payload = data.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            assert lines[0] == b"HTTP/1.1 200 OK"
            fields = dict(line.split(b": ", 1) for line in lines[1:])
            assert fields[b"Content-Type"] == b"application/json"
            assert int(fields[b"Content-Length"]) == len(payload)
            assert fields[b"Server"].startswith(b"hbdaemon/") and b"Date" in fields
            doc = json.loads(payload)
            assert doc["success"] is True and doc["message"] == "heartbeat accepted"
        assert b"Connection: close" in answers[1] and b"Connection" not in answers[0]
    finally:
        server.shutdown()
        server.close()
        thread.join(5)


def test_the_open_file_limit_is_raised_for_the_connections_it_must_hold():
    code = ("import resource, sys; from hbdaemon.daemon import raise_open_file_limit; "
            "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)); "
            "raise_open_file_limit(2000); "
            "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], min(hard, 2000) "
            "if hard != resource.RLIM_INFINITY else 2000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))))
    got, want = out.stdout.split()
    assert got == want, out.stderr


def test_a_part_that_raises_is_restarted_counted_and_named_by_healthz(short_tmp, monkeypatch):
    from hbdaemon import threads
    monkeypatch.setattr(threads, "RESTART_FIRST", 1.0)
    notify_path = os.path.join(short_tmp, "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.settimeout(0.3)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = load_config("/nonexistent", environ={}, overrides={
        "daemon.state_dir": os.path.join(short_tmp, "state"),
        "unix.socket_path": os.path.join(short_tmp, "hb.sock"), "unix.socket_group": "",
        "http.port": str(port)})
    daemon = Daemon(cfg, notifier=Notifier({"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "200000"}))
    real_check, calls = daemon.registry.check, []

    def check():
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("a bug in one pass")
        return real_check()

    daemon.registry.check = check
    daemon.start()
    runner = threading.Thread(target=daemon.run_forever, name="test-run", daemon=True)
    runner.start()
    try:
        url = daemon.http_url
        wait_for(lambda: daemon.checker.component.failure is not None, what="the failure")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "/healthz", timeout=5)
        doc = json.loads(refused.value.read())
        assert refused.value.code == 503 and doc["status"] == "failing"
        assert doc["problems"] == ["hb-health is down after KeyError: 'a bug in one pass' "
                                   "(restart 1 pending)"]
        drained = []
        try:
            while True:
                drained.append(listener.recv(4096))
        except socket.timeout:
            pass
        assert b"WATCHDOG=1" not in drained[1:]  # not fed while a part is down
        wait_for(lambda: len(calls) >= 2 and daemon.problems() == [], timeout=5,
                 what="the checker running again")
        with urllib.request.urlopen(url + "/healthz", timeout=5) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert 'hbdaemon_component_restarts_total{component="hb-health"} 1' in text
        assert 'hbdaemon_component_up{component="hb-health"} 1' in text
        listener.settimeout(5)
        assert listener.recv(4096) == b"WATCHDOG=1"  # fed again
    finally:
        daemon.request_stop()
        runner.join(5)
        daemon.stop()
        listener.close()


def test_every_item_the_pool_took_is_handled_even_when_stop_races_submit():
    for _ in range(30):
        handled, taken = set(), set()
        pool = WorkerPool(handled.add, workers=2, queue_size=1_000_000)
        pool.start()
        go = threading.Event()

        def submitter(k):
            go.wait()
            for i in range(100_000):
                try:
                    pool.submit((k, i))
                except PoolClosed:
                    return
                taken.add((k, i))

        threads = [threading.Thread(target=submitter, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        go.set()
        time.sleep(0.002)
        pool.stop(timeout=30)
        for t in threads:
            t.join(30)
        assert taken and taken <= handled  # a 200 means applied


def test_an_inline_pool_handles_a_known_agent_s_item_at_once_while_nothing_waits():
    handled = []
    gate = threading.Event()
    pool = WorkerPool(lambda item: handled.append((item, threading.current_thread().name))
                      or (item == "slow" and gate.wait(5)), workers=1, queue_size=10, inline=True)
    pool.start()
    pool.submit("known")
    assert handled == [("known", threading.current_thread().name)]  # no hand-off
    pool.submit("new", new=True)  # a new agent's always goes through the queue
    wait_for(lambda: len(handled) == 2, what="the worker took it")
    assert handled[1][1].startswith("hb-worker")
    pool.inline = False
    pool.submit("slow")
    wait_for(lambda: len(handled) == 3, what="the worker is busy")
    pool.submit("queued")  # waits behind the slow one
    pool.inline = True
    pool.submit("behind")  # something is queued: the order of the queue is kept
    assert [item for item, _ in handled] == ["known", "new", "slow"]
    gate.set()
    wait_for(lambda: len(handled) == 5, what="the queue drained")
    pool.submit(None)  # a failing item on the caller's thread is logged and counted
    pool._handle = lambda item: 1 / 0
    pool.submit("boom")
    assert pool.inline_failures == 1
    pool.stop(timeout=5)
