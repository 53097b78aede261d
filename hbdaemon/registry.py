"""The registry: the single owner of agent records and of every change of state."""

import collections
import contextlib
import fnmatch
import logging
import math
import os
import re
import threading
import time
from array import array
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple, Union

from hbdaemon import process
from hbdaemon.health import ENDED, WATCHED, PolicySet, State, judge_heartbeat
from hbdaemon.http_request import address_block
from hbdaemon.protocol import (EXITED, FAILING, MAX_REASON, UNRESPONSIVE, Heartbeat,
                               exit_reason, format_rfc3339, parse_rfc3339, valid_agent_id)

log = logging.getLogger(__name__)

HISTORY_LEN = 60  # samples kept per agent for the status page's sparklines
SLICE = 500       # records handled per hold of the lock in whole-table passes (~1 ms)
MAX_INTERVAL = 86400.0  # the longest heartbeat interval the restart grace is sized from
# After a restart an agent may need two of its intervals to come back (the Go agent
# reconnects only at its next tick after a failed write): its grace is the longer of
# heartbeat_timeout and this many observed intervals.
RESTART_INTERVALS = 2.5

# Why a heartbeat was refused (the receivers count these as reject reasons).
ID_CONFLICT = "id_conflict"    # the id is held by another live Unix connection
MAX_AGENTS = "max_agents"      # the table is full and the id is new
RATE_LIMITED = "rate_limited"  # this source created too many new ids this minute
UNKNOWN = "unknown_agent"      # forget: no such agent
RESERVED_ID = "reserved_id"    # the daemon's own id (its alerts' instance): never an agent's
RELAYED = "relayed_id"         # a downstream daemon's agent, kept from its reports
RELAY_SEPARATOR = ":"          # a relayed agent is <downstream daemon id>:<its agent id>
MAX_RELAYED_PER_DAEMON = 1000  # failing agents kept for one downstream daemon
SUPERSEDED = "superseded"      # an HTTP heartbeat received before one already applied

_NOTICE = object()  # an outbox entry that is a log line, not an event
RELAY = "relay"  # the transport of an agent relayed by a downstream daemon
PROBLEMS = frozenset((State.NO_HEARTBEAT, State.DEAD))
MAX_INSTANCES = 64  # live instances of one program named <program>@uid<uid>.N
TOUCH_INTERVAL = 60.0  # seconds between writes of records only heartbeats changed
MAX_TOMBSTONES = 10_000  # forgotten ids kept for changes(); older ones make a reader reset

# on_event(agent_id, from_state, to_state, reason, kind="state"): called after the registry
# lock is released, in the order the changes happened (one emitter at a time).
EventSink = Callable[..., None]


class Peer:
    """Who is at the other end of a Unix connection (from SO_PEERCRED)."""

    __slots__ = ("conn_id", "pid", "uid", "gid", "started")

    def __init__(self, conn_id: int, pid: int, uid: int, gid: int, started: Optional[float]):
        self.conn_id, self.pid, self.uid, self.gid, self.started = conn_id, pid, uid, gid, started


class AgentRecord:
    """What the daemon knows of one agent. Guarded by the registry's lock."""

    __slots__ = ("agent_id", "state", "state_since", "reason", "pid", "status", "version", "cpu",
                 "memory", "transport", "last_seen", "agent_time", "first_seen", "heartbeats",
                 "due_from", "policy", "over_since", "below_count", "changes", "flapping",
                 "conn_id", "connected", "local", "check_pid", "check_started", "remote",
                 "peer_uid", "owner_uid", "summary", "hist_at", "hist", "conflict_noted",
                 "interval", "received", "watcher", "prior", "relay")

    def __init__(self, agent_id: str, wall: float, now: float, policy):
        self.agent_id = agent_id
        self.state = State.UNKNOWN
        self.state_since = wall
        self.reason = ""
        self.pid = 0
        self.status = ""
        self.version = ""
        self.cpu = 0.0
        self.memory = 0
        self.transport = ""
        self.last_seen = None
        self.agent_time = None
        self.first_seen = wall
        self.heartbeats = 0
        self.due_from = now          # monotonic time the heartbeat timeout counts from
        self.policy = policy
        self.over_since = None       # monotonic time the sample first went over a limit
        self.below_count = 0
        self.changes = None          # monotonic times of recent state changes (flap window)
        self.flapping = False
        self.conn_id = None
        self.connected = False
        self.local = False           # on this host: a pid we can check
        self.check_pid = None
        self.check_started = None
        self.remote = ""
        self.peer_uid = None
        self.owner_uid = None        # uid of the last Unix connection that spoke for it (kept)
        self.summary = None          # set when the agent is a downstream hbdaemon
        self.watcher = None          # the agentd that speaks for this process, if one does
        self.hist_at = 0.0           # wall time of the last history sample
        self.hist = None             # array('f'): cpu, memory, cpu, memory, ... (one small object)
        self.interval = None         # seconds between heartbeats, smoothed (sizes restart grace)
        self.received = None         # perf_counter() at receipt of the last HTTP heartbeat applied
        self.conflict_noted = False  # an id_conflict event was recorded for the current holder
        self.prior = None            # while `unknown` after a restart: [state, since] before it
        self.relay = None            # a downstream daemon's agent: that daemon's id (see _relay)

    def deadline(self) -> float:
        return self.due_from + self.policy.heartbeat_timeout

    def view(self) -> dict:
        """The API's fields as raw values: cheap, so it is taken under the lock (see present)."""
        return {
            "agent_id": self.agent_id, "state": self.state.value,
            "state_since": self.state_since, "reason": self.reason,
            "pid": self.pid, "status": self.status, "version": self.version,
            "cpu": self.cpu, "memory": self.memory, "transport": self.transport,
            "last_seen": self.last_seen, "agent_time": self.agent_time,
            "first_seen": self.first_seen, "heartbeats": self.heartbeats,
            "connected": self.connected, "remote": self.remote, "peer_uid": self.peer_uid,
            "owner_uid": self.owner_uid, "flapping": self.flapping, "summary": self.summary,
            "watcher": self.watcher, "relayed_by": self.relay,
            "recent_changes": len(self.changes) if self.changes else 0,
            "interval": None if self.interval is None else round(self.interval, 3),
            "heartbeat_timeout": self.policy.heartbeat_timeout,
            "cpu_threshold": self.policy.cpu_threshold,
            "memory_threshold": self.policy.memory_threshold,
            "deadline_in": self.deadline() if self.state in WATCHED else None,
        }

    def to_store(self) -> dict:
        """The fields that survive a restart."""
        return {"agent_id": self.agent_id, "state": self.state.value,
                "state_since": self.state_since, "reason": self.reason, "pid": self.pid,
                "status": self.status, "version": self.version, "cpu": self.cpu,
                "memory": self.memory, "transport": self.transport,
                "last_seen": self.last_seen, "agent_time": self.agent_time,
                "first_seen": self.first_seen, "heartbeats": self.heartbeats,
                "local": self.local, "check_pid": self.check_pid,
                "check_started": self.check_started, "remote": self.remote,
                "peer_uid": self.peer_uid, "owner_uid": self.owner_uid, "summary": self.summary,
                "watcher": self.watcher, "prior": self.prior,
                "interval": self.interval, "relay": self.relay}


