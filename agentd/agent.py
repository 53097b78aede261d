"""The agent: samples itself, sends heartbeats on a steady beat, reconnects, says goodbye."""

import atexit
import logging
import os
import sys
import threading
import time
import weakref
from typing import Callable, List, Optional

import psutil

from agentd.config import AgentdConfig, HeartbeatConfig
from agentd.protocol import encode_heartbeat
from agentd.scheduler import Scheduler
from agentd.stats import AgentStats, ProcessSampler
from agentd.targets import ExitWatcher, Target, target_for
from agentd.keyfile import read_one_key
from agentd.transport import Backoff, HttpTransport, TransportError, UdpTransport, UnixTransport

log = logging.getLogger(__name__)

WINDOW = 0.8  # of the interval: the shortest window a CPU figure is measured over
RELOCATE_AFTER = (0.2, 1.0, 3.0)  # s after a target ended: look for its next process then
EXITED = "exited"
UNRESPONSIVE = "unresponsive"  # alive, but its probe keeps failing


def read_token(path: str) -> Optional[str]:
    """The bearer token from `path`, or None if no file is configured. Raises OSError."""
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return f.read().strip() or None


def make_transport(hb: HeartbeatConfig, on_closed: Optional[Callable[[], None]] = None):
    """The configured transport; on_closed: the daemon hung up a Unix connection."""
    if hb.transport == "http":
        return HttpTransport(hb.url, hb.timeout, read_token(hb.auth_token_file), hb.ca_file)
    if hb.transport == "udp":
        return UdpTransport(hb.udp_target, read_one_key(hb.key_file))
    return UnixTransport(hb.socket_path, hb.timeout, on_closed)


def _destination(hb: HeartbeatConfig) -> str:
    return {"http": hb.url, "udp": hb.udp_target}.get(hb.transport, hb.socket_path)


def _connection_keys(hb: HeartbeatConfig) -> tuple:
    return (hb.transport, hb.socket_path, hb.url, hb.auth_token_file, hb.timeout,
            hb.udp_target, hb.key_file, hb.ca_file)


