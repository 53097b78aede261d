"""Events: every change of an agent's state, logged, kept in a bounded ring and fanned out."""

import collections
import logging
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional

from hbdaemon.protocol import format_rfc3339
from hbdaemon.threads import Component, alive, guard, halt

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
# Event lines a second logged one by one; beyond, one line a second counts the rest (a
# storm of thousands a second would flood the log, and journald drops past 10,000 per
# 30 s anyway). Every event is still kept, stored and shown by GET /events.
LOG_PER_SECOND = 100


class EventLog:
    """The most recent events in memory, with listeners called for each new one.

    Thread-safe. Listeners run in the caller's thread and must not block.

    With `durable`, query() shows only events the store has written (mark_written): an
    event anyone has seen through the API survives a kill -9. With `reserve`, ids are
    reserved in the store ID_BLOCK at a time before they are given out, so an id is never
    given to two events, even across a crash that lost the first one. With `reserve_ahead`
    too, the next block is asked for when half of one is used, to be written with the
    store's next batch (it calls reserved() once it is); `reserve` then writes at once only
    if the ids run out before that: it waits behind the store's writer, and a storm of
    events would queue behind it.
    """

    def __init__(self, max_events: int, wallclock: Callable[[], float] = time.time,
                 durable: bool = False, reserve: Optional[Callable[[int], None]] = None,
                 reserve_ahead: Optional[Callable[[int], None]] = None):
        self._ring = collections.deque(maxlen=max_events)
        self._lock = threading.Lock()
        self._wall = wallclock
        self._next_id = 1
        self._reserved: Optional[int] = None  # ids up to here may be given out
        self._reserve, self._reserve_ahead = reserve, reserve_ahead
        self._asked: Optional[int] = None  # the block asked of reserve_ahead, until reserved()
        # ids given out and not yet written (None: no such gate, everything is shown).
        # Threads record events concurrently and the store may write a later id first:
        # shown are the ids below the oldest one still unwritten.
        self._unwritten: Optional[set] = set() if durable else None
        self._listeners: List[Callable[[Event], None]] = []
        self.counts: Dict[str, int] = collections.Counter()
        self._clock = time.monotonic
        self._log_second = 0.0          # start of the current second of event lines
        self._logged_this_second = 0
        self._unlogged = collections.Counter()  # transitions not logged one by one

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

    def reserved(self, upto: int) -> None:
        """The store has written that ids up to `upto` may be given out (see reserve_ahead)."""
        with self._lock:
            if self._reserved is not None and upto > self._reserved:
                self._reserved = upto
            if self._asked is not None and upto >= self._asked:
                self._asked = None

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
            elif self._reserve_ahead is not None and self._asked is None and \
                    self._next_id > self._reserved - ID_BLOCK // 2:
                self._asked = self._reserved + ID_BLOCK
                self._reserve_ahead(self._asked)
            ev = Event(self._next_id, self._wall(), agent_id, str(from_state), str(to_state),
                       reason, kind)
            self._next_id += 1
            self._ring.append(ev)
            if self._unwritten is not None:
                self._unwritten.add(ev.id)
            self.counts[ev.to_state if kind == "state" else kind] += 1
            one_by_one = self._budget(f"{ev.from_state} -> {ev.to_state}" if kind == "state"
                                      else kind)
        if one_by_one:
            level = logging.WARNING if ev.to_state in _ALARMING or kind != "state" \
                else logging.INFO
            if kind == "state":
                log.log(level, "agent %s: %s -> %s (%s)", agent_id, ev.from_state, ev.to_state,
                        reason)
            else:
                log.log(level, "agent %s: %s: %s", agent_id, kind, reason)
        for listener in self._listeners:
            try:
                listener(ev)
            except Exception:  # a broken listener must not stop the others or the caller
                log.exception("event listener %r failed", listener)
        return ev

    def _budget(self, label: str) -> bool:
        """Under the lock: may a line about an event (counted as `label` if not) be logged
        on its own (see LOG_PER_SECOND)?"""
        if self._clock() - self._log_second >= 1.0:
            self._flush_unlogged()
        if self._logged_this_second < LOG_PER_SECOND:
            self._logged_this_second += 1
            return True
        self._unlogged[label] += 1
        return False

    def notice(self, label: str, level: int, message: str, *args) -> None:
        """Log a line about an agent that is not an event (it starts flapping, say) under
        the same budget as event lines; past it, it is counted as `label`."""
        with self._lock:
            one_by_one = self._budget(label)
        if one_by_one:
            log.log(level, message, *args)

    def flush_unlogged(self) -> None:
        """Log the count of events not logged one by one, once their second is over."""
        with self._lock:
            if self._unlogged and self._clock() - self._log_second >= 1.0:
                self._flush_unlogged()

    def _flush_unlogged(self) -> None:
        if self._unlogged:
            total = sum(self._unlogged.values())
            kinds = ", ".join(f"{what} {n}" for what, n in self._unlogged.most_common())
            alarming = any(what.rpartition(" ")[2] in _ALARMING or " -> " not in what
                           for what in self._unlogged if what != "flapping stopped")
            log.log(logging.WARNING if alarming else logging.INFO,
                    "%d more events in %.1fs not logged one by one (GET /events has each): %s",
                    total, self._clock() - self._log_second, kinds)
            self._unlogged.clear()
        self._log_second, self._logged_this_second = self._clock(), 0

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


_NOTICE = object()  # marks a queued log line among the events


class EventPump:
    """Takes the registry's events off the intake path: `put` (the registry's event sink)
    only queues them, and a thread of its own, hb-events, records them (ids, log lines,
    the store, hooks) in order. A receiver thread that had to do that work itself gave up
    intake for it; one that logged each event also gave up the GIL at every write."""

    def __init__(self, record: Callable[..., Event], events: EventLog):
        self._record, self._events = record, events
        self._items: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._draining = threading.Lock()
        self.component: Optional[Component] = None

    @property
    def backlog(self) -> int:
        return len(self._items)

    def put(self, agent_id: str, from_state, to_state, reason: str, kind: str = "state") -> None:
        self._items.append((agent_id, from_state, to_state, reason, kind))
        self._wake.set()

    def notice(self, label: str, level: int, message: str, *args) -> None:
        """A log line for the same thread to write (see EventLog.notice), in event order."""
        self._items.append((_NOTICE, label, level, message, args))
        self._wake.set()

    def start(self) -> None:
        self.component = guard("hb-events", self._loop, stuck_after=30.0)

    def stop(self, timeout: float) -> None:
        """Record everything queued (here if the thread is gone) and stop."""
        self._stop.set()
        self._wake.set()
        halt(self.component, timeout)
        self._drain()
        self._events.flush_unlogged()

    def _loop(self) -> None:
        while True:
            alive()
            self._wake.wait(1.0)
            self._wake.clear()
            self._drain()
            self._events.flush_unlogged()
            if self._stop.is_set():
                return

    def _drain(self) -> None:
        with self._draining:  # one drainer: the order of events is kept
            while self._items:
                agent_id, old, new, reason, kind = self._items.popleft()
                if agent_id is _NOTICE:
                    self._events.notice(old, new, reason, *kind)
                else:
                    self._record(agent_id, old, new, reason, kind=kind)