def present(view: dict, now: float) -> dict:
    """Turn a record's view into the API's record (RFC 3339 times); `now` is the monotonic clock."""
    for name in ("state_since", "last_seen", "first_seen"):
        view[name] = format_rfc3339(view[name])
    agent_time = view["agent_time"]
    view["agent_time"] = format_rfc3339(parse_rfc3339(agent_time)) if agent_time else None
    if view["deadline_in"] is not None:
        view["deadline_in"] = round(view["deadline_in"] - now, 3)
    return view


class NewAgentLimiter:
    """How many new agent ids one source (a Unix peer's uid, an HTTP client's address) may
    create per minute: a token bucket per source, so one local user cannot fill the table
    before the others. Not thread-safe: the registry calls it under its lock."""

    MAX_SOURCES = 10_000

    def __init__(self, per_minute: int, clock: Callable[[], float]):
        self.per_minute = per_minute  # 0: no limit
        self._clock = clock
        self._buckets: Dict[str, Tuple[float, float]] = {}  # source -> (tokens, as of)

    def allow(self, source: str) -> bool:
        """Take one token from `source`'s bucket; False if it is empty."""
        if not self.per_minute:
            return True
        now = self._clock()
        tokens, since = self._buckets.get(source, (self.per_minute, now))
        tokens = min(self.per_minute, tokens + (now - since) * self.per_minute / 60.0)
        allowed = tokens >= 1
        self._buckets[source] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > self.MAX_SOURCES:
            self._prune(now)
        return allowed

    def _prune(self, now: float) -> None:
        # a bucket idle for a minute is full again: forgetting it changes nothing
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60.0}
        if len(self._buckets) > self.MAX_SOURCES:  # that many active sources: max_agents bounds them
            self._buckets.clear()


def _remember(rec: AgentRecord, wall: float) -> None:
    """Add one history sample (at most one per history_step) and drop the oldest."""
    rec.hist_at = wall
    if rec.hist is None:
        rec.hist = array("f")
    rec.hist.extend((rec.cpu, rec.memory))
    if len(rec.hist) > 2 * HISTORY_LEN:
        del rec.hist[:2]