class Agent:
    """Sends this process's heartbeats to hbdaemon until stop().

    Starts even when the daemon is not up, and keeps trying with exponential backoff and
    jitter; after each (re)connection a heartbeat goes out at once. on_success(stats) and
    on_failure(error) are called after every attempt, outside the agent's lock (a callback
    may call stop()). Thread-safe; start() again after stop() resumes.
    """

    def __init__(self, cfg: AgentdConfig, sampler: Optional[ProcessSampler] = None,
                 on_success: Optional[Callable] = None, on_failure: Optional[Callable] = None,
                 clock: Callable[[], float] = time.monotonic,
                 targets: Optional[List[Target]] = None, report_self: bool = True):
        self.cfg = cfg
        self.agent_id = cfg.effective_agent_id
        self.pid = os.getpid()
        # a CPU figure once a whole interval has been sampled (scheduling jitter allowed)
        self.sampler = sampler or ProcessSampler(min_window=cfg.heartbeat.interval * WINDOW)
        self.transport = make_transport(cfg.heartbeat, self._connection_lost)
        self.stats = AgentStats(self.agent_id, cfg.effective_version, self.transport.name, clock)
        self.backoff = Backoff(cfg.heartbeat.reconnect_min, cfg.heartbeat.reconnect_max)
        self.scheduler = Scheduler(cfg.heartbeat.interval, self._tick, clock)
        self._on_success, self._on_failure = on_success, on_failure
        self._lock = threading.Lock()  # one send at a time: the beat, a reload, the goodbye
        self._failing = False
        self._started = False
        self._stopped = False
        self._sent_any = False
        # processes reported besides (or, for `agentd run`, instead of) agentd itself
        self.report_self = report_self
        watched = [target_for(w, set) for w in cfg.watch]
        self.targets: List[Target] = watched + list(targets or ())
        self.exits = ExitWatcher(self._target_ended) if watched else None
        self._relocate = False  # a target ended: look for its next process soon
        self._relocate_left = 0  # looks still to take before the next beat
        self._targets_due = threading.Event()  # the targets' round is due (agentd-targets)
        self._targets_thread: Optional[threading.Thread] = None
        self.watcher = self.agent_id  # named in its targets' records ("agentd run": its own)

    def start(self) -> None:
        """Begin heartbeats (a second call while running does nothing)."""
        with self._lock:
            if self._started and not self._stopped:
                return
            self._started, self._stopped, self._sent_any = True, False, False
        log.info("agent %s: heartbeats every %.1fs over %s to %s", self.agent_id,
                 self.cfg.heartbeat.interval, self.transport.name, self._target())
        for target in self.targets:
            log.info("agent %s: watching %s as agent %s", self.agent_id, target.how,
                     target.agent_id)
        if self.exits is not None and self.exits._thread is None:
            self.exits.start()
        if self.targets and (self._targets_thread is None or not self._targets_thread.is_alive()):
            self._targets_thread = threading.Thread(target=self._targets_loop,
                                                    name="agentd-targets", daemon=True)
            self._targets_thread.start()
        self.scheduler.start()

    def _target(self) -> str:
        return _destination(self.cfg.heartbeat)

    def _tick(self, due: bool) -> Optional[float]:
        with self._lock:
            if self._stopped or not (due or self._failing or self._relocate):
                return None
            self._relocate = False
            retry, callback = None, self._callback(None, None)
            if self.report_self:
                retry, callback = self._send("running" if self._sent_any else "starting")
        # the targets' beats go out on their own thread (agentd-targets): a slow probe or
        # scan must not hold up agentd's own beat, nor another target's end being told
        if self.targets and retry is None:
            self._targets_due.set()
        with self._lock:
            if retry is None and self._relocate_left and any(t.pid is None for t in self.targets):
                # a restart takes a moment: look again a little later, then at the beat
                self._relocate = True
                retry = RELOCATE_AFTER[len(RELOCATE_AFTER) - self._relocate_left]
                self._relocate_left -= 1
        callback()
        return retry

    def _targets_loop(self) -> None:
        """One beat for every target each time the scheduler asks (asks that come while
        a round is under way make one more round). A send that fails asks for a retry."""
        while True:
            self._targets_due.wait()
            self._targets_due.clear()
            if self._stopped:
                return
            try:
                for target in self.targets:
                    retry = self._send_target(target)
                    if retry is not None:
                        self.scheduler.soon(retry)
                        break
            except Exception:  # a target's beat must not end them all
                log.exception("agent %s: a watched process's heartbeat failed", self.agent_id)

    def _send_target(self, target: Target) -> Optional[float]:
        """One heartbeat for a watched process: `running` with its pid, CPU and memory
        (`unresponsive` if its probe keeps failing), or `exited` saying why there is none
        (looked for again later). Holds the target's lock throughout, the agent's to send."""
        with target.lock:
            if target.done:
                return None
            if target.pid is not None and target.reread and target.moved():
                target.forget()  # its pidfile names another live process now: take that up
            if target.pid is None and target.locate() and self.exits is not None and \
                    not self.exits.watch(target, target.pid, target.started):
                target.forget(f"process {target.pid} exited")  # gone as it was found
            cpu, memory, failing = None, 0, ""
            if target.pid is not None:
                try:
                    cpu, memory = target.sample()
                except psutil.Error:
                    target.forget(f"process {target.pid} is gone")
            if target.pid is not None:
                failing = target.unresponsive()  # alive: but answering?
            if target.pid is None:
                line = encode_heartbeat(target.agent_id, target.last_pid or self.pid, EXITED, "",
                                        None, 0, agent_pid=self.pid, detail=target.detail,
                                        watcher=self.watcher)
            else:
                line = encode_heartbeat(target.agent_id, target.pid,
                                        UNRESPONSIVE if failing else "running", "", cpu, memory,
                                        agent_pid=self.pid, watcher=self.watcher, detail=failing)
            with self._lock:
                if self._stopped:
                    return None
                try:
                    self.transport.send(line)
                except TransportError as exc:
                    return self._failed(exc)
        return None

    def _target_ended(self, target: Target, pid: int, exit_code: Optional[int] = None,
                      signal: Optional[int] = None, status: Optional[str] = None) -> None:
        """A watched process ended (from the exit watcher's thread, or `agentd run`): say so
        at once, with its exit status when known (`stopping` if it was asked to stop), then
        look for its next process soon."""
        if status is None:  # asked outside the lock: it may run systemctl
            status = "stopping" if target.stop_asked() else EXITED
        with target.lock, self._lock:  # the order _send_target takes them in
            if self._stopped or target.pid not in (pid, None):
                return  # a process found since: this end is old news
            target.forget(f"process {pid} exited")
            log.warning("agent %s: %s (process %d) ended%s", self.agent_id, target.how, pid,
                        f" with code {exit_code}" if exit_code is not None else
                        f" by signal {signal}" if signal is not None else "")
            line = encode_heartbeat(target.agent_id, pid, status, "", None, 0,
                                    agent_pid=self.pid, exit_code=exit_code, signal=signal,
                                    watcher=self.watcher)
            try:
                self.transport.send(line)
            except TransportError as exc:
                self._failed(exc)
            self._relocate, self._relocate_left = True, len(RELOCATE_AFTER) - 1
        self.scheduler.soon(RELOCATE_AFTER[0])

    def _send(self, status: str, detail: str = ""):
        """One heartbeat, under the lock. Returns the delay before a retry (None: wait for
        the next slot) and the user's callback to call once the lock is released."""
        cpu, memory = self.sampler.sample()
        line = encode_heartbeat(self.agent_id, self.pid, status, self.stats.version, cpu, memory,
                                detail=detail)
        try:
            self.transport.send(line)
        except TransportError as exc:
            return self._failed(exc), self._callback(self._on_failure, exc)
        self._sent_any = True
        if self._failing:
            log.info("agent %s: reconnected to %s after %d attempts", self.agent_id,
                     self._target(), self.backoff.attempts)
        self._failing = False
        self.backoff.reset()
        self.stats.on_success(status, 0.0 if cpu is None else cpu, memory)
        return None, self._callback(self._on_success, self.stats)

    def _callback(self, function: Optional[Callable], arg) -> Callable[[], None]:
        """`function(arg)` for later, guarded: a callback that raises must not stop the beat."""
        def call() -> None:
            if function is None:
                return
            try:
                function(arg)
            except BaseException:  # sys.exit() in a callback too: the beat must go on
                log.exception("agent %s: heartbeat callback %r failed", self.agent_id, function)
        return call

    def _connection_lost(self) -> None:
        """The daemon closed our connection (a restart, say; called from the transport's
        watcher thread): reconnect now with the usual backoff, not at the next beat."""
        with self._lock:
            if self._stopped or self._failing:
                return
            self._failing = True
        log.warning("agent %s: the daemon closed the connection; reconnecting (with backoff)",
                    self.agent_id)
        self.scheduler.soon(0.0)

    def _failed(self, exc: TransportError) -> Optional[float]:
        """Under the lock: a send failed; the delay before a retry (None: wait for the beat)."""
        self.stats.on_failure(str(exc))
        if exc.permanent:
            log.error("agent %s: %s", self.agent_id, exc)
            return None
        if not self._failing:
            log.warning("agent %s: lost connection to the daemon: %s (retrying with backoff)",
                        self.agent_id, exc)
        else:
            log.debug("agent %s: attempt %d failed: %s", self.agent_id, self.backoff.attempts, exc)
        self._failing = True
        return exc.retry_after if exc.retry_after is not None else self.backoff.next_delay()

    def reload(self, cfg: AgentdConfig) -> None:
        """Apply a new configuration: interval now, a changed transport reconnects."""
        old, new = self.cfg.heartbeat, cfg.heartbeat
        transport = None
        # a UDP key rotated in place (the same file) must take effect: compare the key
        rotated = new.transport == "udp" and old.transport == "udp" and \
            getattr(self.transport, "key", None) != read_one_key(new.key_file)
        if _connection_keys(old) != _connection_keys(new) or rotated:
            # may raise OSError (token file): nothing changed yet
            transport = make_transport(new, self._connection_lost)
        with self._lock:
            if transport is not None:
                self.transport.close()
                self.transport = transport
                self.stats.transport = transport.name
                log.info("agent %s: now sending over %s to %s", self.agent_id, transport.name,
                         _destination(new))
            self.backoff = Backoff(new.reconnect_min, new.reconnect_max)
            self.scheduler.set_interval(new.interval)
            self.sampler.min_window = new.interval * WINDOW
            self.cfg = cfg

    def stop(self, status: str = "stopping", detail: str = "") -> None:
        """Send a final `stopping` heartbeat (bounded by the send timeout) and disconnect.
        Does nothing if not started (or stopped already). Watched processes are `stopped`
        too: nobody reports them from now on. (`exited` with a detail: the program is
        ending on an error.)"""
        self.scheduler.stop()
        if self.exits is not None:
            self.exits.stop()
        with self._lock:
            if self._stopped or not self._started:
                return
            self._stopped = True
            self._targets_due.set()  # agentd-targets sees _stopped and ends
            retry, callback = None, self._callback(None, None)
            if self.report_self:
                retry, callback = self._send(status, detail)
            for target in self.targets if retry is None else ():
                if target.pid is not None:
                    try:
                        self.transport.send(encode_heartbeat(
                            target.agent_id, target.pid, "stopping", "", None, 0,
                            agent_pid=self.pid, detail="agentd stopped watching it",
                            watcher=self.watcher))
                    except TransportError:
                        break
            if retry is None and self.report_self:
                log.info("agent %s: said stopping to the daemon", self.agent_id)
            self.transport.close()
        callback()


