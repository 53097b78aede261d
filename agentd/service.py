"""agentd as a process: the agent, its status API, signals, reload and a clean exit."""

import logging
import signal
import threading
from typing import Callable, Tuple

from agentd import logsetup
from agentd.agent import Agent
from agentd.api import StatusApiServer
from agentd.config import AgentdConfig, ConfigError
from agentd.wakeup import Wakeup

log = logging.getLogger(__name__)

API_POLL = 30.0


class AgentService:
    """Runs one Agent with its API until SIGTERM/SIGINT; SIGHUP or POST /reload reloads."""

    def __init__(self, cfg: AgentdConfig, load: Callable[[], AgentdConfig]):
        self.cfg, self._load = cfg, load
        self.agent = Agent(cfg)
        self.api = None
        self._api_thread = None
        self._wakeup = Wakeup()  # set by signal handlers: a self-pipe, not an Event
        self._reload_lock = threading.Lock()  # SIGHUP and POST /reload may coincide
        self._stop_requested = False
        self._reload_requested = False

    def start(self) -> None:
        """Open the API (raises OSError if its port is taken), then start the beat."""
        h = self.cfg.http
        if h.port:
            self.api = StatusApiServer(h.host, h.port, self.agent, self.reload)
            # a long poll keeps the idle agent's CPU near zero; stop() wakes it
            self._api_thread = threading.Thread(target=self.api.serve_forever, args=(API_POLL,),
                                                name="agentd-api", daemon=True)
            self._api_thread.start()
            log.info("status API on http://%s:%d", h.host, self.api.server_address[1])
        self.agent.start()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum, frame) -> None:
        self._stop_requested = True
        self._wakeup.set()

    def _on_reload(self, signum, frame) -> None:
        self._reload_requested = True
        self._wakeup.set()

    def run_forever(self) -> None:
        while not self._stop_requested:
            self._wakeup.wait(5.0)  # signal handlers set it: the timeout is only a safety net
            if self._reload_requested and not self._stop_requested:
                self._reload_requested = False
                self.reload()

    def reload(self) -> Tuple[bool, str]:
        """Re-read the config; a bad one is refused and the running one kept. Thread-safe."""
        with self._reload_lock:
            return self._reload()

    def _reload(self) -> Tuple[bool, str]:
        try:
            new = self._load()
            logsetup.configure(new.log.level, new.log.file, new.log.format)
            self.agent.reload(new)
        except (ConfigError, OSError, ValueError) as exc:  # ValueError: a bad key file
            log.error("reload refused, keeping the running configuration: %s", exc)
            return False, f"reload refused: {exc}"
        except Exception as exc:  # a reload must never kill the agent (under systemd: a loop)
            log.exception("reload failed, keeping the running configuration")
            return False, f"reload failed: {exc}"
        if (new.http.host, new.http.port) != (self.cfg.http.host, self.cfg.http.port):
            log.warning("http settings changed: the status API keeps its address until a restart")
        self.cfg = new
        log.info("configuration reloaded from %s", new.source)
        return True, f"configuration reloaded from {new.source}"

    def stop(self) -> None:
        """Say stopping to the daemon, then close the API (bounded)."""
        self.agent.stop()
        if self.api is not None:
            self.api.stop(2.0)
