"""Persistent state: agent records, events, waiting hook runs and webhook events in
SQLite (WAL), written by one thread."""

import json
import logging
import math
import os
import sqlite3
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from hbdaemon.events import Event
from hbdaemon.threads import Component, alive, guard, halt

log = logging.getLogger(__name__)

DB_NAME = "hbdaemon.db"
SCHEMA_VERSION = 1
STUCK_AFTER = 60.0  # seconds past store_interval without a pass: the writer is stuck
FAILING_AFTER = 10.0  # seconds of failed writes before /healthz names the store
LOAD_BATCH = 1000  # stored records read and handed over at a time at start
DIRTY_BATCH = 1000  # Registry.take_dirty's default limit: a full batch means more may wait
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agents (agent_id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, agent_id TEXT NOT NULL,
    from_state TEXT NOT NULL, to_state TEXT NOT NULL, reason TEXT NOT NULL, kind TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hook_runs (
    agent_id TEXT NOT NULL, hook TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (agent_id, hook));
CREATE TABLE IF NOT EXISTS webhook_queue (
    hook TEXT NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL, PRIMARY KEY (hook, seq));
"""
HookRun = Tuple[str, str, Optional[dict]]  # agent, hook key, what waits (None: nothing)
Queued = Tuple[str, int, Optional[bytes]]  # webhook key, seq, the body (None: delivered)


class StoreError(Exception):
    """The state directory cannot be used at all (not a recoverable bad file)."""


class Store:
    """Owns the database file. open() reads it back; then a writer thread persists changes.

    add_event is thread-safe and never blocks on disk.
    """

    def __init__(self, state_dir: str, max_events: int, interval: float,
                 take_dirty: Callable[..., List[Tuple[str, Optional[dict]]]] =
                 lambda everything=False: [],
                 take_hook_runs: Callable[[], List[HookRun]] = lambda: [],
                 take_webhooks: Callable[[], List[Queued]] = lambda: []):
        self.path = os.path.join(state_dir, DB_NAME)
        self._state_dir = state_dir
        self._max_events = max_events
        self._interval = interval
        self._take_dirty = take_dirty
        self._take_hook_runs = take_hook_runs
        self._take_webhooks = take_webhooks
        self._unsaved_queue: Dict[Tuple[str, int], Optional[bytes]] = {}  # writer thread only
        self.webhook_queue: List[Tuple[str, int, bytes]] = []  # read by open()
        self._pending: List[Event] = []
        self._unsaved: Dict[str, Optional[dict]] = {}  # writer thread only
        self._unsaved_runs: Dict[Tuple[str, str], Optional[dict]] = {}  # writer thread only
        self.hook_runs: List[HookRun] = []  # read by open(): what waited before the restart
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.component: Optional[Component] = None
        self.writes = 0
        self.errors = 0
        self.dropped_events = 0  # events not kept while writes failed (max_events kept)
        self.failing_since: Optional[float] = None  # monotonic time writes began to fail
        self.last_error = ""
        self.reserved_id = 0     # event ids given out may reach this (read by open())
        self.alive_at = 0.0      # the wall time of the last pass before this start (open())
        self.on_written: Callable[[List[int]], None] = lambda ids: None
        self.on_reserved: Callable[[int], None] = lambda upto: None
        self._reserve_wanted = 0  # an id mark to write with the next batch (reserve_ahead)
        self._reserve_db: Optional[sqlite3.Connection] = None
        self._reserve_lock = threading.Lock()

    def open(self, load_agents: Optional[Callable[[List[dict]], None]] = None
             ) -> Tuple[List[dict], List[Event]]:
        """Prepare the database and return what it holds (agents, events oldest first).
        With `load_agents`, the agents are handed to it LOAD_BATCH at a time instead (and
        the list returned is empty): 100,000 stored records never exist as dicts at once.

        A corrupt or unreadable file is moved aside and a fresh one started.
        Raises StoreError if the state directory itself is unusable.
        """
        try:
            os.makedirs(self._state_dir, mode=0o750, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create state_dir {self._state_dir}: {exc}") from None
        if not os.access(self._state_dir, os.W_OK | os.X_OK):
            raise StoreError(f"state_dir {self._state_dir} is not writable by this user")
        self._check_access()
        try:
            return self._read(load_agents)
        except sqlite3.OperationalError as exc:  # cannot open or lock it: not a bad file
            raise StoreError(f"cannot use the state store {self.path}: {exc}") from None
        except sqlite3.Error as exc:
            try:
                aside = self._move_aside()
            except OSError as move_exc:
                raise StoreError(f"state store {self.path} is unreadable ({exc}) and cannot be "
                                 f"moved aside: {move_exc}") from None
            log.error("state store %s is unreadable (%s): moved it to %s and starting with no "
                      "remembered agents", self.path, exc, aside)
        try:
            return self._read(load_agents)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot create a state store at {self.path}: {exc}") from None

    def _check_access(self) -> None:
        """A store we may not read or write (say, left root-owned 0600 by a run as root) is
        an error to fix, not a corrupt file to move aside and forget."""
        for suffix in ("", "-wal", "-shm"):
            path = self.path + suffix
            if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
                st = os.stat(path)
                raise StoreError(f"{path} is not readable and writable by this user (uid "
                                 f"{os.geteuid()}; the file is uid {st.st_uid}, mode "
                                 f"{st.st_mode & 0o777:04o}): give it to the daemon's user")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
        return db

    def _read(self, load_agents) -> Tuple[List[dict], List[Event]]:
        db = self._connect()
        try:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {row[0]}, expected {SCHEMA_VERSION}")
            agents: List[dict] = []
            rows = db.execute("SELECT agent_id, data FROM agents")
            while True:
                fetched, batch = rows.fetchmany(LOAD_BATCH), []
                for agent_id, data in fetched:
                    try:
                        batch.append(json.loads(data))
                    except (ValueError, RecursionError, TypeError):  # a hostile row: skipped
                        log.warning("state store: skipping unreadable record of agent %s",
                                    agent_id)
                if not fetched:
                    break
                if load_agents is None:
                    agents.extend(batch)
                else:
                    load_agents(batch)
            row = db.execute("SELECT value FROM meta WHERE key='event_id_reserved'").fetchone()
            self.reserved_id = _reserved_mark(row[0] if row else None)
            row = db.execute("SELECT value FROM meta WHERE key='alive_at'").fetchone()
            self.alive_at = _alive_mark(row[0] if row else None)
            rows = db.execute("SELECT id, time, agent_id, from_state, to_state, reason, kind "
                              "FROM events ORDER BY id DESC LIMIT ?", (self._max_events,))
            events = [Event.from_row(r) for r in rows][::-1]
            self.hook_runs = []
            for agent_id, hook, data in db.execute("SELECT agent_id, hook, data FROM hook_runs"):
                try:
                    self.hook_runs.append((agent_id, hook, json.loads(data)))
                except (ValueError, RecursionError):
                    log.warning("state store: skipping an unreadable hook run of %s", agent_id)
            self.webhook_queue = [
                (hook, seq, bytes(body)) for hook, seq, body in db.execute(
                    "SELECT hook, seq, body FROM webhook_queue ORDER BY hook, seq")
                if type(hook) is str and type(seq) is int and isinstance(body, (bytes, str))]
            return agents, events
        finally:
            db.close()

    def _move_aside(self) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = f"{self.path}.corrupt-{stamp}"
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.replace(self.path + suffix, aside + suffix)
        return aside

    # -- writer ---------------------------------------------------------------------------

    def problem(self) -> Optional[str]:
        """Writes failing for longer than FAILING_AFTER: a problem /healthz names (what is
        shown meanwhile would be lost by a crash, and events are being dropped)."""
        since = self.failing_since
        if since is None or time.monotonic() - since < FAILING_AFTER:
            return None
        return (f"hb-store cannot write {self.path} for {time.monotonic() - since:.0f}s: "
                f"{self.last_error}")

    def reserve_ids(self, upto: int) -> None:
        """Record at once (from any thread) that event ids up to `upto` may be given out,
        so that a restart never gives one of them to another event. Raises sqlite3.Error."""
        with self._reserve_lock:
            if self._reserve_db is None:
                # a short busy timeout: the event log waits for this write (rare: the next
                # block is normally written ahead with the batches)
                self._reserve_db = sqlite3.connect(self.path, timeout=1, isolation_level=None,
                                                   check_same_thread=False)
            with self._reserve_db:
                self._reserve_db.execute("BEGIN")
                _raise_mark(self._reserve_db, upto)
            self.reserved_id = max(self.reserved_id, upto)

    def reserve_ahead(self, upto: int) -> None:
        """Record with the next batch (thread-safe, never blocks) that event ids up to
        `upto` may be given out; on_reserved(upto) follows once it is written."""
        with self._lock:
            self._reserve_wanted = max(self._reserve_wanted, upto)
        self._wake.set()

    def add_event(self, ev: Event) -> None:
        """Event listener: persist soon (the writer wakes at once)."""
        with self._lock:
            self._pending.append(ev)
        self._wake.set()

    def start(self) -> None:
        self.component = guard("hb-store", self._loop, stuck_after=self._interval + STUCK_AFTER)

    def stop(self, timeout: float) -> None:
        """Write everything still pending and stop. Blocks up to `timeout`."""
        self._stop.set()
        self._wake.set()
        halt(self.component, timeout)
        with self._reserve_lock:
            if self._reserve_db is not None:
                self._reserve_db.close()
                self._reserve_db = None

    def _loop(self) -> None:
        db = self._connect()
        try:
            while True:
                alive()
                self._wake.wait(self._interval)
                stopping = self._stop.is_set()
                # an event wakes us at once; let a burst of them gather for a moment
                if not stopping and self._wake.is_set():
                    time.sleep(0.02)
                self._wake.clear()
                self.flush(db)
                self._mark_alive(db)
                if stopping:
                    break
        finally:
            db.close()

    def _mark_alive(self, db: sqlite3.Connection) -> None:
        """Note the time of this pass: after a crash the UDP replay guard refuses anything
        stamped before it (what only routine heartbeats changed is written a minute apart,
        so an agent's last timestamp on disk may be older than the last one taken)."""
        try:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('alive_at', ?)", (repr(time.time()),))
        except sqlite3.Error as exc:  # the writes' own errors are counted by flush
            log.debug("state store: cannot note the time of this pass: %s", exc)

    def flush(self, db: sqlite3.Connection) -> None:
        """Write pending events and changed agents, a transaction per batch of agents."""
        while True:
            with self._lock:
                events, self._pending = self._pending, []
                mark, self._reserve_wanted = self._reserve_wanted, 0
            batch = self._take_dirty(everything=self._stop.is_set())
            self._unsaved.update(batch)
            self._unsaved_runs.update(((a, h), d) for a, h, d in self._take_hook_runs())
            self._unsaved_queue.update(((h, n), b) for h, n, b in self._take_webhooks())
            if not events and not self._unsaved and not self._unsaved_runs and not mark \
                    and not self._unsaved_queue:
                return
            if not self._write(db, events, mark):
                with self._lock:  # asked again with the next batch
                    self._reserve_wanted = max(self._reserve_wanted, mark)
                return
            if len(batch) < DIRTY_BATCH:
                return

    def _write(self, db: sqlite3.Connection, events: List[Event], mark: int = 0) -> bool:
        agents = list(self._unsaved.items())
        runs = [(a, h, d) for (a, h), d in self._unsaved_runs.items()]
        queued = [(h, n, b) for (h, n), b in self._unsaved_queue.items()]
        try:
            with db:
                db.execute("BEGIN")
                _insert(db, "events", [ev.to_row() for ev in events])
                _insert(db, "agents", [(a, json.dumps(d)) for a, d in agents if d is not None])
                _delete(db, "agents", "agent_id", [a for a, d in agents if d is None])
                _insert(db, "hook_runs", [(a, h, json.dumps(d)) for a, h, d in runs
                                          if d is not None])
                db.executemany("DELETE FROM hook_runs WHERE agent_id = ? AND hook = ?",
                               [(a, h) for a, h, d in runs if d is None])  # few: one each
                _insert(db, "webhook_queue", [(h, n, b) for h, n, b in queued if b is not None])
                db.executemany("DELETE FROM webhook_queue WHERE hook = ? AND seq = ?",
                               [(h, n) for h, n, b in queued if b is None])
                if events:  # keep the newest max_events (ids have gaps: see EventLog)
                    db.execute("DELETE FROM events WHERE id <= (SELECT id FROM events "
                               "ORDER BY id DESC LIMIT 1 OFFSET ?)", (self._max_events,))
                if mark:
                    _raise_mark(db, mark)
            if mark:
                self.reserved_id = max(self.reserved_id, mark)
                self.on_reserved(mark)
            self._unsaved.clear()
            self._unsaved_runs.clear()
            self._unsaved_queue.clear()
            self.writes += 1
            self.failing_since = None
            if events:
                self.on_written([ev.id for ev in events])  # may be shown: a crash keeps them
            return True
        except (sqlite3.Error, OverflowError, ValueError) as exc:  # Overflow: an id past 2^63
            self.errors += 1
            if self.failing_since is None:
                self.failing_since = time.monotonic()
            self.last_error = str(exc)
            log.error("state store: write failed (%s); will retry", exc)
            with self._lock:
                self._pending[:0] = events
                # kept for the retry, but not without bound: the newest max_events
                excess = len(self._pending) - self._max_events
                dropped = self._pending[:max(0, excess)]
                if excess > 0:
                    del self._pending[:excess]
                    self.dropped_events += excess
            if dropped:  # given up on: they must not keep every later event from showing
                self.on_written([ev.id for ev in dropped])
            if excess > 0:
                log.error("state store: %d events dropped while writes fail (%d so far)",
                          excess, self.dropped_events)
            return False


# Rows go in a few statements of many rows each, not one statement a row: each statement
# gives up the GIL and must win it back, which among a storm's busy receiver threads took
# milliseconds a row (10,000 agents' records took 10 s, and events queued behind the store).
MAX_VARIABLES = 999  # SQLite's limit on ? in one statement before 3.32


def _insert(db: sqlite3.Connection, table: str, rows: List[tuple]) -> None:
    """INSERT OR REPLACE `rows` (tuples of one width) into `table`."""
    if not rows:
        return
    width = len(rows[0])
    per = MAX_VARIABLES // width
    one = "(" + ",".join("?" * width) + ")"
    for start in range(0, len(rows), per):
        chunk = rows[start:start + per]
        db.execute(f"INSERT OR REPLACE INTO {table} VALUES " + ",".join([one] * len(chunk)),
                   [value for row in chunk for value in row])


def _delete(db: sqlite3.Connection, table: str, column: str, keys: List[str]) -> None:
    """DELETE the rows of `table` whose `column` is one of `keys`."""
    for start in range(0, len(keys), MAX_VARIABLES):
        chunk = keys[start:start + MAX_VARIABLES]
        db.execute(f"DELETE FROM {table} WHERE {column} IN ({','.join('?' * len(chunk))})",
                   chunk)


def _raise_mark(db: sqlite3.Connection, upto: int) -> None:
    """Raise the stored event id reservation to `upto`, never lower it (two connections
    write it: the writer's batches and reserve_ids)."""
    db.execute("INSERT OR IGNORE INTO meta VALUES ('event_id_reserved', '0')")
    db.execute("UPDATE meta SET value = ? WHERE key = 'event_id_reserved' AND "
               "CAST(value AS INTEGER) < ?", (str(upto), upto))


def _alive_mark(value) -> float:
    try:
        mark = float(value)
    except (TypeError, ValueError):
        return 0.0
    return mark if math.isfinite(mark) and mark > 0 else 0.0


def _reserved_mark(value) -> int:
    """The stored event id reservation; 0 (ids continue after the stored events) for a
    value that is missing or not a plausible id (SQLite ids stop at 2^63 - 1)."""
    text = str(value) if value is not None else ""
    if text.isascii() and text.isdigit() and len(text) <= 15:
        return int(text)
    if value is not None:
        log.warning("state store: ignoring event_id_reserved=%r (not an id)", text[:40])
    return 0
