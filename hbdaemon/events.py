"""Events: every change of an agent's state, logged, kept in a bounded ring and fanned out."""

import collections
import logging
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional

from hbdaemon.protocol import format_rfc3339

log = logging.getLogger(__name__)

# Arrivals in these states are logged at WARNING; the rest at INFO.
_ALARMING = frozenset(("no_heartbeat", "dead", "over_threshold", "hook_suspended"))


class Event:
    """One change of state (kind "state") or a note about an agent (e.g. "hook_suspended")."""

    __slots__ = ("id", "time", "agent_id", "from_state", "to_state", "reason", "kind")

    def __init__(self, id: int, time: float, agent_id: str, from_state: str, to_state: str,
                 reason: str, kind: str = "state"):
        self.id, self.time, self.agent_id = id, time, agent_id
        self.from_state, self.to_state, self.reason, self.kind = from_state, to_state, reason, kind

    def to_dict(self) -> dict:
        return {"id": self.id, "time": format_rfc3339(self.time), "agent_id": self.agent_id,
                "from": self.from_state, "to": self.to_state, "reason": self.reason,
                "kind": self.kind}

    @classmethod
    def from_row(cls, row) -> "Event":
        return cls(*row)

    def to_row(self) -> tuple:
        return (self.id, self.time, self.agent_id, self.from_state, self.to_state, self.reason,
                self.kind)


ID_BLOCK = 10_000  # event ids reserved in the store at a time (see EventLog.reserve)


class EventLog:
    """The most recent events in memory, with listeners called for each new one.

    Thread-safe. Listeners run in the caller's thread and must not block.

    With `durable`, query() shows only events the store has written (mark_written): an
    event anyone has seen through the API survives a kill -9. With `reserve`, ids are
    reserved in the store ID_BLOCK at a time before they are given out, so an id is never
    given to two events, even across a crash that lost the first one.
    """

    def __init__(self, max_events: int, wallclock: Callable[[], float] = time.time,
                 durable: bool = False, reserve: Optional[Callable[[int], None]] = None):
        self._ring = collections.deque(maxlen=max_events)
        self._lock = threading.Lock()
        self._wall = wallclock
        self._next_id = 1
        self._reserved: Optional[int] = None  # ids up to here may be given out
        self._reserve = reserve
        # ids given out and not yet written (None: no such gate, everything is shown).
        # Threads record events concurrently and the store may write a later id first:
        # shown are the ids below the oldest one still unwritten.
        self._unwritten: Optional[set] = set() if durable else None
        self._listeners: List[Callable[[Event], None]] = []
        self.counts: Dict[str, int] = collections.Counter()

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    def restore(self, events: List[Event], reserved: int = 0) -> None:
        """Reload persisted events (oldest first) after a restart; ids continue after them
        and after every id reserved before (some may have been given out, then lost)."""
        with self._lock:
            for ev in events:
                self._ring.append(ev)
                self._next_id = max(self._next_id, ev.id + 1)
            self._next_id = max(self._next_id, reserved + 1)

    def mark_written(self, ids: Iterable[int]) -> None:
        """The store has written these events (or given up on them): they may be shown."""
        with self._lock:
            if self._unwritten is not None:
                self._unwritten.difference_update(ids)

    def record(self, agent_id: str, from_state, to_state, reason: str,
               kind: str = "state") -> Event:
        """Add an event, log it and hand it to every listener."""
        with self._lock:
            if self._reserve is not None and (self._reserved is None
                                              or self._next_id > self._reserved):
                self._reserved = self._next_id + ID_BLOCK - 1
                try:  # rare (once per ID_BLOCK events): a synchronous write to the store
                    self._reserve(self._reserved)
                except Exception as exc:
                    log.error("cannot reserve event ids up to %d (%s): after a crash an id "
                              "could be given out twice", self._reserved, exc)
            ev = Event(self._next_id, self._wall(), agent_id, str(from_state), str(to_state),
                       reason, kind)
            self._next_id += 1
            self._ring.append(ev)
            if self._unwritten is not None:
                self._unwritten.add(ev.id)
            self.counts[ev.to_state if kind == "state" else kind] += 1
        level = logging.WARNING if ev.to_state in _ALARMING or kind != "state" else logging.INFO
        if kind == "state":
            log.log(level, "agent %s: %s -> %s (%s)", agent_id, ev.from_state, ev.to_state, reason)
        else:
            log.log(level, "agent %s: %s: %s", agent_id, kind, reason)
        for listener in self._listeners:
            try:
                listener(ev)
            except Exception:  # a broken listener must not stop the others or the caller
                log.exception("event listener %r failed", listener)
        return ev

    def query(self, since: Optional[float] = None, agent: Optional[str] = None,
              after_id: Optional[int] = None, limit: int = 1000) -> List[Event]:
        """Events after `since` (epoch) / `after_id`, oldest first, at most `limit`: the
        newest ones, or with `after_id` the next ones (a follower pages forward, and a burst
        larger than `limit` is not skipped)."""
        with self._lock:
            events = list(self._ring)
            # only what a crash cannot lose: below the oldest event not yet written
            shown = min(self._unwritten) - 1 if self._unwritten else float("inf")
        out = [ev for ev in events
               if (since is None or ev.time >= since) and (after_id or 0) < ev.id <= shown
               and (agent is None or ev.agent_id == agent)]
        if not limit:
            return out
        return out[-limit:] if after_id is None else out[:limit]
