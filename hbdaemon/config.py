"""The daemon's configuration: defaults < YAML file < environment < command line.

Every key is declared once below as a dataclass field with its converter; the loader
walks those declarations, so the key names, the environment names
(HBDAEMON_ + path upper-cased, "." -> "_") and the checks cannot drift apart.
"""

import dataclasses
import fnmatch
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import yaml

from hbdaemon import convert as cv

DEFAULT_PATH = "/etc/hbdaemon/hbdaemon.yaml"
ENV_PREFIX = "HBDAEMON_"
STATES = ("unknown", "healthy", "over_threshold", "no_heartbeat", "dead", "stopped")
_REQUIRED = object()


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so a hook's `on:` key stays "on"."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "tTfF":
    _Loader.yaml_implicit_resolvers.setdefault(_first, []).insert(0, (
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")))


def yaml_load(text: str):
    """Parse YAML as this program reads it (YAML 1.2 booleans)."""
    return yaml.load(text, Loader=_Loader)


class ConfigError(Exception):
    """A configuration problem, worded for the operator: where, which key, what is allowed."""


def key(default, convert, doc: str = ""):
    """Declare a scalar key with its default and converter."""
    return field(default=default, metadata={"convert": convert, "doc": doc})


def section(cls):
    """Declare a nested mapping of keys."""
    return field(default_factory=cls, metadata={"section": cls})


def items(cls):
    """Declare a list of mappings, each read as `cls`."""
    return field(default=(), metadata={"items": cls})


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: str = key("/var/lib/hbdaemon", cv.absolute_path)
    shutdown_timeout: float = key(10.0, cv.duration)
    max_events: int = key(10000, cv.integer(10, 10_000_000))
    store_interval: float = key(2.0, cv.positive_duration)


@dataclass(frozen=True)
class LogConfig:
    level: str = key("info", cv.choice("debug", "info", "warning", "error"))
    file: str = key("", cv.optional_path)
    format: str = key("text", cv.choice("text", "json"))


@dataclass(frozen=True)
class UnixConfig:
    socket_path: str = key("/run/hbdaemon/hbdaemon.sock", cv.socket_path)
    socket_mode: int = key(0o660, cv.file_mode)
    socket_group: str = key("hbdaemon", cv.text)
    verify_peer_pid: bool = key(True, cv.boolean)
    max_connections: int = key(1024, cv.integer(1, 1_000_000))
    idle_timeout: Optional[float] = key(None, cv.duration)  # None: 3 x heartbeat_timeout


@dataclass(frozen=True)
class HttpConfig:
    host: str = key("127.0.0.1", cv.text)
    port: int = key(8690, cv.port)
    workers: int = key(8, cv.integer(1, 256))
    queue_size: int = key(1000, cv.integer(1, 1_000_000))
    auth_token_file: str = key("", cv.optional_path)
    idle_timeout: float = key(30.0, cv.positive_duration)
    max_connections: int = key(256, cv.integer(1, 100_000))


@dataclass(frozen=True)
class ManagerConfig:
    url: str = key("", cv.text)
    heartbeat_interval: float = key(60.0, cv.positive_duration)
    reconnect_interval: float = key(10.0, cv.positive_duration)
    timeout: float = key(30.0, cv.positive_duration)


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


@dataclass(frozen=True)
class OverrideConfig:
    match: str = key(_REQUIRED, cv.text)
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
    health_check: HealthCheckConfig = section(HealthCheckConfig)
    overrides: Tuple[OverrideConfig, ...] = items(OverrideConfig)
    restart: RestartConfig = section(RestartConfig)


@dataclass(frozen=True)
class HookConfig:
    on: Tuple[str, ...] = key(_REQUIRED, cv.word_list(*STATES, "hook_suspended"))
    command: Tuple[str, ...] = key(_REQUIRED, cv.argv)
    timeout: float = key(30.0, cv.positive_duration)
    name: str = key("", cv.text)

    @property
    def label(self) -> str:
        return self.name or os.path.basename(self.command[0])


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = section(DaemonConfig)
    log: LogConfig = section(LogConfig)
    unix: UnixConfig = section(UnixConfig)
    http: HttpConfig = section(HttpConfig)
    manager: ManagerConfig = section(ManagerConfig)
    agent: AgentConfig = section(AgentConfig)
    hooks: Tuple[HookConfig, ...] = items(HookConfig)
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
    path = path or DEFAULT_PATH
    raw, lines = _read_yaml(path, required)
    origins = {}
    for dotted, value in _environment(environ if environ is not None else os.environ):
        _put(raw, dotted, value, origins, f"environment {ENV_PREFIX}{_env_suffix(dotted)}")
    for dotted, value in (overrides or {}).items():
        if dotted not in _scalar_paths(Config):
            raise ConfigError(f"--set {dotted}: unknown key; see {DEFAULT_PATH} for the keys")
        _put(raw, dotted, value, origins, f"--set {dotted}")
    reader = _Reader(path if os.path.exists(path) else "(defaults)", lines, origins)
    cfg = reader.build(Config, raw, "")
    rs = cfg.agent.restart
    if rs.backoff_base > rs.backoff_max:
        raise ConfigError(f"{reader.where('agent.restart.backoff_base')}agent.restart.backoff_base: "
                          f"must not exceed backoff_max ({rs.backoff_max:g}s)")
    return dataclasses.replace(cfg, source=reader.source)


def _read_yaml(path: str, required: bool):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: no such file") from None
        return {}, {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (daemon:, log:, ...)")
    lines = {}
    _key_lines(node, "", lines)
    return data, lines


def _key_lines(node, prefix: str, out: dict) -> None:
    """Record the line of every key, so errors can point at it."""
    if isinstance(node, yaml.MappingNode):
        for knode, vnode in node.value:
            dotted = f"{prefix}{knode.value}"
            out[dotted] = knode.start_mark.line + 1
            _key_lines(vnode, dotted + ".", out)
    elif isinstance(node, yaml.SequenceNode):
        base = prefix.rstrip(".")
        for i, item in enumerate(node.value):
            out[f"{base}[{i}]"] = item.start_mark.line + 1
            _key_lines(item, f"{base}[{i}].", out)


def _scalar_paths(cls, prefix: str = "") -> Dict[str, dataclasses.Field]:
    """Every settable key path (sections flattened; lists count as one key)."""
    out = {}
    for f in dataclasses.fields(cls):
        if "section" in f.metadata:
            out.update(_scalar_paths(f.metadata["section"], f"{prefix}{f.name}."))
        elif f.metadata:
            out[prefix + f.name] = f
    return out


def _env_suffix(dotted: str) -> str:
    return dotted.upper().replace(".", "_")


def _environment(environ):
    for dotted, f in _scalar_paths(Config).items():
        value = environ.get(ENV_PREFIX + _env_suffix(dotted))
        if value is not None:
            yield dotted, value


def _put(raw: dict, dotted: str, value, origins: dict, origin: str) -> None:
    f = _scalar_paths(Config)[dotted]
    if "items" in f.metadata and isinstance(value, str):
        try:
            value = yaml_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"{origin}: {dotted}: not valid YAML for a list") from None
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value
    origins[dotted] = origin


class _Reader:
    """Walks the declarations, converting raw values and wording errors."""

    def __init__(self, source: str, lines: dict, origins: dict):
        self.source, self.lines, self.origins = source, lines, origins

    def where(self, dotted: str) -> str:
        if dotted in self.origins:
            return self.origins[dotted] + ": "
        line = self.lines.get(dotted)
        return f"{self.source}, line {line}: " if line else f"{self.source}: "

    def fail(self, dotted: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where(dotted)}{dotted}: {message}")

    def build(self, cls, data, prefix: str):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.fail(prefix.rstrip(".") or "(top)", "must be a mapping of keys")
        known = {f.name: f for f in dataclasses.fields(cls) if f.metadata}
        for name in data:
            if name not in known:
                raise self.fail(f"{prefix}{name}",
                                f"unknown key; allowed here: {', '.join(sorted(known))}")
        values = {}
        for name, f in known.items():
            dotted = prefix + name
            if "section" in f.metadata:
                values[name] = self.build(f.metadata["section"], data.get(name), dotted + ".")
            elif "items" in f.metadata:
                values[name] = self.build_items(f.metadata["items"], data.get(name), dotted)
            elif name in data:
                values[name] = self.convert(f, data[name], dotted)
            elif f.default is _REQUIRED:
                raise self.fail(dotted, "required")
        return cls(**values)

    def build_items(self, cls, data, dotted: str) -> tuple:
        if data is None:
            return ()
        if not isinstance(data, list):
            raise self.fail(dotted, "must be a list")
        return tuple(self.build(cls, item, f"{dotted}[{i}].") for i, item in enumerate(data))

    def convert(self, f, value, dotted: str):
        if f.default is None and (value is None or value == ""):
            return None
        try:
            return f.metadata["convert"](value)
        except ValueError as exc:
            raise self.fail(dotted, f"{value!r} is not allowed; expected {exc}") from None
