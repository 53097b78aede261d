"""agentd's configuration: defaults < YAML file < environment < command line.

Environment: AGENTD_ + the key's path upper-cased ("." -> "_"); the Go agent's names
(AGENT_AGENT_ID, AGENT_HEARTBEAT_SOCKET_PATH, ...) are read too, and AGENTD_ wins.
"""

import os
import re
import socket
from dataclasses import dataclass, field
from typing import Dict, Optional

from agentd import __version__, convert as cv
from agentd.configkit import ConfigError, key, load, section  # noqa: F401 (ConfigError is re-exported)
from agentd.logsetup import LogConfig

DEFAULT_PATH = "/etc/agentd/agentd.yaml"
ENV_PREFIX = "AGENTD_"
GO_ENV_ALIASES = {
    "AGENT_AGENT_ID": "agent_id",
    "AGENT_HEARTBEAT_SOCKET_PATH": "heartbeat.socket_path",
    "AGENT_HEARTBEAT_INTERVAL": "heartbeat.interval",
    "AGENT_HTTP_PORT": "http.port",
    "AGENT_LOG_LEVEL": "log.level",
}
_AGENT_ID = re.compile(r"[A-Za-z0-9._:@-]{0,128}\Z")


def agent_id(value) -> str:
    """Empty (meaning <hostname>-agentd) or 1-128 characters of A-Z a-z 0-9 . _ : @ -."""
    text = cv.text(value)
    if not _AGENT_ID.match(text):
        raise ValueError("1-128 characters of A-Z a-z 0-9 . _ : @ - (or empty for <hostname>-agentd)")
    return text


@dataclass(frozen=True)
class HeartbeatConfig:
    transport: str = key("unix", cv.choice("unix", "http"))
    socket_path: str = key("/run/hbdaemon/hbdaemon.sock", cv.socket_path)
    url: str = key("http://127.0.0.1:8690/heartbeat", cv.http_url)
    auth_token_file: str = key("", cv.optional_path)
    interval: float = key(30.0, cv.positive_duration)
    timeout: float = key(5.0, cv.positive_duration)
    reconnect_min: float = key(1.0, cv.positive_duration)
    reconnect_max: float = key(30.0, cv.positive_duration)


@dataclass(frozen=True)
class ApiConfig:
    host: str = key("127.0.0.1", cv.text)
    port: int = key(8691, cv.port)


@dataclass(frozen=True)
class AgentdConfig:
    agent_id: str = key("", agent_id)
    version: str = key("", cv.text)
    heartbeat: HeartbeatConfig = section(HeartbeatConfig)
    http: ApiConfig = section(ApiConfig)
    log: LogConfig = section(LogConfig)
    source: str = field(default="(defaults)", compare=False)

    @property
    def effective_agent_id(self) -> str:
        return self.agent_id or f"{socket.gethostname().split('.')[0]}-agentd"[:128]

    @property
    def effective_version(self) -> str:
        return self.version or __version__


MAX_WAIT = 86400.0  # seconds: the longest interval, timeout or backoff agentd accepts


def load_config(path: Optional[str] = None, environ: Optional[Dict[str, str]] = None,
                overrides: Optional[Dict[str, str]] = None, required: bool = False) -> AgentdConfig:
    """Build the AgentdConfig; a missing default file means defaults. Raises ConfigError."""
    cfg, reader = load(AgentdConfig, path or DEFAULT_PATH, env_prefix=ENV_PREFIX,
                       environ=os.environ if environ is None else environ,
                       env_aliases=GO_ENV_ALIASES, overrides=overrides, required=required)
    hb = cfg.heartbeat
    for name in ("interval", "timeout", "reconnect_min", "reconnect_max"):
        if getattr(hb, name) > MAX_WAIT:  # a timer that far out cannot be set (OverflowError)
            raise reader.fail(f"heartbeat.{name}", f"at most {MAX_WAIT // 3600:.0f}h")
    if hb.reconnect_min > hb.reconnect_max:
        raise reader.fail("heartbeat.reconnect_min",
                          f"must not exceed reconnect_max ({hb.reconnect_max:g}s)")
    if len(cfg.version) > 64:
        raise reader.fail("version", "at most 64 characters")
    return cfg