class Registry:
    """Agent records, keyed by agent_id. Thread-safe: every method takes the one lock."""

    def __init__(self, policies: PolicySet, on_event: EventSink,
                 clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time,
                 pid_gone: Callable[..., bool] = process.pid_gone,
                 wait_gone: Callable[..., bool] = process.wait_gone,
                 history_step: float = 10.0, max_agents: int = 50_000,
                 new_agents_per_minute: int = 0,
                 on_notice: Optional[Callable[..., None]] = None):
        self._policies = policies
        self._on_event = on_event
        # on_notice(label, level, message, *args): a log line about an agent that is not an
        # event; by default logged by the thread that emits
        self._on_notice = on_notice or (lambda label, level, message, *args:
                                        log.log(level, message, *args))
        self._clock = clock
        self._wall = wallclock
        self._pid_gone = pid_gone
        self._wait_gone = wait_gone
        self.history_step = history_step
        self.max_agents = max_agents
        self.limiter = NewAgentLimiter(new_agents_per_minute, clock)
        self._lock = threading.Lock()
        # A verdict that a process died must not queue behind intake for the lock: a Lock is
        # not fair, and busy receivers retake it before a woken waiter gets the GIL. While
        # `_urgent` is set, intake waits at the turnstile instead (see _intake_lock).
        self._turnstile = threading.Lock()
        self._urgent = 0
        self._records: Dict[str, AgentRecord] = {}
        self._counts = collections.Counter()  # agents per state, kept as they change
        # kept as they change too, so that /summary and a page of problems read a few
        # records, not 100,000: the ids in a failing state, and agents per transport
        self._failing: Set[str] = set()
        self._transports = collections.Counter()
        self._dirty: set = set()    # records to write at the store's next pass
        # records only a routine heartbeat changed (last_seen, cpu, counts): written every
        # TOUCH_INTERVAL, not every pass (at 100,000 agents that was a JSON dump and a
        # row written per heartbeat)
        self._touched: set = set()
        self._touched_at = clock()
        # what changed (a state, flapping, forgotten), newest last: id -> its change's number;
        # readers poll changes() with a cursor instead of reading every record
        self._changed: "collections.OrderedDict[str, int]" = collections.OrderedDict()
        self._seq = 0      # the number of the last change
        self._horizon = 0  # changes up to this one are no longer all listed
        self._run = os.urandom(4).hex()  # cursors of another run of the daemon are stale
        self._relays: Dict[str, Set[str]] = {}  # downstream daemon id -> its relayed records
        self._outbox: collections.deque = collections.deque()  # events waiting for _emit
        self._emit_lock = threading.Lock()
        # ids no agent may take: this daemon's own (a record under it would speak for the
        # daemon, and its alerts would inhibit all of this daemon's)
        self.reserved_ids: frozenset = frozenset()

    # -- intake -------------------------------------------------------------------------

    def admit(self, agent_id: str, remote: str) -> Optional[str]:
        """None if an HTTP heartbeat for `agent_id` from address `remote` may be applied, else
        why not (ID_CONFLICT, MAX_AGENTS, RATE_LIMITED). Takes a new-id token from the
        address's bucket when the id is new: pass admitted=True to apply() afterwards."""
        rec = self._records.get(agent_id)
        if rec is not None and not rec.connected and rec.relay is None:
            return None  # known and not held (apply() checks again, under the lock)
        with self._intake_lock():
            refusal = self._refusal(agent_id, None, remote, admitted=False)
        self._emit()
        return refusal

    def name_anonymous(self, base: str, peer: Peer) -> str:
        """The id for the agent on `peer`'s connection that sent no agent_id: `base` (its
        program and uid, see protocol.anonymous_id), so that a restarted program takes up
        its old record, or `base.2`, `base.3`, ... while another live process holds it."""
        for n in range(1, MAX_INSTANCES + 1):
            candidate = base if n == 1 else f"{base}.{n}"
            with self._lock:
                rec = self._records.get(candidate)
                if rec is None:
                    return candidate
                if _holder(rec, peer) or rec.owner_uid is None:
                    continue  # held by another live connection, or an HTTP agent's
                pid, started = rec.check_pid, rec.check_started
                free = rec.connected or rec.state in ENDED or pid in (None, peer.pid)
            # silent but not connected: free unless that process still runs (a hung one)
            if free or self._pid_gone(pid, started):
                return candidate
        return f"pid-{peer.pid}"

    def yield_to_verdicts(self) -> None:
        """Wait while a verdict waits for the lock (one attribute read when none does). Busy
        receivers call it between requests too: each that waits here leaves the GIL to it."""
        if self._urgent:
            with self._turnstile:
                pass

    def _intake_lock(self) -> threading.Lock:
        """The lock, once no verdict waits for it."""
        self.yield_to_verdicts()
        return self._lock

    @contextlib.contextmanager
    def _urgent_lock(self):
        """The lock ahead of intake: receivers hold back at the turnstile meanwhile."""
        with self._turnstile:
            self._urgent += 1
            try:
                with self._lock:
                    yield
            finally:
                self._urgent -= 1

    def _refusal(self, agent_id: str, peer: Optional[Peer], remote: str,
                 admitted: bool) -> Optional[str]:
        if agent_id in self.reserved_ids:
            return RESERVED_ID
        rec = self._records.get(agent_id)
        if rec is not None:
            if rec.relay is not None:
                return RELAYED
            holder = _holder(rec, peer)
            if holder:
                self._note_conflict(rec, _who(peer, remote), holder)
                return ID_CONFLICT
            return None
        if len(self._records) >= self.max_agents:
            return MAX_AGENTS
        if not admitted and not self.limiter.allow(_source(peer, remote)):
            return RATE_LIMITED
        return None

    def _note_conflict(self, rec: AgentRecord, who: str, holder: str) -> None:
        """One id_conflict event per holder: two processes collide on one id, or one is forged."""
        if rec.conflict_noted:
            return
        rec.conflict_noted = True
        self._outbox.append((rec.agent_id, rec.state, rec.state,
                             f"{who} sent heartbeats for this id, which {holder}; "
                             "they are refused", "id_conflict"))

    def apply(self, hb: Heartbeat, transport: str, peer: Optional[Peer] = None,
              remote: str = "", local: bool = False, admitted: bool = False,
              started: Optional[float] = None,
              received: Optional[float] = None) -> Optional[str]:
        """Record one validated heartbeat and judge the agent; None if applied, else the
        reason it was refused (see admit). `started`: the start time of a local HTTP
        agent's process, when needs_start_time said so (against pid reuse). `received`:
        when an HTTP heartbeat arrived (perf_counter); workers may apply two of one agent
        out of order, and the older is then SUPERSEDED, not applied over the newer."""
        now, wall = self._clock(), self._wall()
        with self._intake_lock():
            refusal = self._refusal(hb.agent_id, peer, remote, admitted)
            if refusal is None and received is not None:
                rec = self._records.get(hb.agent_id)
                if rec is not None and rec.received is not None and received < rec.received:
                    refusal = SUPERSEDED
            if refusal is None:
                self._apply(hb, transport, peer, remote, local, started, now, wall)
                if received is not None:
                    self._records[hb.agent_id].received = received
        self._emit()
        return refusal

    def apply_many(self, beats: List[Heartbeat], transport: str, peer: Peer) -> List[Optional[str]]:
        """apply() for the heartbeats of one read on a Unix connection, holding the lock
        once for up to SLICE of them; each one's refusal or None, in order."""
        refusals: List[Optional[str]] = []
        now, wall = self._clock(), self._wall()
        for start in range(0, len(beats), SLICE):
            with self._intake_lock():
                for hb in beats[start:start + SLICE]:
                    refusal = self._refusal(hb.agent_id, peer, "", False)
                    if refusal is None:
                        self._apply(hb, transport, peer, "", False, None, now, wall)
                    refusals.append(refusal)
            self._emit()
        return refusals

    def _apply(self, hb: Heartbeat, transport: str, peer: Optional[Peer], remote: str,
               local: bool, started: Optional[float], now: float, wall: float) -> None:
        rec = self._records.get(hb.agent_id)
        if rec is None:
            rec = AgentRecord(hb.agent_id, wall, now, self._policies.for_agent(hb.agent_id))
            self._records[hb.agent_id] = rec
            self._counts[rec.state] += 1
            self._transports[rec.transport] += 1
        if rec.transport != transport:
            self._transports[rec.transport] -= 1
            self._transports[transport] += 1
        before = (rec.pid, rec.status, rec.version, rec.summary, rec.watcher, rec.transport,
                  rec.remote, rec.owner_uid, rec.local, rec.check_started)
        rec.pid, rec.status, rec.version = hb.pid, hb.status, hb.version
        if hb.cpu is not None:
            rec.cpu = hb.cpu
        if hb.memory is not None:
            rec.memory = hb.memory
        rec.agent_time, rec.summary, rec.watcher = hb.timestamp, hb.summary, hb.watcher
        if rec.heartbeats and rec.state in WATCHED and now > rec.due_from:
            gap = min(now - rec.due_from, MAX_INTERVAL)
            rec.interval = gap if rec.interval is None else rec.interval + (gap - rec.interval) / 4
        rec.last_seen, rec.due_from, rec.transport = wall, now, transport
        rec.heartbeats += 1
        if wall - rec.hist_at >= self.history_step:
            _remember(rec, wall)
        if peer is not None:
            if rec.conn_id != peer.conn_id:
                rec.conflict_noted = False
            rec.owner_uid = peer.uid
            rec.conn_id, rec.connected, rec.local = peer.conn_id, True, True
            rec.check_pid, rec.check_started, rec.peer_uid = peer.pid, peer.started, peer.uid
            rec.remote = ""
        else:
            rec.conn_id, rec.connected, rec.local, rec.remote = None, False, local, remote
            if not local:
                rec.check_pid, rec.check_started = None, None
            elif rec.check_pid != hb.pid:
                rec.check_pid, rec.check_started = hb.pid, started
            rec.peer_uid = None
        if hb.status == EXITED:  # a target its watcher saw end
            state, reason = State.DEAD, exit_reason(hb)
        elif hb.status == UNRESPONSIVE:  # alive, but not answering its watcher's probe
            state, reason = State.NO_HEARTBEAT, hb.detail or "its watcher's probe fails"
        else:
            state, reason = judge_heartbeat(rec, rec.policy, now)
        if state is not rec.state:
            self._change(rec, state, reason, now, wall)
        if before == (rec.pid, rec.status, rec.version, rec.summary, rec.watcher, rec.transport,
                      rec.remote, rec.owner_uid, rec.local, rec.check_started):
            self._touched.add(hb.agent_id)  # a routine heartbeat: written within a minute
        else:
            self._dirty.add(hb.agent_id)
        if hb.summary is not None and (hb.events or hb.problems is not None):
            self._relay(rec, hb, _source(peer, remote), now, wall)

    def _relay(self, daemon: AgentRecord, hb: Heartbeat, source: str, now: float,
               wall: float) -> None:
        """What a downstream daemon says of its agents: each one failing there is a record
        here, <daemon id>:<agent id> (transport "relay"), in the state and with the reason
        it has there, so this daemon shows it, records its events and alerts on it; it is
        dropped once it fails there no more. `events` are its changes in order; `problems`
        its failing agents now, and when the list is whole (problems_total), a relayed
        record it leaves out is no longer failing (a lost datagram heals at the next).

        One level only, so that no two daemons' relayed ids can meet: a daemon whose own
        id holds RELAY_SEPARATOR relays nothing, nor is an agent whose id holds it
        relayed. A new relayed record counts as a new id of the report's source
        (agent.new_agents_per_minute), and a daemon has at most MAX_RELAYED_PER_DAEMON."""
        if RELAY_SEPARATOR in daemon.agent_id:
            self._outbox.append((_NOTICE, "relay refused", logging.WARNING,
                                 "%s reports its agents' problems, but an id with %r "
                                 "cannot relay them (its agents' ids would be ambiguous)",
                                 (daemon.agent_id, RELAY_SEPARATOR)))
            return
        for agent_id, state, reason, _ in hb.events or ():
            if state != "unknown":  # unknown there (it restarted): nothing learned
                self._relayed_state(daemon.agent_id, agent_id, state, reason, source, now,
                                    wall)
        if hb.problems is None:
            return
        listed = {self._relayed_state(daemon.agent_id, agent_id, state, reason, source, now,
                                      wall)
                  for agent_id, state, reason, _ in hb.problems}
        if hb.problems_total == len(hb.problems):
            for relayed_id in list(self._relays.get(daemon.agent_id, ())):
                if relayed_id not in listed:
                    self._relayed_state(daemon.agent_id,
                                        relayed_id[len(daemon.agent_id) + 1:], "unknown",
                                        "no longer among its failing agents", source, now,
                                        wall)

    def _relayed_state(self, daemon_id: str, agent_id: str, state: str, reason: str,
                       source: str, now: float, wall: float) -> Optional[str]:
        """Set one relayed agent's state (see _relay); its id here, or None if it is not
        (or no longer) kept."""
        relayed_id = f"{daemon_id}{RELAY_SEPARATOR}{agent_id}"
        rec = self._records.get(relayed_id)
        failing = state in FAILING
        if rec is None:
            if not failing:
                return None
            why = ("its id holds " + repr(RELAY_SEPARATOR) if RELAY_SEPARATOR in agent_id
                   else "its relayed id is longer than 128 characters"
                   if not valid_agent_id(relayed_id)
                   else "that is the daemon's own id" if relayed_id in self.reserved_ids
                   else "the agent table is full" if len(self._records) >= self.max_agents
                   else f"{daemon_id} relays {MAX_RELAYED_PER_DAEMON} already"
                   if len(self._relays.get(daemon_id, ())) >= MAX_RELAYED_PER_DAEMON
                   else "its source made too many new ids this minute"
                   if not self.limiter.allow(source) else None)
            if why is not None:
                self._outbox.append((_NOTICE, "relay refused", logging.WARNING,
                                     "not keeping %s %s as reported by %s: %s",
                                     (agent_id, state, daemon_id, why)))
                return None
            rec = AgentRecord(relayed_id, wall, now, self._policies.for_agent(relayed_id))
            rec.relay, rec.transport = daemon_id, RELAY
            self._records[relayed_id] = rec
            self._counts[rec.state] += 1
            self._transports[RELAY] += 1
            self._relays.setdefault(daemon_id, set()).add(relayed_id)
        elif rec.relay != daemon_id:
            return None  # an agent of this daemon's own: not the report's to set
        rec.last_seen = wall
        text = f"{reason or state} (reported by {daemon_id})"
        target = State(state) if state in _STATE_NAMES else State.UNKNOWN  # "forgotten"
        if target is not rec.state:
            self._change(rec, target, text, now, wall)
        elif rec.reason != text:
            rec.reason = text
            self._mark_changed(relayed_id)
        if not failing:
            self._drop(rec, "", quiet=True)
            return None
        self._dirty.add(relayed_id)
        return relayed_id

    def needs_start_time(self, agent_id: str, pid: int) -> bool:
        """Whether apply() of a local HTTP heartbeat wants its process's start time: the
        agent is new or has a new pid (an unlocked read; apply decides under the lock)."""
        rec = self._records.get(agent_id)
        return rec is None or rec.check_pid != pid

    def _emit(self) -> None:
        """Hand queued events to the sink, outside the registry lock and in order. A thread
        that finds another emitting leaves its events to it: heartbeats never wait for a
        burst of events to be logged."""
        while self._outbox:
            if not self._emit_lock.acquire(blocking=False):
                return  # the emitter drains ours too: it looks again after releasing
            try:
                while self._outbox:
                    agent_id, old, new, reason, kind = self._outbox.popleft()
                    if agent_id is _NOTICE:
                        self._on_notice(old, new, reason, *kind)
                    else:
                        self._on_event(agent_id, old, new, reason, kind=kind)
            finally:
                self._emit_lock.release()

    def connection_closed(self, conn_id: int, agent_ids: Iterable[str],
                          exited: Optional[Callable[[float], bool]] = None) -> None:
        """A Unix connection that spoke for `agent_ids` ended: each is `dead` at once if
        the connection's process is gone. `exited(timeout)` says whether it is, waiting up to
        `timeout` (default: its pid and start time looked up in /proc).

        Usually (kill -9) the process is gone by the time its EOF is read: then one pass.
        Else this blocks up to ~0.2 s (outside the lock) while an exiting process finishes
        dying: once per connection, however many ids it spoke for.
        """
        ids = list(agent_ids)
        if not ids:
            return
        gone = exited is not None and exited(0.0)
        watch: List[Tuple[AgentRecord, int]] = []
        for chunk in _slices(ids):
            with self._urgent_lock():
                for agent_id in chunk:
                    rec = self._records.get(agent_id)
                    if rec is None or rec.conn_id != conn_id:
                        continue  # forgotten, or the agent has reconnected meanwhile
                    rec.connected, rec.conflict_noted = False, False
                    self._dirty.add(agent_id)
                    if rec.state in ENDED or rec.check_pid is None:
                        continue
                    if gone:
                        self._convict_closed(rec)
                    else:
                        watch.append((rec, rec.heartbeats))
            if gone:
                self._emit()
        if not watch:
            return
        pid, started = watch[0][0].check_pid, watch[0][0].check_started  # one peer per connection
        if not (exited(sum(process.EXIT_RECHECKS)) if exited is not None
                else self._wait_gone(pid, started)):
            log.info("agent %s%s: connection closed, process %d still running; waiting for it "
                     "to reconnect", watch[0][0].agent_id,
                     f" and {len(watch) - 1} more" if len(watch) > 1 else "", pid)
            return
        for chunk in _slices(watch):
            with self._urgent_lock():
                for rec, seen in chunk:
                    if self._records.get(rec.agent_id) is rec and rec.conn_id == conn_id \
                            and rec.heartbeats == seen and rec.state not in ENDED:
                        self._convict_closed(rec)
            self._emit()

    def _convict_closed(self, rec: AgentRecord) -> None:
        who = f"process {rec.check_pid}" if rec.pid == rec.check_pid else \
            f"its watcher (process {rec.check_pid}, which spoke for pid {rec.pid})"
        self._change(rec, State.DEAD, f"{who} is gone: connection closed without stopping",
                     self._clock(), self._wall())

    # -- the health checker's pass -------------------------------------------------------

    def check(self) -> Optional[float]:
        """Convict agents past their deadline; forget old ended and long-silent ones.
        Returns the next deadline. Holds the lock only in slices of SLICE records."""
        now, wall = self._clock(), self._wall()
        health = self._policies.health
        with self._lock:
            recs = list(self._records.values())
        expired: List[Tuple[AgentRecord, int]] = []
        stale: List[Tuple[AgentRecord, State]] = []
        hushed: List[Tuple[AgentRecord, int]] = []  # local, no_heartbeat: is the process gone?
        calmed: List[AgentRecord] = []  # state changes gone out of the flap window
        next_due = None
        for rec in recs:  # unlocked reads: every candidate is checked again under the lock
            if rec.relay is not None:
                continue  # judged where it runs; kept until its daemon says otherwise
            state = rec.state
            if rec.changes and rec.changes[0] < now - health.flap_window:
                calmed.append(rec)
            if state in WATCHED:
                due = rec.deadline()
                if due <= now:
                    expired.append((rec, rec.heartbeats))
                elif next_due is None or due < next_due:
                    next_due = due
            elif _forget_after(state, health) <= wall - rec.state_since:
                stale.append((rec, state))
            elif state is State.NO_HEARTBEAT and rec.local and rec.check_pid is not None:
                hushed.append((rec, rec.heartbeats))
        for chunk in _slices(calmed):
            with self._lock:
                for rec in chunk:
                    self._recount_changes(rec, now)
        for chunk in _slices(stale):
            with self._lock:
                for rec, state in chunk:
                    if self._records.get(rec.agent_id) is rec and rec.state is state:
                        self._drop(rec, f"forgotten after {wall - rec.state_since:.0f}s {state}")
            self._emit()
        # pid checks outside the lock: psutil reads /proc, once per process in a pass
        gone_pids = self._gone_pids(rec for rec, _ in expired + hushed)
        gone = {id(rec): rec.local and rec.check_pid is not None
                and gone_pids[(rec.check_pid, rec.check_started)] for rec, _ in expired}
        for chunk in _slices(expired):
            with self._lock:
                for rec, seen in chunk:
                    if self._records.get(rec.agent_id) is not rec or rec.heartbeats != seen \
                            or rec.state not in WATCHED or rec.deadline() > now:
                        continue
                    silent = f"no heartbeat for {wall - (rec.last_seen or rec.state_since):.1f}s"
                    if gone[id(rec)]:
                        self._change(rec, State.DEAD,
                                     f"{silent} and process {rec.check_pid} is gone", now, wall)
                    else:
                        self._change(rec, State.NO_HEARTBEAT, silent, now, wall)
            self._emit()
        self._convict_hushed(hushed, gone_pids, now, wall)
        return next_due

    def _gone_pids(self, recs: Iterable[AgentRecord]) -> Dict[tuple, bool]:
        """pid_gone for each (pid, start time) of the local `recs`, each looked up once: many
        agents of one process (HTTP agents of one program) would otherwise read /proc each,
        and every read gives the GIL up, which a busy daemon gives back slowly."""
        found: Dict[tuple, bool] = {}
        for rec in recs:
            key = (rec.check_pid, rec.check_started)
            if rec.local and rec.check_pid is not None and key not in found:
                found[key] = self._pid_gone(*key)
        return found

    def _convict_hushed(self, hushed: List[Tuple[AgentRecord, int]], gone_pids: Dict[tuple, bool],
                        now: float, wall: float) -> None:
        """`dead` for local agents in no_heartbeat whose process has ended since (hung, then
        killed; or its connection closed while it was alive): looked at every pass."""
        gone = [(rec, seen) for rec, seen in hushed
                if gone_pids.get((rec.check_pid, rec.check_started))]
        for chunk in _slices(gone):
            with self._lock:
                for rec, seen in chunk:
                    if self._records.get(rec.agent_id) is rec and rec.heartbeats == seen \
                            and rec.state is State.NO_HEARTBEAT:
                        self._change(rec, State.DEAD, f"process {rec.check_pid} is gone (no "
                                     f"heartbeat for {wall - (rec.last_seen or wall):.1f}s)",
                                     now, wall)
            self._emit()

    def grant_grace(self, reason: str) -> int:
        """Restart every watched agent's timeout from now (the checker itself was stalled)."""
        now = self._clock()
        with self._lock:
            watched = [rec for rec in self._records.values() if rec.state in WATCHED]
        for chunk in _slices(watched):
            with self._lock:
                for rec in chunk:
                    rec.due_from = max(rec.due_from, now)
        log.warning("health checker was stalled (%s): %d agents get a fresh grace period",
                    reason, len(watched))
        return len(watched)

    # -- state changes -------------------------------------------------------------------

    def _change(self, rec: AgentRecord, state: State, reason: str, now: float, wall: float) -> None:
        old = rec.state
        self._counts[old] -= 1
        self._counts[state] += 1
        if state.value in FAILING:
            self._failing.add(rec.agent_id)
        else:
            self._failing.discard(rec.agent_id)
        if old is State.UNKNOWN:
            rec.prior = None  # known again: what it was before the restart is history
        rec.state, rec.state_since, rec.reason = state, wall, reason
        if state not in WATCHED:
            rec.over_since, rec.below_count = None, 0
        rec.changes = (rec.changes or []) + [now]
        self._recount_changes(rec, now)
        self._dirty.add(rec.agent_id)
        self._mark_changed(rec.agent_id)
        self._outbox.append((rec.agent_id, old, state, reason, "state"))

    def _mark_changed(self, agent_id: str) -> None:
        self._seq += 1
        changed = self._changed
        changed[agent_id] = self._seq
        changed.move_to_end(agent_id)
        while len(changed) > len(self._records) + MAX_TOMBSTONES:
            self._horizon = changed.popitem(last=False)[1]

    def _recount_changes(self, rec: AgentRecord, now: float) -> None:
        """Keep the state changes within flap_window; flapping while they reach flap_threshold
        (so the flag clears once the agent has been steady for a window)."""
        health = self._policies.health
        # a short list, not a deque: 10,000 idle agents must stay small
        rec.changes = [t for t in (rec.changes or ()) if t >= now - health.flap_window] or None
        flapping = rec.changes is not None and len(rec.changes) >= health.flap_threshold
        if flapping != rec.flapping:  # logged after the lock is released (see _emit)
            if flapping:
                self._outbox.append((_NOTICE, "flapping", logging.WARNING,
                                     "agent %s: flapping (%d state changes in %.0fs)",
                                     (rec.agent_id, len(rec.changes), health.flap_window)))
            else:
                self._outbox.append((_NOTICE, "flapping stopped", logging.INFO,
                                     "agent %s: no longer flapping (fewer than %d state changes "
                                     "in %.0fs)", (rec.agent_id, health.flap_threshold,
                                                   health.flap_window)))
            self._dirty.add(rec.agent_id)
            self._mark_changed(rec.agent_id)
        rec.flapping = flapping

    def _drop(self, rec: AgentRecord, reason: str, quiet: bool = False) -> None:
        """Forget an agent and everything kept for it; a `forgotten` event tells the rest
        (`quiet`: a relayed agent whose last state change said it all). A downstream
        daemon's relayed agents go with it."""
        del self._records[rec.agent_id]
        self._counts[rec.state] -= 1
        self._transports[rec.transport] -= 1
        self._failing.discard(rec.agent_id)
        self._dirty.add(rec.agent_id)
        self._policies.forget(rec.agent_id)
        self._mark_changed(rec.agent_id)
        if rec.relay is not None:
            self._relays.get(rec.relay, set()).discard(rec.agent_id)
            if not self._relays.get(rec.relay, True):
                del self._relays[rec.relay]
        if not quiet:
            self._outbox.append((rec.agent_id, rec.state, rec.state, reason, "forgotten"))
        for relayed_id in sorted(self._relays.pop(rec.agent_id, ())):
            relayed = self._records.get(relayed_id)
            if relayed is not None:
                self._drop(relayed, f"forgotten with {rec.agent_id}, which reported it")

    # -- reads and administration -------------------------------------------------------

    def agent_times(self, transport: str) -> List[Tuple[str, str]]:
        """(agent_id, the agent's clock in its last heartbeat) for the agents last heard
        over `transport`: the UDP receiver's replay guard starts from them. One hold of
        the lock (~30 ms at 100,000 agents): it runs at start, before intake does."""
        with self._lock:
            return [(rec.agent_id, rec.agent_time) for rec in self._records.values()
                    if rec.transport == transport and rec.agent_time]

    def daemon_role(self, agent_id: str) -> Union[bool, str]:
        """True if the agent is a host's hbdaemon reporting to this one (it sends a
        summary); the id of that host's daemon if the agent is one of its, relayed; else
        False."""
        with self._lock:
            rec = self._records.get(agent_id)
            return False if rec is None else _role(rec)

    def get(self, agent_id: str) -> Optional[dict]:
        with self._lock:
            rec = self._records.get(agent_id)
            view = rec.view() if rec else None
        return present(view, self._clock()) if view else None

    def _copy(self, take: Callable[[AgentRecord], object]) -> list:
        """take(record) for every record, under the lock in slices: copy there, format outside."""
        with self._lock:
            recs = list(self._records.values())
        out = []
        for chunk in _slices(recs):
            with self._lock:
                out.extend(take(rec) for rec in chunk if self._records.get(rec.agent_id) is rec)
        return out

    def alerting(self, failing: Iterable[str]) -> List[Tuple[str, str, float, str, object]]:
        """(agent_id, state, since, reason, daemon_role) of every agent in one of the
        `failing` states; one `unknown` since a restart counts in the state it was in
        before (its alert goes on until its state is known again)."""
        failing = frozenset(failing)

        def take(rec: AgentRecord):
            daemon = _role(rec)
            if rec.state.value in failing:
                return rec.agent_id, rec.state.value, rec.state_since, rec.reason, daemon
            if rec.state is State.UNKNOWN and rec.prior and rec.prior[0] in failing:
                return rec.agent_id, rec.prior[0], rec.prior[1], rec.reason, daemon
            return None
        return [row for row in self._copy(take) if row is not None]

    def cursor(self) -> str:
        """Where changes() starts from now: this run of the daemon and its last change."""
        with self._lock:
            return f"{self._run}.{self._seq}"

    def changes(self, cursor: str, limit: int
                ) -> Optional[Tuple[List[dict], List[str], str, bool]]:
        """What changed after `cursor` (a state, flapping, forgotten), oldest first: (the
        records, the ids forgotten, the cursor to ask with next, whether more remain past
        `limit`); or None when the cursor is another run's or older than what is kept (the
        reader starts again from a fresh cursor). Raises ValueError for a malformed one."""
        run, _, text = cursor.partition(".")
        if len(run) != len(self._run) or not (text.isascii() and text.isdigit()) \
                or len(text) > 18:
            raise ValueError("not a cursor")
        since = int(text)
        with self._lock:
            if run != self._run or since < self._horizon or since > self._seq:
                return None
            newer = []
            for agent_id in reversed(self._changed):
                seq = self._changed[agent_id]
                if seq <= since:
                    break
                newer.append((seq, agent_id))
            newer.reverse()
            more = len(newer) > limit
            taken = newer[:limit]
            upto = taken[-1][0] if more else self._seq
            views, forgotten = [], []
            for _, agent_id in taken:
                rec = self._records.get(agent_id)
                if rec is None:
                    forgotten.append(agent_id)
                else:
                    views.append(rec.view())
        now = self._clock()
        return [present(view, now) for view in views], forgotten, f"{self._run}.{upto}", more

    def page(self, state: Optional[str] = None, match: Optional[str] = None,
             limit: int = 1000, after: str = "") -> Tuple[List[dict], Optional[str]]:
        """Records in agent_id order after `after`, in `state` (a state, or several
        separated by commas) and matching the glob `match` (None: any), at most `limit`;
        and the id to continue after, or None at the end. The lock is held a slice at a
        time, as for every whole-table pass."""
        states = None if state is None else frozenset(state.split(","))
        with self._lock:
            pool = self._failing if states is not None and states <= FAILING else self._records
            ids = [a for a in pool if a > after] if after else list(pool)
        ids.sort()  # outside the lock
        if match is not None:  # compiled here: fnmatch's own cache keeps 32,768 patterns
            ids = list(filter(re.compile(fnmatch.translate(match)).match, ids))
        found: List[dict] = []
        for chunk in _slices(ids):
            with self._lock:
                views = [rec.view() for rec in map(self._records.get, chunk) if rec is not None
                         and (states is None or rec.state.value in states)]
            now = self._clock()
            found.extend(present(view, now) for view in views[:limit + 1 - len(found)])
            if len(found) > limit:
                return found[:limit], found[limit - 1]["agent_id"]
        return found, None

    def snapshot(self) -> List[dict]:
        """Every record as the API shows it, sorted by agent_id."""
        return [view for chunk in self.snapshot_chunks() for view in chunk]

    def snapshot_chunks(self) -> Iterable[List[dict]]:
        """snapshot() a slice at a time: whoever formats it holds one slice of records as
        dicts at a time, not all of them (10,000 agents are ~12 MB of dicts)."""
        with self._lock:
            ids = list(self._records)
        ids.sort()  # outside the lock: 100,000 ids take tens of ms
        for chunk in _slices(ids):
            with self._lock:
                views = [rec.view() for rec in map(self._records.get, chunk) if rec is not None]
            now = self._clock()
            yield [present(view, now) for view in views]

    def metric_rows(self) -> List[tuple]:
        """(agent_id, state, last_seen, cpu, memory, heartbeats, flapping) per agent: cheap to scrape."""
        rows = self._copy(lambda r: (r.agent_id, r.state.value, r.last_seen, r.cpu, r.memory,
                                     r.heartbeats, r.flapping))
        rows.sort()
        return rows

    def history(self, agent_ids: Iterable[str]) -> Dict[str, dict]:
        """Recent cpu/memory samples of these agents (those with any), oldest first,
        history_step apart."""
        with self._lock:
            samples = [(rec.agent_id, rec.hist[:]) for rec in map(self._records.get, agent_ids)
                       if rec is not None and rec.hist]
        return _samples(samples)

    def history_chunks(self) -> Iterable[Dict[str, dict]]:
        """history() of every agent, a slice of them at a time."""
        with self._lock:
            recs = list(self._records.values())
        for chunk in _slices(recs):
            with self._lock:
                samples = [(rec.agent_id, rec.hist[:]) for rec in chunk if rec.hist]
            yield _samples(samples)

    def summary(self) -> dict:
        """`total`, `by_state`, `by_transport`, the oldest problem (the agent longest in
        no_heartbeat or dead, or null), and the `cursor` to poll changes() from: a few
        fields whatever the size of the table."""
        oldest: Optional[Tuple[float, str, str]] = None
        with self._lock:
            total = len(self._records)
            by_state = {s.value: self._counts[s] for s in State}
            by_transport = {t or "none": n for t, n in self._transports.items() if n > 0}
            cursor = f"{self._run}.{self._seq}"
            failing = list(self._failing)
        for chunk in _slices(failing):  # a few, or at worst a slice of the lock at a time
            with self._lock:
                for rec in map(self._records.get, chunk):
                    if rec is not None and rec.state in PROBLEMS \
                            and (oldest is None or rec.state_since < oldest[0]):
                        oldest = (rec.state_since, rec.agent_id, rec.state.value)
        return {"total": total, "by_state": by_state, "by_transport": by_transport,
                "cursor": cursor,
                "oldest_problem": None if oldest is None else {
                    "agent_id": oldest[1], "state": oldest[2],
                    "since": format_rfc3339(oldest[0])}}

    def problems(self, limit: int) -> Tuple[List[dict], int]:
        """Up to `limit` failing agents (dead, no_heartbeat, over_threshold) as a
        downstream daemon reports them upward (oldest problem first), and how many fail."""
        with self._lock:
            total = sum(self._counts[State(s)] for s in FAILING) + self._counts[State.UNKNOWN]
        if not total:
            return [], 0

        def take(rec: AgentRecord):
            if rec.state.value in FAILING:
                return rec.state_since, rec.agent_id, rec.state.value, rec.reason
            if rec.state is State.UNKNOWN and rec.prior and rec.prior[0] in FAILING:
                # since a restart: failing as before it until known (as its alert goes on)
                return rec.prior[1], rec.agent_id, rec.prior[0], rec.reason
            return None
        rows = [row for row in self._copy(take) if row is not None]
        rows.sort()
        return [{"agent_id": agent_id, "state": state, "since": format_rfc3339(since),
                 "reason": reason[:MAX_REASON]}
                for since, agent_id, state, reason in rows[:limit]], len(rows)

    def counts(self) -> Dict[str, int]:
        """How many agents are in each state."""
        with self._lock:
            return {s.value: self._counts[s] for s in State}

    def __contains__(self, agent_id: str) -> bool:
        return agent_id in self._records  # one dict lookup: atomic, no lock needed

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def forget(self, agent_id: str, by: str = "") -> Optional[str]:
        """Drop an agent (DELETE /agents/<id>): None if done, else why not: UNKNOWN, or
        ID_CONFLICT while a live Unix connection holds it (it would only come back, and
        forgetting must not free a held id for someone else). `by` says who asked."""
        with self._lock:
            rec = self._records.get(agent_id)
            if rec is None:
                return UNKNOWN
            if rec.connected:
                return ID_CONFLICT
            self._drop(rec, f"forgotten on request{' by ' + by if by else ''}")
        self._emit()
        return None

    def set_policies(self, policies: PolicySet) -> None:
        """Apply reloaded thresholds to every agent."""
        with self._lock:
            self._policies = policies
            recs = list(self._records.values())
        for chunk in _slices(recs):  # glob matching per agent: not in one long hold
            with self._lock:
                for rec in chunk:
                    rec.policy = policies.for_agent(rec.agent_id)

    def take_dirty(self, limit: int = 1000, everything: bool = False
                   ) -> List[Tuple[str, Optional[dict]]]:
        """Up to `limit` records changed since they were last taken: (agent_id, stored form
        or None if forgotten); those a routine heartbeat changed once every TOUCH_INTERVAL,
        or with `everything` (the last pass at stop). Call again until it returns nothing.
        Holds the lock for at most SLICE records at a time."""
        out: List[Tuple[str, Optional[dict]]] = []
        if self._touched and (everything or self._clock() - self._touched_at >= TOUCH_INTERVAL):
            with self._lock:
                touched, self._touched, self._touched_at = self._touched, set(), self._clock()
            for chunk in _slices(list(touched)):
                with self._lock:
                    self._dirty.update(chunk)
        while len(out) < limit:
            if out:
                time.sleep(0)
            with self._lock:
                for _ in range(min(SLICE, limit - len(out), len(self._dirty))):
                    agent_id = self._dirty.pop()
                    rec = self._records.get(agent_id)
                    out.append((agent_id, rec.to_store() if rec else None))
                if not self._dirty:
                    break
        return out

    def load(self, stored: List[dict]) -> None:
        """Bring back records from the store after a restart: watched ones become `unknown`
        (an event each; the record as stored is what they were, so it is not rewritten)."""
        now, wall = self._clock(), self._wall()
        skipped = 0
        checks, unknown = _STORED, State.UNKNOWN
        with self._lock:
            for data in stored:
                agent_id = data.get("agent_id") if isinstance(data, dict) else None
                if not valid_agent_id(agent_id) or agent_id in self._records:
                    continue
                rec = AgentRecord(agent_id, wall, now, self._policies.for_agent(agent_id))
                for name, value in data.items():
                    check = checks.get(name)
                    if check is None:
                        if name == "state":
                            rec.state = _STATE_BY_NAME.get(value, unknown) \
                                if isinstance(value, str) else unknown
                    elif check(value):
                        setattr(rec, name, value)
                    else:
                        skipped += 1  # a value of the wrong kind: the field keeps its default
                if rec.interval is not None and not 0 < rec.interval <= MAX_INTERVAL:
                    rec.interval = None
                rec.due_from = now + _restart_grace(rec) - rec.policy.heartbeat_timeout
                self._records[agent_id] = rec
                if rec.relay is not None:  # as its daemon last said: not unknown
                    self._relays.setdefault(rec.relay, set()).add(agent_id)
                elif rec.state not in ENDED and rec.state is not unknown:
                    # an alert it raised goes on until its state is known again
                    old = rec.state
                    rec.prior = [old.value, rec.state_since]
                    rec.state, rec.state_since = unknown, wall
                    rec.reason = f"daemon restarted; was {old}"
                    self._outbox.append((agent_id, old, unknown, rec.reason, "state"))
                self._counts[rec.state] += 1
                self._transports[rec.transport] += 1
                if rec.state.value in FAILING:
                    self._failing.add(agent_id)
        if skipped:
            log.warning("state store: %d stored fields of the wrong kind were left out", skipped)
        self._emit()


