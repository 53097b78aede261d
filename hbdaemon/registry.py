"""The registry: the single owner of agent records and of every change of state."""

import logging
import threading
import time
from array import array
from typing import Callable, Dict, List, Optional, Tuple

from hbdaemon import process
from hbdaemon.health import ENDED, WATCHED, PolicySet, State, judge_heartbeat
from hbdaemon.protocol import Heartbeat, format_rfc3339, parse_rfc3339

log = logging.getLogger(__name__)

HISTORY_LEN = 60  # samples kept per agent for the status page's sparklines

# on_event(agent_id, from_state, to_state, reason); called with the registry lock held,
# so events of one agent arrive in order. It must be quick and must not call back in.
EventSink = Callable[[str, State, State, str], None]


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
                 "peer_uid", "summary", "hist_at", "hist")

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
        self.summary = None          # set when the agent is a downstream hbdaemon
        self.hist_at = 0.0           # wall time of the last history sample
        self.hist = None             # array('f'): cpu, memory, cpu, memory, ... (one small object)

    def deadline(self) -> float:
        return self.due_from + self.policy.heartbeat_timeout

    def to_dict(self, now: float) -> dict:
        """The API's view of this record (`now` is the monotonic clock)."""
        return {
            "agent_id": self.agent_id, "state": self.state.value,
            "state_since": format_rfc3339(self.state_since), "reason": self.reason,
            "pid": self.pid, "status": self.status, "version": self.version,
            "cpu": self.cpu, "memory": self.memory, "transport": self.transport,
            "last_seen": format_rfc3339(self.last_seen),
            "agent_time": format_rfc3339(parse_rfc3339(self.agent_time)) if self.agent_time else None,
            "first_seen": format_rfc3339(self.first_seen), "heartbeats": self.heartbeats,
            "connected": self.connected, "remote": self.remote, "peer_uid": self.peer_uid,
            "flapping": self.flapping, "summary": self.summary,
            "recent_changes": len(self.changes) if self.changes else 0,
            "heartbeat_timeout": self.policy.heartbeat_timeout,
            "cpu_threshold": self.policy.cpu_threshold,
            "memory_threshold": self.policy.memory_threshold,
            "deadline_in": round(self.deadline() - now, 3) if self.state in WATCHED else None,
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
                "peer_uid": self.peer_uid, "summary": self.summary}


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
                 history_step: float = 10.0):
        self._policies = policies
        self._on_event = on_event
        self._clock = clock
        self._wall = wallclock
        self._pid_gone = pid_gone
        self._wait_gone = wait_gone
        self.history_step = history_step
        self._lock = threading.Lock()
        self._records: Dict[str, AgentRecord] = {}
        self._dirty: set = set()

    # -- intake -------------------------------------------------------------------------

    def apply(self, hb: Heartbeat, transport: str, peer: Optional[Peer] = None,
              remote: str = "", local: bool = False) -> None:
        """Record one validated heartbeat and judge the agent."""
        now, wall = self._clock(), self._wall()
        with self._lock:
            rec = self._records.get(hb.agent_id)
            if rec is None:
                rec = AgentRecord(hb.agent_id, wall, now, self._policies.for_agent(hb.agent_id))
                self._records[hb.agent_id] = rec
            rec.pid, rec.status, rec.version = hb.pid, hb.status, hb.version
            rec.cpu, rec.memory, rec.agent_time = hb.cpu, hb.memory, hb.timestamp
            rec.summary = hb.summary
            rec.last_seen, rec.due_from, rec.transport = wall, now, transport
            rec.heartbeats += 1
            if wall - rec.hist_at >= self.history_step:
                _remember(rec, wall)
            if peer is not None:
                rec.conn_id, rec.connected, rec.local = peer.conn_id, True, True
                rec.check_pid, rec.check_started, rec.peer_uid = peer.pid, peer.started, peer.uid
                rec.remote = ""
            else:
                rec.conn_id, rec.connected, rec.local, rec.remote = None, False, local, remote
                rec.check_pid, rec.check_started, rec.peer_uid = (hb.pid if local else None), None, None
            state, reason = judge_heartbeat(rec, rec.policy, now)
            if state is not rec.state:
                self._change(rec, state, reason, now, wall)
            self._dirty.add(hb.agent_id)

    def connection_closed(self, agent_id: str, conn_id: int) -> None:
        """A Unix connection ended: `dead` at once if its process is gone.

        Blocks up to ~0.2 s (outside the lock) while an exiting process finishes dying.
        """
        with self._lock:
            rec = self._records.get(agent_id)
            if rec is None or rec.conn_id != conn_id:
                return  # forgotten, or the agent has reconnected meanwhile
            rec.connected = False
            self._dirty.add(agent_id)
            if rec.state in ENDED or rec.check_pid is None:
                return
            pid, started, seen = rec.check_pid, rec.check_started, rec.heartbeats
        if not self._wait_gone(pid, started):
            log.info("agent %s: connection closed, process %d still running; waiting for it "
                     "to reconnect", agent_id, pid)
            return
        with self._lock:
            rec = self._records.get(agent_id)
            if rec is None or rec.conn_id != conn_id or rec.heartbeats != seen or rec.state in ENDED:
                return
            self._change(rec, State.DEAD,
                         f"process {pid} is gone: connection closed without stopping",
                         self._clock(), self._wall())

    # -- the health checker's pass -------------------------------------------------------

    def check(self) -> Optional[float]:
        """Convict agents past their deadline; forget old ended ones. Returns the next deadline."""
        now, wall = self._clock(), self._wall()
        forget_after = self._policies.health.forget_after
        expired: List[Tuple[AgentRecord, int]] = []
        forgotten = []
        next_due = None
        with self._lock:
            for rec in self._records.values():
                if rec.state in WATCHED:
                    due = rec.deadline()
                    if due <= now:
                        expired.append((rec, rec.heartbeats))
                    elif next_due is None or due < next_due:
                        next_due = due
                elif rec.state in ENDED and wall - rec.state_since >= forget_after:
                    forgotten.append(rec.agent_id)
            for agent_id in forgotten:
                log.info("agent %s: forgotten after %.0fs %s", agent_id,
                         wall - self._records[agent_id].state_since, self._records[agent_id].state)
                del self._records[agent_id]
                self._dirty.add(agent_id)
        # pid checks outside the lock: psutil reads /proc
        gone = {id(rec): rec.local and rec.check_pid is not None
                and self._pid_gone(rec.check_pid, rec.check_started) for rec, _ in expired}
        with self._lock:
            for rec, seen in expired:
                if self._records.get(rec.agent_id) is not rec or rec.heartbeats != seen \
                        or rec.state not in WATCHED or rec.deadline() > now:
                    continue
                silent = f"no heartbeat for {wall - (rec.last_seen or rec.state_since):.1f}s"
                if gone[id(rec)]:
                    self._change(rec, State.DEAD, f"{silent} and process {rec.check_pid} is gone",
                                 now, wall)
                else:
                    self._change(rec, State.NO_HEARTBEAT, silent, now, wall)
        return next_due

    def grant_grace(self, reason: str) -> int:
        """Restart every watched agent's timeout from now (the checker itself was stalled)."""
        now = self._clock()
        with self._lock:
            watched = [rec for rec in self._records.values() if rec.state in WATCHED]
            for rec in watched:
                rec.due_from = max(rec.due_from, now)
        log.warning("health checker was stalled (%s): %d agents get a fresh grace period",
                    reason, len(watched))
        return len(watched)

    # -- state changes -------------------------------------------------------------------

    def _change(self, rec: AgentRecord, state: State, reason: str, now: float, wall: float) -> None:
        old = rec.state
        rec.state, rec.state_since, rec.reason = state, wall, reason
        if state not in WATCHED:
            rec.over_since, rec.below_count = None, 0
        window = self._policies.health.flap_window
        # a short list, not a deque: 10,000 idle agents must stay small
        rec.changes = [t for t in (rec.changes or ()) if t >= now - window] + [now]
        flapping = len(rec.changes) >= self._policies.health.flap_threshold
        if flapping and not rec.flapping:
            log.warning("agent %s: flapping (%d state changes in %.0fs)",
                        rec.agent_id, len(rec.changes), window)
        rec.flapping = flapping
        self._dirty.add(rec.agent_id)
        self._on_event(rec.agent_id, old, state, reason)

    # -- reads and administration -------------------------------------------------------

    def get(self, agent_id: str) -> Optional[dict]:
        with self._lock:
            rec = self._records.get(agent_id)
            return rec.to_dict(self._clock()) if rec else None

    def snapshot(self) -> List[dict]:
        """Every record as the API shows it, sorted by agent_id."""
        now = self._clock()
        with self._lock:
            recs = list(self._records.values())
            out = [rec.to_dict(now) for rec in recs]
        out.sort(key=lambda r: r["agent_id"])
        return out

    def metric_rows(self) -> List[tuple]:
        """(agent_id, state, last_seen, cpu, memory, heartbeats, flapping) per agent: cheap to scrape."""
        with self._lock:
            return sorted((r.agent_id, r.state.value, r.last_seen, r.cpu, r.memory, r.heartbeats,
                           r.flapping) for r in self._records.values())

    def history(self) -> Dict[str, dict]:
        """Recent cpu/memory samples per agent, oldest first, history_step apart."""
        with self._lock:
            return {r.agent_id: {"cpu": [round(v, 2) for v in r.hist[0::2]],
                                 "memory": [int(v) for v in r.hist[1::2]]}
                    for r in self._records.values() if r.hist}

    def counts(self) -> Dict[str, int]:
        """How many agents are in each state."""
        counts = {s.value: 0 for s in State}
        with self._lock:
            for rec in self._records.values():
                counts[rec.state.value] += 1
        return counts

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def forget(self, agent_id: str) -> bool:
        """Drop an agent (DELETE /agents/<id>); False if unknown."""
        with self._lock:
            if self._records.pop(agent_id, None) is None:
                return False
            self._dirty.add(agent_id)
        log.info("agent %s: forgotten on request", agent_id)
        return True

    def set_policies(self, policies: PolicySet) -> None:
        """Apply reloaded thresholds to every agent."""
        with self._lock:
            self._policies = policies
            for rec in self._records.values():
                rec.policy = policies.for_agent(rec.agent_id)

    def take_dirty(self, limit: int = 1000) -> List[Tuple[str, Optional[dict]]]:
        """Up to `limit` records changed since they were last taken: (agent_id, stored form
        or None if forgotten). Call again until it returns nothing."""
        with self._lock:
            out = []
            while self._dirty and len(out) < limit:
                agent_id = self._dirty.pop()
                rec = self._records.get(agent_id)
                out.append((agent_id, rec.to_store() if rec else None))
            return out

    def load(self, stored: List[dict]) -> None:
        """Bring back records from the store after a restart: watched ones become `unknown`."""
        now, wall = self._clock(), self._wall()
        with self._lock:
            for data in stored:
                agent_id = data.get("agent_id")
                if not isinstance(agent_id, str) or agent_id in self._records:
                    continue
                rec = AgentRecord(agent_id, wall, now, self._policies.for_agent(agent_id))
                for name, value in data.items():
                    if name == "state":
                        try:
                            rec.state = State(value)
                        except ValueError:
                            rec.state = State.UNKNOWN
                    elif name in AgentRecord.__slots__ and name not in ("policy", "changes"):
                        setattr(rec, name, value)
                self._records[agent_id] = rec
                if rec.state not in ENDED and rec.state is not State.UNKNOWN:
                    self._change(rec, State.UNKNOWN, f"daemon restarted; was {rec.state}", now, wall)
