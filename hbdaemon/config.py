"""The daemon's configuration: defaults < YAML file < environment < command line.

Every key is declared once below as a dataclass field with its converter; the loader
walks those declarations, so the key names, the environment names
(HBDAEMON_ + path upper-cased, "." -> "_") and the checks cannot drift apart.
"""

import fnmatch
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from hbdaemon import convert as cv
from hbdaemon.configkit import REQUIRED, ConfigError, items, key, load, section
from hbdaemon.logsetup import LogConfig
from hbdaemon.protocol import valid_agent_id

DEFAULT_PATH = "/etc/hbdaemon/hbdaemon.yaml"
ENV_PREFIX = "HBDAEMON_"
STATES = ("unknown", "healthy", "over_threshold", "no_heartbeat", "dead", "stopped")
FAILING_STATES = ("no_heartbeat", "dead", "over_threshold")  # an agent here is an alert
EVENT_KINDS = ("hook_suspended", "id_conflict")  # events that are not a change of state


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: str = key("/var/lib/hbdaemon", cv.absolute_path)
    shutdown_timeout: float = key(10.0, cv.duration)
    max_events: int = key(10000, cv.integer(10, 10_000_000))
    store_interval: float = key(2.0, cv.positive_duration)
    history_step: float = key(10.0, cv.positive_duration)


@dataclass(frozen=True)
class UnixConfig:
    socket_path: str = key("/run/hbdaemon/hbdaemon.sock", cv.socket_path)
    socket_mode: int = key(0o660, cv.file_mode)
    socket_group: str = key("hbdaemon", cv.text)
    verify_peer_pid: bool = key(True, cv.boolean)
    max_connections: int = key(1024, cv.integer(1, 1_000_000))
    idle_timeout: Optional[float] = key(None, cv.duration)  # None: 3 x heartbeat_timeout


@dataclass(frozen=True)
class TokenConfig:
    """A credential that speaks only for the agent ids matching its globs."""

    token_file: str = key(REQUIRED, cv.absolute_path)
    agents: Tuple[str, ...] = key(REQUIRED, cv.glob_list)


@dataclass(frozen=True)
class HttpConfig:
    host: str = key("127.0.0.1", cv.text)
    port: int = key(8690, cv.port)
    workers: int = key(8, cv.integer(1, 256))
    queue_size: int = key(1000, cv.integer(1, 1_000_000))
    auth_token_file: str = key("", cv.optional_path)
    tokens: Tuple[TokenConfig, ...] = items(TokenConfig)
    idle_timeout: float = key(30.0, cv.positive_duration)
    max_connections: int = key(256, cv.integer(1, 100_000))
    tls_cert_file: str = key("", cv.optional_path)  # with tls_key_file: HTTPS only (PEM)
    tls_key_file: str = key("", cv.optional_path)


def _agent_id(value) -> str:
    """Empty, or an id the upstream's protocol accepts."""
    text = cv.text(value).strip()
    if text and not valid_agent_id(text):
        raise ValueError("1-128 characters of A-Z a-z 0-9 . _ : @ - (or empty for <hostname>-hbdaemon)")
    return text


@dataclass(frozen=True)
class UdpConfig:
    host: str = key("127.0.0.1", cv.text)
    port: int = key(0, cv.port)  # 0: no UDP listener
    keys_file: str = key("", cv.optional_path)  # required with a port: KEYID SECRET [GLOB ...]
    max_skew: float = key(60.0, cv.positive_duration)


def _manager_url(value) -> str:
    """Empty, or one or more upstreams (a list, or separated by blanks or commas; an HA
    pair of central daemons each gets every report): http(s):// URLs, or udp://HOST:PORT
    (signed datagrams, manager.key_file). Kept as one string, separated by blanks."""
    if isinstance(value, list):
        urls = [cv.text(v).strip() for v in value]
    else:
        urls = cv.text(value).replace(",", " ").split()
    if len(urls) > 8:
        raise ValueError("at most 8 upstreams")
    out = []
    for url in urls:
        if url.startswith("udp://"):
            if not cv.host_port(url[len("udp://"):]):
                raise ValueError("udp://HOST:PORT")
            out.append(url)
        else:
            out.append(cv.web_url(url))
    if len(set(out)) != len(out):
        raise ValueError("an upstream is listed twice")
    return " ".join(out)


