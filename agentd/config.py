"""agentd's configuration: defaults < YAML file < environment < command line.

Environment: AGENTD_ + the key's path upper-cased ("." -> "_"); the Go agent's names
(AGENT_AGENT_ID, AGENT_HEARTBEAT_SOCKET_PATH, ...) are read too, and AGENTD_ wins.
"""

import os
import re
import socket
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from agentd import __version__, convert as cv
from agentd.configkit import (ConfigError, REQUIRED, items, key, load,  # noqa: F401 (re-exported)
                              section)
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
    transport: str = key("unix", cv.choice("unix", "http", "udp"))
    socket_path: str = key("/run/hbdaemon/hbdaemon.sock", cv.socket_path)
    url: str = key("http://127.0.0.1:8690/heartbeat", cv.web_url)  # http:// or https://
    auth_token_file: str = key("", cv.optional_path)
    interval: float = key(30.0, cv.positive_duration)
    timeout: float = key(5.0, cv.positive_duration)
    reconnect_min: float = key(1.0, cv.positive_duration)
    reconnect_max: float = key(30.0, cv.positive_duration)
    udp_target: str = key("", cv.host_port)  # transport udp: the daemon's HOST:PORT
    key_file: str = key("", cv.optional_path)  # transport udp: one line KEYID SECRET
    ca_file: str = key("", cv.optional_path)  # an https:// url: CAs to trust (PEM); "": system's


def target_id(value) -> str:
    """A watched target's agent_id: 1-128 characters of A-Z a-z 0-9 . _ : @ -."""
    text = agent_id(value)
    if not text:
        raise ValueError("1-128 characters of A-Z a-z 0-9 . _ : @ -")
    return text


def regex(value) -> str:
    """A Python regular expression (searched in a process's command line)."""
    text = cv.text(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"a valid regular expression ({exc})") from None
    return text


def unit_name(value) -> str:
    """A systemd unit name such as nginx.service or postgresql@15-main.service."""
    text = cv.text(value)
    if text and not re.match(r"[A-Za-z0-9:_.@\\-]{1,255}\Z", text):
        raise ValueError("a systemd unit name (letters, digits and : _ . @ \\ -)")
    return text


def tcp_target(value) -> str:
    text = cv.text(value)
    if text:
        from agentd.probes import host_port
        host_port(text)
    return text


@dataclass(frozen=True)
class ProbeConfig:
    """Is the watched process answering? At most one of tcp, http or file."""

    tcp: str = key("", tcp_target)
    http: str = key("", cv.optional_http_url)
    file: str = key("", cv.optional_path)
    max_age: float = key(60.0, cv.positive_duration)   # for file: written at most this long ago
    timeout: float = key(2.0, cv.positive_duration)    # for tcp and http
    failures: int = key(3, cv.integer(1, 1000))        # in a row: the target is unresponsive


@dataclass(frozen=True)
class WatchConfig:
    """One process agentd watches and reports as an agent of its own (`watch:` list)."""

    agent_id: str = key(REQUIRED, target_id)
    pidfile: str = key("", cv.optional_path)
    unit: str = key("", unit_name)
    match: str = key("", regex)
    probe: ProbeConfig = section(ProbeConfig)

    @property
    def how(self) -> str:
        """`pidfile /run/nginx.pid`, `unit nginx.service` or `match '^nginx'`, for logs."""
        if self.pidfile:
            return f"pidfile {self.pidfile}"
        return f"unit {self.unit}" if self.unit else f"match {self.match!r}"


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
    watch: Tuple[WatchConfig, ...] = items(WatchConfig)
    source: str = field(default="(defaults)", compare=False)

    @property
    def effective_agent_id(self) -> str:
        return self.agent_id or f"{socket.gethostname().split('.')[0]}-agentd"[:128]

    @property
    def effective_version(self) -> str:
        return self.version or __version__


SYSTEMD_RUNNING = "/run/systemd/system"  # exists only while systemd is the init system
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
    if hb.transport == "udp":
        for name in ("udp_target", "key_file"):
            if not getattr(hb, name):
                raise reader.fail(f"heartbeat.{name}", "required with transport udp "
                                  "(the daemon's HOST:PORT; a file with one line KEYID SECRET)")
    if len(cfg.version) > 64:
        raise reader.fail("version", "at most 64 characters")
    seen = {cfg.effective_agent_id: "agentd's own agent_id"}
    for n, target in enumerate(cfg.watch):
        where = f"watch[{n}]"
        kinds = [k for k in ("pidfile", "unit", "match") if getattr(target, k)]
        if len(kinds) != 1:
            raise reader.fail(f"{where}.agent_id", "each watch entry needs exactly one of "
                              f"pidfile, unit or match (got {', '.join(kinds) or 'none'})")
        if target.unit and not os.path.isdir(SYSTEMD_RUNNING):
            raise reader.fail(f"{where}.unit", "this host does not run systemd: watch the "
                              "service by pidfile or match instead")
        if target.agent_id in seen:
            raise reader.fail(f"{where}.agent_id", f"{target.agent_id!r} is already "
                              f"{seen[target.agent_id]}")
        seen[target.agent_id] = f"the agent_id of {where}"
        probes = [k for k in ("tcp", "http", "file") if getattr(target.probe, k)]
        if len(probes) > 1:
            raise reader.fail(f"{where}.probe", f"one of tcp, http or file (got {', '.join(probes)})")
        if target.probe.timeout > MAX_WAIT or target.probe.max_age > 100 * MAX_WAIT:
            raise reader.fail(f"{where}.probe.timeout", f"at most {MAX_WAIT // 3600:.0f}h")
    return cfg