def _samples(samples: List[Tuple[str, array]]) -> Dict[str, dict]:
    return {agent_id: {"cpu": [round(v, 2) for v in hist[0::2]],
                       "memory": [int(v) for v in hist[1::2]]} for agent_id, hist in samples}


def _slices(items: list) -> Iterable[list]:
    """`items` SLICE at a time, yielding the CPU between slices: a thread waiting for the
    lock gets it (and the GIL) before the next slice, not after the whole pass."""
    for start in range(0, len(items), SLICE):
        if start:
            time.sleep(0)
        yield items[start:start + SLICE]


def _number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _optional(check):
    return lambda value: value is None or check(value)


def _text(value) -> bool:
    return type(value) is str


def _count(value) -> bool:
    return type(value) is int and value >= 0


# What a stored record may bring back, and the kind of each value: the file is input too
# (a row edited by hand, or from another version), and a wrong kind would break the checker
# or the API for every agent. `connected` and the rest of the live state are never restored.
_STORED = {
    "state_since": _number, "reason": _text, "pid": _count, "status": _text,
    "version": _text, "cpu": _number, "memory": _count, "transport": _text,
    "last_seen": _optional(_number), "agent_time": _optional(_text), "first_seen": _number,
    "heartbeats": _count, "local": lambda v: type(v) is bool,
    "check_pid": _optional(_count), "check_started": _optional(_number), "remote": _text,
    "peer_uid": _optional(_count), "owner_uid": _optional(_count),
    "summary": _optional(lambda v: type(v) is dict), "interval": _optional(_number),
    "watcher": _optional(valid_agent_id), "relay": _optional(valid_agent_id),
    "prior": _optional(lambda v: type(v) is list and len(v) == 2 and isinstance(v[0], str)
                       and v[0] in _STATE_NAMES
                       and _number(v[1])),
}
_STATE_NAMES = frozenset(s.value for s in State)
_STATE_BY_NAME = {s.value: s for s in State}