@dataclass(frozen=True)
class MetricsConfig:
    max_agent_series: int = key(10_000, cv.integer(0, 10_000_000))  # per-agent series kept


@dataclass(frozen=True)
class ManagerConfig:
    url: str = key("", _manager_url)
    heartbeat_interval: float = key(60.0, cv.positive_duration)
    reconnect_interval: float = key(10.0, cv.positive_duration)
    timeout: float = key(30.0, cv.positive_duration)
    agent_id: str = key("", _agent_id)
    auth_token_file: str = key("", cv.optional_path)
    key_file: str = key("", cv.optional_path)  # with a udp:// url: one line KEYID SECRET
    ca_file: str = key("", cv.optional_path)  # with an https:// url: CAs to trust (PEM)

    @property
    def urls(self) -> List[str]:
        return self.url.split()


@dataclass(frozen=True)
class HealthCheckConfig:
    heartbeat_timeout: float = key(90.0, cv.positive_duration)
    cpu_threshold: float = key(50.0, cv.percent)
    memory_threshold: int = key(524288000, cv.byte_size)
    threshold_duration: float = key(60.0, cv.duration)
    recovery_count: int = key(2, cv.integer(1, 1000))
    flap_window: float = key(600.0, cv.positive_duration)
    flap_threshold: int = key(5, cv.integer(2, 1000))
    stall_threshold: float = key(5.0, cv.positive_duration)
    forget_after: float = key(86400.0, cv.positive_duration)
    forget_silent_after: float = key(7 * 86400.0, cv.positive_duration)


@dataclass(frozen=True)
class OverrideConfig:
    match: str = key(REQUIRED, cv.text)
    heartbeat_timeout: Optional[float] = key(None, cv.positive_duration)
    cpu_threshold: Optional[float] = key(None, cv.percent)
    memory_threshold: Optional[int] = key(None, cv.byte_size)
    threshold_duration: Optional[float] = key(None, cv.duration)
    recovery_count: Optional[int] = key(None, cv.integer(1, 1000))

    def matches(self, agent_id: str) -> bool:
        return fnmatch.fnmatchcase(agent_id, self.match)


@dataclass(frozen=True)
class RestartConfig:
    max_retries: int = key(10, cv.integer(1, 1_000_000))
    backoff_base: float = key(10.0, cv.duration)
    backoff_max: float = key(60.0, cv.duration)


@dataclass(frozen=True)
class AgentConfig:
    max_agents: int = key(50_000, cv.integer(1, 10_000_000))
    new_agents_per_minute: int = key(1000, cv.integer(0, 10_000_000))  # per uid / address
    health_check: HealthCheckConfig = section(HealthCheckConfig)
    overrides: Tuple[OverrideConfig, ...] = items(OverrideConfig)
    restart: RestartConfig = section(RestartConfig)


@dataclass(frozen=True)
class HookConfig:
    on: Tuple[str, ...] = key(REQUIRED, cv.word_list(*STATES, *EVENT_KINDS))
    command: Tuple[str, ...] = key(REQUIRED, cv.argv)
    timeout: float = key(30.0, cv.positive_duration)
    name: str = key("", cv.text)
    agents: Tuple[str, ...] = key((), cv.glob_list)  # only for these ids (globs); (): all

    def covers(self, agent_id: str) -> bool:
        return not self.agents or any(fnmatch.fnmatchcase(agent_id, g) for g in self.agents)

    @property
    def label(self) -> str:
        return self.name or os.path.basename(self.command[0])


@dataclass(frozen=True)
class AlertmanagerConfig:
    urls: Tuple[str, ...] = key((), cv.url_list)  # each gets every alert (one HA cluster)
    resend_interval: float = key(60.0, cv.positive_duration)
    labels: Tuple[Tuple[str, str], ...] = key((), cv.label_map)
    timeout: float = key(10.0, cv.positive_duration)
    # the status page's address as a person reaches it (generatorURL); empty: this
    # daemon's HTTP listener, if it has one
    external_url: str = key("", lambda v: cv.web_url(v) if cv.text(v).strip() else "")