class HeartbeatSender(Agent):
    """Report this Python program's liveness to hbdaemon in three lines:

        sender = HeartbeatSender("billing-worker")   # Unix socket, every 30s
        sender.start()
        ...                                           # sender.stop() says "stopping"

    A program that ends without stop() says `stopping` at interpreter exit (atexit), so
    the daemon shows `stopped`, not `dead`. After fork() the child's copy is inert (not
    started, no connection, its own pid): it never speaks for the parent.
    """

    def __init__(self, agent_id: str, *, transport: str = "unix",
                 socket_path: str = "/run/hbdaemon/hbdaemon.sock",
                 url: str = "http://127.0.0.1:8690/heartbeat", interval: float = 30.0,
                 auth_token_file: str = "", version: str = "", timeout: float = 5.0,
                 on_success: Optional[Callable] = None, on_failure: Optional[Callable] = None):
        from agentd.config import load_config
        overrides = {"agent_id": agent_id, "version": version,
                     "heartbeat.transport": transport, "heartbeat.socket_path": socket_path,
                     "heartbeat.url": url, "heartbeat.interval": str(interval),
                     "heartbeat.timeout": str(timeout), "heartbeat.auth_token_file": auth_token_file}
        cfg = load_config("/nonexistent/agentd.yaml", environ={}, overrides=overrides)
        super().__init__(cfg, on_success=on_success, on_failure=on_failure)
        _SENDERS.add(self)

    def start(self) -> None:
        super().start()
        _note_crashes()
        atexit.unregister(self._at_exit)  # once, however often started
        atexit.register(self._at_exit)

    def stop(self, status: str = "stopping", detail: str = "") -> None:
        atexit.unregister(self._at_exit)
        super().stop(status, detail)

    def _at_exit(self) -> None:
        """The interpreter is ending without stop(): `stopping`, or `exited` (so `dead`)
        if an exception nobody caught is ending it."""
        if _CRASHES:
            self.stop(EXITED, _CRASHES[-1])
        else:
            self.stop()

    def _after_fork_in_child(self) -> None:
        """The child of a fork(): drop the parent's connection without touching it (the
        parent still uses the socket), locks a parent thread may have held, and timers
        (threads do not survive a fork)."""
        atexit.unregister(self._at_exit)
        self._lock = threading.Lock()
        self.stats._lock = threading.Lock()
        self.pid = os.getpid()
        self._started, self._stopped, self._sent_any, self._failing = False, False, False, False
        self.transport.forget()
        self.scheduler = Scheduler(self.cfg.heartbeat.interval, self._tick,
                                   self.scheduler.clock)  # the clock it was given
        self.sampler = ProcessSampler(min_window=self.cfg.heartbeat.interval * WINDOW)


_SENDERS: "weakref.WeakSet[HeartbeatSender]" = weakref.WeakSet()
_CRASHES: List[str] = []  # the exception that is ending the program, if one is


def _note_crashes() -> None:
    """Chain sys.excepthook (once) to remember an exception nobody caught, which is about
    to end the program: its senders then say `exited`, not `stopping`."""
    previous = sys.excepthook
    if getattr(previous, "_agentd", False):
        return

    def hook(exc_type, exc, tb):
        _CRASHES.append(f"ended by an uncaught {exc_type.__name__}: {exc}"[:200])
        previous(exc_type, exc, tb)
    hook._agentd = True
    sys.excepthook = hook


def _after_fork_in_child() -> None:
    for sender in list(_SENDERS):
        sender._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
