"""TLS on the HTTP listener: agentd, the upstream reporter and hbctl verify the daemon
against a throwaway CA made by the openssl command; plain HTTP gets a closed connection."""

import os
import socket
import subprocess
import sys

import pytest

from support.tls import ThrowawayCA
from support.wait import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return ThrowawayCA(str(tmp_path_factory.mktemp("ca")))


def tls_daemon(daemon_factory, ca, name="d", http=None, **more):
    d = daemon_factory(name, http=dict({"tls_cert_file": ca.cert, "tls_key_file": ca.key},
                                       **(http or {})), **more)
    d.ca_file = ca.ca
    return d.start()


def hbctl(d, *args):
    out = subprocess.run([sys.executable, "-m", "hbdaemon.ctl", "--url",
                          f"https://127.0.0.1:{d.port}", *args],
                         capture_output=True, text=True, timeout=30)
    return out.returncode, out.stdout + out.stderr


def test_agentd_over_https_verifies_the_daemon(daemon_factory, agentd_factory, ca):
    d = tls_daemon(daemon_factory, ca)
    url = f"https://127.0.0.1:{d.port}/heartbeat"
    good = agentd_factory("tls-ok", heartbeat={"transport": "http", "url": url,
                                               "ca_file": ca.ca}).start()
    rec = d.wait_state("tls-ok", "healthy")
    assert rec["transport"] == "http"
    assert good.api("/status")["connected"] is True
    for name, ca_file in (("tls-system", ""), ("tls-other", ca.other_ca)):
        bad = agentd_factory(name, heartbeat={"transport": "http", "url": url,
                                              "ca_file": ca_file}).start()
        wait_for(lambda: "certificate verify failed" in (bad.api("/status")["last_error"] or ""),
                 10, what=f"{name} refusing the daemon's certificate")
        assert d.agent(name) is None


def test_plain_http_to_the_tls_listener_gets_a_closed_connection_and_no_traceback(
        daemon_factory, ca):
    d = tls_daemon(daemon_factory, ca)
    requests = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"\x16\x03\x01\x00",
                b"", b"\x00" * 600)
    for request in requests:
        with socket.create_connection(("127.0.0.1", d.port), timeout=15) as sock:
            sock.sendall(request)
            if not request:
                sock.shutdown(socket.SHUT_WR)
            try:
                answer = sock.recv(4096)
            except ConnectionResetError:  # closed with the request unread: a reset
                answer = b""
            # closed without an answer (a TLS alert at most, for bytes that looked like TLS)
            assert answer == b"" or (request != requests[0] and answer.startswith(b"\x15"))
    assert d.get("/healthz")[0] == 200  # and TLS clients are served
    assert "Traceback" not in d.log()
    assert 'hbdaemon_http_refused_total{reason="tls_handshake"} 4' in d.get("/metrics")[2]


def test_hbctl_and_the_upstream_reporter_verify_too(daemon_factory, ca):
    up = tls_daemon(daemon_factory, ca, "up")
    code, out = hbctl(up, "--ca-file", ca.ca, "status")
    assert code == 0 and "no agents" in out
    code, out = hbctl(up, "status")
    assert code == 1 and "certificate verify failed" in out and "--ca-file" in out
    plain = subprocess.run([sys.executable, "-m", "hbdaemon.ctl", "--url",
                            f"http://127.0.0.1:{up.port}", "status"],
                           capture_output=True, text=True, timeout=30)
    assert plain.returncode == 1 and "use https://" in plain.stderr  # running, not exit 3
    down = daemon_factory("down", manager={
        "url": f"https://127.0.0.1:{up.port}", "ca_file": ca.ca, "agent_id": "host-t",
        "heartbeat_interval": "0.3s"}).start()
    up.wait_state("host-t", "healthy")
    assert down.stop() == 0
    up.wait_state("host-t", "stopped")


def test_tls_settings_are_checked(daemon_factory, ca, short_tmp):
    for http, needle in (({"tls_cert_file": ca.cert}, "http.tls_key_file"),
                         ({"tls_cert_file": ca.cert, "tls_key_file": ca.other_ca},
                          "cannot load"),
                         ({"tls_cert_file": os.path.join(short_tmp, "none.pem"),
                           "tls_key_file": ca.key}, "cannot load")):
        d = daemon_factory("bad", http=http)
        out = subprocess.run([sys.executable, "-m", "hbdaemon", "-c", d.config_path,
                              "--check-config"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and needle in out.stderr, (http, out.stderr)


def test_idle_tls_connections_at_the_cap_make_room_and_bad_records_log_no_traceback(
        daemon_factory, ca):
    import ssl
    import time
    d = tls_daemon(daemon_factory, ca, http={"max_connections": 5, "idle_timeout": "30s"})
    context = ssl.create_default_context(cafile=ca.ca)
    idle = []
    for _ in range(12):  # verified, then silent: the longest waiting makes room each time
        raw = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        idle.append(context.wrap_socket(raw, server_hostname="127.0.0.1"))
        time.sleep(0.05)
    closed = 0
    for conn in idle:
        conn.settimeout(2)
        try:
            closed += conn.recv(1) == b""
        except (ssl.SSLError, OSError):
            closed += 1
    assert closed >= 6, closed  # at most 5 (and the newest) stay open
    assert d.get("/healthz")[0] == 200
    for conn in idle:
        conn.close()
    raw = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
    socket.socket.send(conn, b"\x17\x03\x03\x00\x20" + b"x" * 32)  # not a record of ours
    time.sleep(0.5)
    conn.close()
    assert d.get("/healthz")[0] == 200 and "Traceback" not in d.log()


def test_a_fifo_for_a_certificate_or_ca_file_is_an_error_not_a_hang(daemon_factory,
                                                                   agentd_factory, ca,
                                                                   short_tmp):
    fifo = os.path.join(short_tmp, "fifo.pem")
    os.mkfifo(fifo)
    d = daemon_factory("fifo", http={"tls_cert_file": fifo, "tls_key_file": ca.key})
    out = subprocess.run([sys.executable, "-m", "hbdaemon", "-c", d.config_path,
                          "--check-config"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "regular file" in out.stderr
    a = agentd_factory("fifo-agent", heartbeat={"transport": "http", "ca_file": fifo,
                                                "url": "https://127.0.0.1:1/heartbeat"})
    out = subprocess.run([sys.executable, "-m", "agentd", "-c", a.config_path,
                          "--check-config"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "regular file" in out.stderr
    out = subprocess.run([sys.executable, "-m", "hbdaemon.ctl", "--url", "https://127.0.0.1:1",
                          "--ca-file", fifo, "status"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2 and "regular file" in out.stderr