def _restart_grace(rec: AgentRecord) -> float:
    """How long an agent remembered from before a restart has to send its first heartbeat."""
    timeout = rec.policy.heartbeat_timeout
    return timeout if rec.interval is None else max(timeout, RESTART_INTERVALS * rec.interval)


def _forget_after(state: State, health) -> float:
    """How long an agent may stay in `state` before it is forgotten (inf: never)."""
    if state in ENDED:
        return health.forget_after
    if state is State.NO_HEARTBEAT:
        return health.forget_silent_after
    return float("inf")


def _role(rec: AgentRecord) -> Union[bool, str]:
    return rec.relay or rec.summary is not None


def _holder(rec: AgentRecord, peer: Optional[Peer]) -> str:
    """Who else speaks for `rec`, in words, if `peer` (None: HTTP) may not; else ""."""
    if rec.connected:
        # only the holding connection, or the same process reconnecting before its old
        # connection's EOF was seen, speaks for an id held on the socket
        if peer is None or (peer.conn_id != rec.conn_id and (
                peer.pid != rec.check_pid or peer.started != rec.check_started)):
            return f"the Unix connection of pid {rec.check_pid} holds"
        return ""
    # an id spoken for on the socket stays its uid's (root may move it) until forgotten:
    # nobody else takes it while its agent restarts, or the daemon does
    if peer is not None and rec.owner_uid is not None and peer.uid not in (rec.owner_uid, 0):
        return f"uid {rec.owner_uid} owns on the socket"
    return ""


def _source(peer: Optional[Peer], remote: str) -> str:
    """Who creates new ids, for the limiter: a Unix peer's uid, or an HTTP client's block of
    addresses (see address_block)."""
    return f"uid:{peer.uid}" if peer is not None else f"addr:{address_block(remote)}"


def _who(peer: Optional[Peer], remote: str) -> str:
    """`a Unix connection of uid 1000` or `HTTP client 10.0.0.5`: for events and logs."""
    return f"a Unix connection of uid {peer.uid}" if peer is not None else f"HTTP client {remote}"

