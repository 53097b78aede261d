"""The daemon: wires the components, starts them in order, reloads and stops them."""

import dataclasses
import logging
import os
import resource
import signal
import socket
import ssl
import time
from typing import Callable, Dict, List, Optional

from hbdaemon import __version__, logsetup, metrics, process
from hbdaemon.alerting import Alerting, read_secrets
from hbdaemon.api import Api
from hbdaemon.auth import Credentials
from hbdaemon.checker import HealthChecker
from hbdaemon.config import FAILING_STATES, Config, ConfigError, read_token
from hbdaemon.connlimit import NEW_ID_SLOTS, FairGate
from hbdaemon.events import EventLog, EventPump
from hbdaemon.health import PolicySet
from hbdaemon.hooks import HookRunner
from hbdaemon.http_request import is_loopback_address
from hbdaemon.httpclient import regular_file, tls_context
from hbdaemon.http_server import TRANSPORT as HTTP, HeartbeatHTTPServer
from hbdaemon.protocol import parse_rfc3339
from hbdaemon.registry import Registry
from hbdaemon.sdnotify import Notifier
from hbdaemon.silences import Silences
from hbdaemon.stats import ReceiverStats
from hbdaemon.store import Store
from hbdaemon.threads import Component, guard, join, problems
from hbdaemon.unix_server import UnixHeartbeatServer, group_id
from hbdaemon.keyfile import Key, KeysFileError, read_keys, read_one_key
from hbdaemon.udp_server import TRANSPORT as UDP, HeartbeatUDPServer
from hbdaemon.upstream import UpstreamReporter, daemon_id
from hbdaemon.wakeup import Wakeup
from hbdaemon.workers import WorkerPool

log = logging.getLogger(__name__)

LISTENER_STUCK = 30.0  # seconds without a turn of a listener's loop (it turns every 0.5 s)


class StartupError(Exception):
    """The daemon cannot start (socket in use, state dir unusable, port taken, ...)."""


def preflight(cfg: Config) -> Credentials:
    """Checks that need the host (group, token, key and secret files); returns the HTTP
    credentials.
    Raises ConfigError."""
    if cfg.unix.socket_group:
        try:
            group_id(cfg.unix.socket_group)
        except ValueError as exc:
            raise ConfigError(f"{cfg.source}: unix.socket_group: {exc}") from None
    read_token(cfg.manager.auth_token_file, cfg.source, "manager.auth_token_file")
    manager_key(cfg)
    udp_keys(cfg)
    read_secrets(cfg)
    server_tls(cfg)
    manager_tls(cfg)
    return Credentials.from_config(cfg)


def server_tls(cfg: Config) -> Optional[ssl.SSLContext]:
    """The HTTP listener's TLS context (None: plain HTTP). Raises ConfigError."""
    if not cfg.http.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        regular_file(cfg.http.tls_cert_file)
        regular_file(cfg.http.tls_key_file)
        context.load_cert_chain(cfg.http.tls_cert_file, cfg.http.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{cfg.source}: http.tls_cert_file/tls_key_file: cannot load "
                          f"{cfg.http.tls_cert_file} with {cfg.http.tls_key_file}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    return context


def manager_key(cfg: Config) -> Optional[Key]:
    """The key that signs the upstream reports sent to a udp:// manager.url (None: not UDP).
    Raises ConfigError."""
    if not any(url.startswith("udp://") for url in cfg.manager.urls):
        return None
    try:
        return read_one_key(cfg.manager.key_file)
    except KeysFileError as exc:
        raise ConfigError(f"{cfg.source}: manager.key_file: {exc}") from None


def manager_tls(cfg: Config) -> Optional[ssl.SSLContext]:
    """How an https:// manager.url is verified: manager.ca_file, or the system's CAs.
    Raises ConfigError."""
    if not any(url.startswith("https://") for url in cfg.manager.urls):
        return None
    try:
        return tls_context(cfg.manager.ca_file)
    except OSError as exc:
        raise ConfigError(f"{cfg.source}: manager.ca_file: cannot load {cfg.manager.ca_file}: "
                          f"{exc.strerror or exc}") from None


def udp_keys(cfg: Config) -> Optional[Dict[bytes, Key]]:
    """The UDP listener's keys (None: no listener). Raises ConfigError."""
    if not cfg.udp.port:
        return None
    try:
        keys = read_keys(cfg.udp.keys_file)
    except KeysFileError as exc:
        raise ConfigError(f"{cfg.source}: udp.keys_file: {exc}") from None
    if os.stat(cfg.udp.keys_file).st_mode & 0o004:
        log.warning("udp: %s is readable by every user: anyone on this host can sign "
                    "heartbeats (chmod o-r)", cfg.udp.keys_file)
    return {key.id.encode(): key for key in keys}


def raise_open_file_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE towards the hard one so that every permitted connection
    (and its pidfd) fits: the usual soft limit is 1024, below what the defaults allow."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open file limit from %d to %d: %s", soft, target, exc)
            return
    if target < needed:
        log.warning("the open file limit (%d) is below the %d that the connection limits need; "
                    "connections beyond it wait until a descriptor frees (raise LimitNOFILE= "
                    "or ulimit -n)", target, needed)


