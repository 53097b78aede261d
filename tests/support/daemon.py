"""A real hbdaemon process on a temp config, a Unix socket and a loopback port."""

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time

import yaml

from support.process import ManagedProcess
from support.wait import wait_for

BASE_CONFIG = {
    "log": {"level": "debug"},
    "unix": {"socket_group": ""},
    "agent": {"health_check": {"heartbeat_timeout": "30s"}},
}
UNIX_AGENT = os.path.join(os.path.dirname(__file__), "unix_agent.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class DaemonProcess(ManagedProcess):
    """Owns one daemon's config, state dir, socket and log file."""

    def __init__(self, tmp: str, name: str, config: dict):
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.socket_path = os.path.join(self.dir, "hb.sock")
        self.port = free_port()
        self.config = merge(merge(BASE_CONFIG, {
            "daemon": {"state_dir": os.path.join(self.dir, "state")},
            "unix": {"socket_path": self.socket_path},
            "http": {"host": "127.0.0.1", "port": self.port},
        }), config)
        self.config_path = os.path.join(self.dir, "hbdaemon.yaml")
        self.log_path = os.path.join(self.dir, "daemon.log")
        self.proc = None
        self.ca_file = None  # with http.tls_cert_file: the CA the test's requests trust
        self.write_config()

    def write_config(self, config: dict = None) -> None:
        if config is not None:
            self.config = config
        with open(self.config_path, "w") as f:
            yaml.safe_dump(self.config, f)

    def start(self, wait: bool = True, args=(), preexec_fn=None) -> "DaemonProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hbdaemon", "-c", self.config_path, *args],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"hbdaemon exited {self.proc.returncode}:\n{self.log()}")
            try:
                return self.get("/healthz")[0] == 200 and os.path.exists(self.socket_path)
            except OSError:
                return False
        wait_for(ready, timeout, what="hbdaemon to become ready")

    # -- HTTP ----------------------------------------------------------------------------

    def request(self, method: str, path: str, body=None, headers=None):
        """(status, headers dict, parsed JSON or text) over a fresh connection."""
        if self.config["http"].get("tls_cert_file"):  # the test's CA (self.ca_file) vouches
            context = ssl.create_default_context(cafile=self.ca_file)
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10,
                                               context=context)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read().decode()
            ctype = resp.getheader("Content-Type", "")
            return resp.status, dict(resp.getheaders()), json.loads(data) if "json" in ctype else data
        finally:
            conn.close()

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, doc, headers=None):
        return self.request("POST", "/heartbeat", doc, headers)

    def agent(self, agent_id: str):
        status, _, doc = self.get(f"/agents/{agent_id}")
        return doc if status == 200 else None

    def state(self, agent_id: str):
        rec = self.agent(agent_id)
        return rec and rec["state"]

    def wait_state(self, agent_id: str, state: str, timeout: float = 10.0) -> dict:
        wait_for(lambda: self.state(agent_id) == state, timeout,
                 what=f"agent {agent_id} to be {state}")
        return self.agent(agent_id)

    def id_of(self, pid: int, timeout: float = 10.0) -> str:
        """The agent_id of the record whose pid is `pid` (an agent that sent none)."""
        found = []
        wait_for(lambda: found.extend(a["agent_id"] for a in self.get("/agents")[2]["agents"]
                                      if a["pid"] == pid) or found, timeout,
                 what=f"a record with pid {pid}")
        return found[0]

    def events(self, agent: str = None) -> list:
        return self.get("/events" + (f"?agent={agent}" if agent else ""))[2]["events"]

    def wait_events(self, agent: str, match, timeout: float = 5.0) -> list:
        """The agent's events matching `match(event)`, once there is one: an event shows in
        /events once the store has written it, a moment after the state changed."""
        found = []
        wait_for(lambda: found.extend(e for e in self.events(agent) if match(e)) or found,
                 timeout, what=f"an event of {agent}")
        return found

    # -- Unix ----------------------------------------------------------------------------

    def unix_agent(self, agent_id: str, interval: float = 0.2) -> subprocess.Popen:
        """Start the test Unix agent; returns once its first heartbeat is sent."""
        proc = subprocess.Popen([sys.executable, UNIX_AGENT, self.socket_path, agent_id,
                                 str(interval)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "sent"
        return proc

    def unix_send(self, data: bytes, wait: float = 0.1) -> socket.socket:
        """Connect, send raw bytes, return the open socket."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(self.socket_path)
        if data:
            s.sendall(data)
        time.sleep(wait)
        return s
