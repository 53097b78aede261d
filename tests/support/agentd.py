"""A real agentd process on a temp config, pointed at a test daemon."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import yaml

from support.daemon import free_port, merge
from support.process import ManagedProcess
from support.wait import wait_for


class AgentdProcess(ManagedProcess):
    """Owns one agentd's config, API port and log file."""

    def __init__(self, tmp: str, name: str, config: dict):
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.api_port = free_port()
        self.config = merge({"agent_id": name, "log": {"level": "debug"},
                             "heartbeat": {"interval": "0.3s", "reconnect_min": "0.1s",
                                           "reconnect_max": "0.5s", "timeout": "2s"},
                             "http": {"host": "127.0.0.1", "port": self.api_port}}, config)
        self.config_path = os.path.join(self.dir, "agentd.yaml")
        self.log_path = os.path.join(self.dir, "agentd.log")
        self.proc = None
        self.write_config()

    def write_config(self) -> None:
        with open(self.config_path, "w") as f:
            yaml.safe_dump(self.config, f)

    def start(self, args=()) -> "AgentdProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "agentd", "-c", self.config_path, *args],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        wait_for(self._api_up, 15, what="agentd status API")
        return self

    def _api_up(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"agentd exited {self.proc.returncode}:\n{self.log()}")
        try:
            return self.api("/status")
        except OSError:
            return None

    def api(self, path: str, method: str = "GET"):
        """The parsed JSON answer (error answers too)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