def page_url(cfg: Config) -> str:
    """Where a person finds the status page (alerts link to it): alertmanager.external_url,
    or this daemon's HTTP listener (a wildcard address named by the host's name); empty
    without a listener."""
    if cfg.alertmanager.external_url:
        return cfg.alertmanager.external_url.rstrip("/") + "/"
    if not cfg.http.port:
        return ""
    host = cfg.http.host
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    scheme = "https" if cfg.http.tls_cert_file else "http"
    return f"{scheme}://[{host}]:{cfg.http.port}/" if ":" in host else \
        f"{scheme}://{host}:{cfg.http.port}/"


class Daemon:
    """One running hbdaemon. start() and stop() are called from the main thread."""

    def __init__(self, cfg: Config, reload_config: Callable[[], Config] = None,
                 notifier: Optional[Notifier] = None):
        self.cfg = cfg
        self._reload_config = reload_config
        self.notifier = notifier or Notifier()
        self.credentials = preflight(cfg)
        self._udp_keys = udp_keys(cfg)
        hc = cfg.agent.health_check
        self.stats = ReceiverStats()
        # events are shown once written (a kill -9 cannot take back what was seen), and
        # their ids are reserved in the store before use (never given out twice)
        self.events = EventLog(cfg.daemon.max_events, durable=True,
                               reserve=lambda upto: self.store.reserve_ids(upto),
                               reserve_ahead=lambda upto: self.store.reserve_ahead(upto))
        # the registry's events are recorded (logged, stored, hooked) on hb-events, never on
        # the receiver thread that applied the heartbeat
        self.event_pump = EventPump(self.events.record, self.events)
        self.registry = Registry(PolicySet(hc, cfg.agent.overrides), self.event_pump.put,
                                 history_step=cfg.daemon.history_step,
                                 max_agents=cfg.agent.max_agents,
                                 new_agents_per_minute=cfg.agent.new_agents_per_minute,
                                 on_notice=self.event_pump.notice)
        self.registry.reserved_ids = frozenset((daemon_id(cfg.manager),))
        self.silences = Silences(cfg.alertmanager, cfg.daemon.state_dir, daemon_id(cfg.manager))
        self.hooks = HookRunner(cfg.hooks, cfg.agent.restart, self.events.record, self.registry.get,
                                silenced=self.silences.silenced)
        self.alerting = Alerting(cfg, read_secrets(cfg), daemon_id(cfg.manager), page_url(cfg),
                                 self.registry.get, silenced=self.silences.silenced,
                                 daemon_role=self.registry.daemon_role)
        self.store = Store(cfg.daemon.state_dir, cfg.daemon.max_events, cfg.daemon.store_interval,
                           self.registry.take_dirty, self.hooks.take_dirty,
                           self.alerting.take_dirty)
        self.checker = HealthChecker(self.registry, hc.stall_threshold)
        # Intake that is not a known agent's heartbeat (new ids, refusals, the API) passes
        # one gate shared by both receivers, a few threads at a time, in order of arrival:
        # a flood of new ids then cannot keep a crash verdict or a known agent from the GIL.
        self.gate = FairGate(NEW_ID_SLOTS)
        self._start_times = process.StartTimes()  # of local HTTP agents' processes
        self.pool = WorkerPool(self._process_http, cfg.http.workers, cfg.http.queue_size,
                               inline=True)
        self.api = Api(self.registry, self.events, self.stats, self.extra_stats,
                       self.render_metrics, problems=self.problems, silences=self.silences)
        self.upstreams: List[UpstreamReporter] = []  # one per manager.url
        self.unix: Optional[UnixHeartbeatServer] = None
        self.http: Optional[HeartbeatHTTPServer] = None
        self.udp: Optional[HeartbeatUDPServer] = None
        self._threads = []
        self._wakeup = Wakeup()  # set by signal handlers: a self-pipe, not an Event
        self._stop_requested = False
        self._reload_requested = False

    # -- start ----------------------------------------------------------------------------

    def start(self) -> None:
        """Store, then the Unix socket, then HTTP, then the threads. Raises StartupError."""
        # the stored agents go into the registry a batch at a time as they are read; the
        # events of their restart wait in the pump (not started) until the log is restored
        _, events = self.store.open(self.registry.load)
        self.events.restore(events, self.store.reserved_id)
        self.store.on_written = self.events.mark_written
        self.store.on_reserved = self.events.reserved
        # hooks first: a store write between the two then holds the run with its event
        # (the run's row carries the event), never the event without its run
        self.events.subscribe(self.hooks.on_event)
        self.events.subscribe(self.alerting.on_event)  # webhooks' queues: the same rule
        self.events.subscribe(self.store.add_event)
        self.alerting.rebuild(self.registry.alerting(FAILING_STATES))
        self.alerting.restore(self.store.webhook_queue)
        self.hooks.restore(self.store.hook_runs)
        if len(self.registry):
            log.info("remembered %d agents and %d events from %s", len(self.registry),
                     len(events), self.store.path)
        u, h = self.cfg.unix, self.cfg.http
        # each Unix connection holds its socket and its peer's pidfd; each HTTP one a socket
        raise_open_file_limit(2 * u.max_connections + h.max_connections + 64)
        try:
            self.unix = UnixHeartbeatServer(
                u.socket_path, self.registry, self.stats, mode=u.socket_mode, group=u.socket_group,
                verify_peer_pid=u.verify_peer_pid, idle_timeout=self.cfg.unix_idle_timeout,
                max_connections=u.max_connections, gate=self.gate)
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot listen on {u.socket_path}: {exc}") from None
        if h.port:
            try:
                self.http = HeartbeatHTTPServer(h.host, h.port, self.api, self.pool.submit,
                                                credentials=self.credentials,
                                                idle_timeout=h.idle_timeout,
                                                max_connections=h.max_connections,
                                                wait_room=self.pool.wait_room,
                                                gate=self.gate, tls=server_tls(self.cfg))
            except OSError as exc:
                self.unix.close()
                self.unix.remove_socket()
                raise StartupError(f"cannot listen on http {h.host}:{h.port}: "
                                   f"{exc.strerror or exc}") from None
        if self._udp_keys is not None:
            try:
                self.udp = HeartbeatUDPServer(self.cfg.udp.host, self.cfg.udp.port,
                                              self._udp_keys, self._apply_udp, self.stats,
                                              self.cfg.udp.max_skew)
            except OSError as exc:
                for server in (self.unix, self.http):
                    if server:
                        server.close()
                self.unix.remove_socket()
                raise StartupError(f"cannot listen on udp {self.cfg.udp.host}:"
                                   f"{self.cfg.udp.port}: {exc.strerror or exc}") from None
        self.pool.start()
        self.event_pump.start()
        self.store.start()
        self.silences.start()
        self.hooks.start()
        self.alerting.start()
        self.checker.start()
        self._serve(self.unix, "hb-unix")
        if self.http:
            self._serve(self.http, "hb-http")
        if self.udp:
            # a datagram stamped before the last store pass of the run before is old: its
            # agent's newest timestamp on disk may lag (routine heartbeats are written a
            # minute apart), the time of the pass does not
            alive_at = self.store.alive_at
            for agent_id, agent_time in self.registry.agent_times(UDP):
                epoch = parse_rfc3339(agent_time)
                if epoch is not None:
                    self.udp.replays.taken(agent_id, max(epoch, alive_at))
            self._serve(self.udp, "hb-udp")
        if self.cfg.manager.url:
            token = read_token(self.cfg.manager.auth_token_file, self.cfg.source,
                               "manager.auth_token_file")
            key, tls = manager_key(self.cfg), manager_tls(self.cfg)
            for n, url in enumerate(self.cfg.manager.urls):
                upstream = UpstreamReporter(self.cfg.manager, self.registry.counts,
                                            token.decode() if token else None, key, tls,
                                            problems=self.registry.problems, url=url,
                                            name="hb-upstream" + (f"-{n + 1}" if n else ""))
                self.events.subscribe(upstream.on_event)
                upstream.start()
                self.upstreams.append(upstream)
        log.info("hbdaemon %s ready: unix socket %s, http %s", __version__, u.socket_path,
                 self.http_url or "off")
        self.notifier.notify(f"READY=1\nSTATUS=receiving heartbeats\nMAINPID={os.getpid()}")

    @property
    def http_url(self) -> str:
        if not self.http:
            return ""
        host, port = self.http.server_address[:2]
        scheme = "https" if self.http.tls is not None else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    def _serve(self, server, name: str) -> None:
        # serve_forever calls service_actions() at least every 0.5 s: the listener's pulse
        server.component = guard(name, server.serve_forever, 0.5, stuck_after=LISTENER_STUCK)
        self._threads.append((server, server.component))

    @property
    def components(self) -> List[Optional[Component]]:
        """Every guarded long-lived thread (None: a part not running)."""
        return ([self.checker.component, self.store.component, self.hooks.component,
                 self.event_pump.component,
                 *(upstream.component for upstream in self.upstreams)]
                + [self.silences.component] + self.alerting.components
                + [component for _, component in self._threads] + self.pool.components)

    def problems(self) -> List[str]:
        """What keeps the daemon from doing its work: a component down, ended or stuck."""
        return problems(self.components) + [p for p in (self.store.problem(),) if p]

    def _apply_udp(self, hb, host: str) -> Optional[str]:
        """A checked UDP heartbeat into the registry: a refusal reason, or None."""
        refusal = self.registry.admit(hb.agent_id, host)
        if refusal is not None:
            return refusal
        local = is_loopback_address(host)
        birth = self._start_times.get(hb.pid) if local and \
            self.registry.needs_start_time(hb.agent_id, hb.pid) else None
        return self.registry.apply(hb, UDP, remote=host, local=local, admitted=True,
                                   started=birth)

    def _process_http(self, item) -> None:
        hb, started, host, local = item
        # a local agent's process start time, read once per pid (outside the registry lock)
        birth = self._start_times.get(hb.pid) if local and \
            self.registry.needs_start_time(hb.agent_id, hb.pid) else None
        refusal = self.registry.apply(hb, HTTP, remote=host, local=local, admitted=True,
                                      started=birth, received=started)
        if refusal is not None:  # the id was taken or the table filled since it was admitted
            self.stats.note_rejected(HTTP, refusal)
            return
        self.stats.note_processed(HTTP, time.perf_counter() - started)

    # -- reports --------------------------------------------------------------------------

    def extra_stats(self) -> dict:
        return {
            "version": __version__,
            "queue_depth": self.pool.depth, "queue_capacity": self.pool.capacity,
            "http_apply_failures": self.pool.inline_failures,
            "unix_connections": self.unix.active_connections if self.unix else 0,
            "http_connections": self.http.active_connections if self.http else 0,
            "connections_refused": sum(s.refused_total for s in (self.unix, self.http) if s),
            "connections_evicted": self.http.evicted_total if self.http else 0,
            "accept_failures": sum(s.accept_failures for s in (self.unix, self.http) if s),
            "agents": len(self.registry), "agents_by_state": self.registry.counts(),
            "max_agents": self.registry.max_agents,
            "event_backlog": self.event_pump.backlog,
            "hook_runs": self.hooks.runs, "hook_failures": self.hooks.failures,
            "hook_silenced": self.hooks.silenced,
            "store_writes": self.store.writes, "store_errors": self.store.errors,
            "store_dropped_events": self.store.dropped_events,
            "alerting": dict(self.alerting.report(), silences=self.silences.report()),
            "upstream_changes_waiting": sum(u.changes_waiting for u in self.upstreams),
            "upstream_changes_dropped": sum(u.changes_dropped for u in self.upstreams),
            "components": {c.name: {"restarts": c.restarts, "up": c.problem() is None}
                           for c in self.components if c is not None},
        }

    def render_metrics(self) -> str:
        return metrics.render(self.registry, self.stats, self.events, self.extra_stats,
                              max_agent_series=self.cfg.metrics.max_agent_series)

    # -- run loop, signals ----------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: stop. SIGHUP: reload. The handlers only set flags."""
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)

    def _on_stop_signal(self, signum, frame) -> None:
        self._stop_requested = True
        self._wakeup.set()

    def _on_reload_signal(self, signum, frame) -> None:
        self._reload_requested = True
        self._wakeup.set()

    def request_stop(self) -> None:
        self._stop_requested = True
        self._wakeup.set()

    def run_forever(self) -> None:
        """Serve until a stop is requested; reload and feed the watchdog meanwhile."""
        tick = min(1.0, self.notifier.watchdog_interval or 1.0)
        while not self._stop_requested:
            self._wakeup.wait(tick)
            if self._reload_requested and not self._stop_requested:
                self._reload_requested = False
                self.reload()
            if self.notifier.watchdog_interval and self._healthy():
                self.notifier.notify("WATCHDOG=1")
            self.api.drop_stale()

    def _healthy(self) -> bool:
        """Feed the watchdog only while every component is alive and keeps up."""
        return not self.problems()

    def reload(self) -> bool:
        """Re-read the config (SIGHUP): thresholds, hooks, logging. A bad config changes nothing."""
        self.notifier.notify("RELOADING=1")
        try:
            new = self._reload_config()
            credentials = preflight(new)
            secrets = read_secrets(new)
            keys = udp_keys(new)
            tls = server_tls(new)
            upstream_key = manager_key(new)  # read here: a bad one refuses the reload
            logsetup.configure(new.log.level, new.log.file, new.log.format)
        except (ConfigError, OSError) as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            self.notifier.notify("READY=1")
            return False
        for name in ("state_dir", "max_events", "store_interval"):
            if getattr(new.daemon, name) != getattr(self.cfg.daemon, name):
                log.warning("daemon.%s changed: takes effect after a restart", name)
        # the HTTP credentials are reloaded; the listener's other settings are not
        fixed = {"unix": new.unix, "manager": new.manager,
                 "udp": dataclasses.replace(new.udp, keys_file=self.cfg.udp.keys_file,
                                            max_skew=self.cfg.udp.max_skew),
                 "http": dataclasses.replace(
                     new.http, auth_token_file=self.cfg.http.auth_token_file,
                     tokens=self.cfg.http.tokens,
                     **({"tls_cert_file": self.cfg.http.tls_cert_file,
                         "tls_key_file": self.cfg.http.tls_key_file}
                        if self.http and self.http.tls and new.http.tls_cert_file else {}))}
        for section, settings in fixed.items():
            if settings != getattr(self.cfg, section):
                log.warning("%s settings changed: they take effect after a restart "
                            "(thresholds, limits, tokens, hooks and logging were reloaded)",
                            section)
        hc = new.agent.health_check
        self.registry.set_policies(PolicySet(hc, new.agent.overrides))
        self.registry.max_agents = new.agent.max_agents
        self.registry.limiter.per_minute = new.agent.new_agents_per_minute
        self.checker.stall_threshold = hc.stall_threshold
        if self.checker.component is not None:
            self.checker.component.stuck_after = self.checker.stuck_after
        self.hooks.configure(new.hooks, new.agent.restart)
        self.alerting.configure(new, secrets)
        self.silences.configure(new.alertmanager)
        if self.http:
            self.http.credentials = credentials
            if self.http.tls is not None and tls is not None:
                self.http.tls = tls  # a renewed certificate, for the new connections
        if self.udp and keys is not None:
            self.udp.keys, self.udp.max_skew = keys, new.udp.max_skew
        for upstream in self.upstreams:
            upstream.key = upstream_key  # a rotated key signs the next report
        self.cfg = new
        log.info("configuration reloaded from %s", new.source)
        self.notifier.notify("READY=1")
        return True

    # -- stop -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop accepting, drain the queue, final health pass, flush the store, remove the socket."""
        self.notifier.notify("STOPPING=1")
        log.info("stopping: draining up to %.1fs", self.cfg.daemon.shutdown_timeout)
        deadline = time.monotonic() + self.cfg.daemon.shutdown_timeout
        for server, component in self._threads:
            component.stop()
            server.shutdown()
            join(component.thread, 1.0)
        if self.unix:
            self.unix.close()
        if self.http:
            self.http.close()
        if self.udp:
            self.udp.server_close()
        self.pool.stop(max(0.1, deadline - time.monotonic()))
        self.checker.stop(1.0)
        self.registry.check()
        for upstream in self.upstreams:
            upstream.stop(2.0)
        self.event_pump.stop(1.0)  # every event recorded before hooks and store stop
        self.hooks.stop(1.0)
        self.alerting.stop(2.0)
        self.silences.stop(1.0)
        self.store.stop(max(1.0, deadline - time.monotonic()))
        if self.unix:
            self.unix.remove_socket()
        log.info("stopped")