@dataclass(frozen=True)
class WebhookConfig:
    url: str = key(REQUIRED, cv.web_url)
    on: Tuple[str, ...] = key(FAILING_STATES + ("healthy", "stopped"),
                              cv.word_list(*STATES, *EVENT_KINDS))
    secret_file: str = key("", cv.optional_path)  # set: X-Hbdaemon-Signature: sha256=<HMAC>
    timeout: float = key(10.0, cv.positive_duration)
    name: str = key("", cv.text)
    agents: Tuple[str, ...] = key((), cv.glob_list)  # only for these ids (globs); (): all
    queue_size: int = key(1000, cv.integer(1, 1_000_000))
    max_retries: int = key(5, cv.integer(0, 1000))
    backoff_base: float = key(1.0, cv.positive_duration)
    backoff_max: float = key(60.0, cv.positive_duration)

    def covers(self, agent_id: str) -> bool:
        return not self.agents or any(fnmatch.fnmatchcase(agent_id, g) for g in self.agents)

    @property
    def label(self) -> str:
        return self.name or redacted_url(self.url)


def redacted_url(url: str) -> str:
    """A URL fit for logs and metrics: no user, password, query or fragment (a Slack or
    PagerDuty webhook carries its secret in the path, so only the host is shown then)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    path = parts.path if len(parts.path) <= 32 and not re.search(r"[A-Za-z0-9_-]{20,}", parts.path) \
        else "/…"
    return f"{parts.scheme}://{host}{port}{path}"


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = section(DaemonConfig)
    log: LogConfig = section(LogConfig)
    unix: UnixConfig = section(UnixConfig)
    http: HttpConfig = section(HttpConfig)
    udp: UdpConfig = section(UdpConfig)
    metrics: MetricsConfig = section(MetricsConfig)
    manager: ManagerConfig = section(ManagerConfig)
    agent: AgentConfig = section(AgentConfig)
    hooks: Tuple[HookConfig, ...] = items(HookConfig)
    alertmanager: AlertmanagerConfig = section(AlertmanagerConfig)
    webhooks: Tuple[WebhookConfig, ...] = items(WebhookConfig)
    source: str = field(default="(defaults)", compare=False)

    @property
    def unix_idle_timeout(self) -> float:
        idle = self.unix.idle_timeout
        return 3 * self.agent.health_check.heartbeat_timeout if idle is None else idle


def load_config(path: Optional[str] = None, environ: Optional[Dict[str, str]] = None,
                overrides: Optional[Dict[str, str]] = None, required: bool = False) -> Config:
    """Build the Config from the file at `path` (default DEFAULT_PATH), `environ` and `overrides`.

    A missing default file means built-in defaults; a missing file named by the operator
    (`required`) is an error. Raises ConfigError.
    """
    cfg, reader = load(Config, path or DEFAULT_PATH, env_prefix=ENV_PREFIX,
                       environ=os.environ if environ is None else environ,
                       overrides=overrides, required=required)
    if bool(cfg.http.tls_cert_file) != bool(cfg.http.tls_key_file):
        raise reader.fail("http.tls_key_file" if cfg.http.tls_cert_file else "http.tls_cert_file",
                          "set both http.tls_cert_file and http.tls_key_file, or neither")
    if any(u.startswith("udp://") for u in cfg.manager.urls) and not cfg.manager.key_file:
        raise reader.fail("manager.key_file", "required with a udp:// manager.url: one line "
                                              "KEYID SECRET")
    if cfg.udp.port and not cfg.udp.keys_file:
        raise reader.fail("udp.keys_file", "required when udp.port is set: lines "
                                           "KEYID SECRET [GLOB ...]")
    rs = cfg.agent.restart
    if rs.backoff_base > rs.backoff_max:
        raise reader.fail("agent.restart.backoff_base",
                          f"must not exceed backoff_max ({rs.backoff_max:g}s)")
    return cfg


def read_token(path: str, source: str, key: str = "http.auth_token_file") -> Optional[bytes]:
    """The bearer token from `path` (surrounding whitespace stripped), or None if unset."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            token = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"{source}: {key}: cannot read {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"{source}: {key}: {path} is empty")
    return token
