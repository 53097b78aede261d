"""Fleet reporting: a downstream hbdaemon reports itself and its agents to an upstream one."""

import os
import signal
import subprocess
import sys
import time

from support.wait import wait_for


def fleet(daemon_factory, **upstream_health):
    up = daemon_factory("up", agent={"health_check": {"heartbeat_timeout": "1.5s", **upstream_health}}).start()
    down = daemon_factory("down", manager={"url": f"http://127.0.0.1:{up.port}", "agent_id": "host-b",
                                           "heartbeat_interval": "0.3s", "reconnect_interval": "0.2s",
                                           "timeout": "2s"}).start()
    return up, down


def test_upstream_sees_the_downstream_and_its_summary(daemon_factory):
    up, down = fleet(daemon_factory)
    assert down.post({"agent_id": "app-1", "pid": os.getpid()})[0] == 200
    rec = up.wait_state("host-b", "healthy")
    assert rec["pid"] == down.proc.pid and rec["version"].startswith("hbdaemon-")
    wait_for(lambda: (up.agent("host-b")["summary"] or {}).get("healthy") == 1, what="summary")
    out = subprocess.run([sys.executable, "-m", "hbdaemon.ctl", "--url", f"http://127.0.0.1:{up.port}",
                          "status"], capture_output=True, text=True, timeout=30).stdout
    assert "ITS AGENTS" in out and "1 healthy" in out


def test_downstream_reconnects_after_the_upstream_restarts(daemon_factory):
    up, down = fleet(daemon_factory)
    up.wait_state("host-b", "healthy")
    up.proc.kill()
    up.proc.wait(5)
    wait_for(lambda: "upstream" in down.log() and "lost" in down.log(), what="loss logged")
    up.start()
    up.wait_state("host-b", "healthy", timeout=5)
    wait_for(lambda: "reconnected after" in down.log(), what="reconnect logged")
    assert down.log().count("lost:") == 1


def test_a_silent_downstream_is_no_heartbeat_and_a_stopped_one_stopped(daemon_factory):
    up, down = fleet(daemon_factory)
    up.wait_state("host-b", "healthy")
    down.signal(signal.SIGSTOP)  # hung: alive but silent
    try:
        up.wait_state("host-b", "no_heartbeat", timeout=5)
    finally:
        down.signal(signal.SIGCONT)
    up.wait_state("host-b", "healthy", timeout=5)
    assert down.stop() == 0
    up.wait_state("host-b", "stopped", timeout=5)


def test_a_killed_downstream_on_this_host_is_dead_after_the_timeout(daemon_factory):
    up, down = fleet(daemon_factory)
    up.wait_state("host-b", "healthy")
    down.proc.kill()
    down.proc.wait(5)
    rec = up.wait_state("host-b", "dead", timeout=10)  # same host: its pid is seen gone
    assert rec["reason"].startswith("no heartbeat for")


def test_an_upstream_that_does_not_speak_http_is_a_failed_report_not_a_dead_reporter(daemon_factory):
    import socket
    import threading
    banner = socket.socket()
    banner.bind(("127.0.0.1", 0))
    banner.listen(16)
    done = threading.Event()

    def serve():  # what sshd answers on a wrong port
        banner.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = banner.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        down = daemon_factory("down", manager={
            "url": f"http://127.0.0.1:{banner.getsockname()[1]}", "heartbeat_interval": "0.2s",
            "reconnect_interval": "0.1s", "timeout": "1s"}).start()
        wait_for(lambda: "lost:" in down.log(), what="the failure logged")
        time.sleep(0.5)  # several more failed attempts
        assert "Traceback" not in down.log() and down.log().count("lost:") == 1
        status, _, doc = down.get("/healthz")
        assert status == 200, doc
        assert 'hbdaemon_component_restarts_total{component="hb-upstream"} 0' in down.get("/metrics")[2]
    finally:
        done.set()
        banner.close()


def _serve_raw(answer):
    """A TCP server on loopback that runs answer(conn) for each connection; (port, stop)."""
    import socket
    import threading
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    done = threading.Event()

    def loop():
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=answer, args=(conn, done), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()

    def stop():
        done.set()
        listener.close()
    return listener.getsockname()[1], stop


def _endless(conn, done):
    with conn:
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
            while not done.is_set():
                conn.sendall(b"x" * 65536)
        except OSError:
            pass


def _trickle(conn, done):
    with conn:
        try:
            conn.recv(65536)
            for _ in range(600):
                if done.is_set():
                    return
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n"[:1])
                time.sleep(0.1)
        except OSError:
            pass


def test_a_hostile_upstream_can_neither_fill_the_memory_nor_hang_the_reporter(daemon_factory):
    import psutil
    for answer in (_endless, _trickle):
        port, stop = _serve_raw(answer)
        try:
            down = daemon_factory(f"down-{answer.__name__}", manager={
                "url": f"http://127.0.0.1:{port}", "heartbeat_interval": "0.2s",
                "reconnect_interval": "0.2s", "timeout": "1s"}).start()
            if answer is _trickle:  # the endless answer's first 4 KiB say 200: a report made
                wait_for(lambda: "lost:" in down.log(), what="the failed report logged")
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:  # reports keep failing, and keep being tried
                assert psutil.Process(down.proc.pid).memory_info().rss < 300e6
                assert down.get("/healthz")[0] == 200, down.get("/healthz")[2]
                time.sleep(0.5)
            assert "Traceback" not in down.log()
        finally:
            stop()
