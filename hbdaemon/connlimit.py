"""A socketserver mix-in that caps concurrent connections and can close them all on stop."""

import collections
import contextlib
import errno
import itertools
import logging
import queue
import socket
import ssl
import sys
import threading
import time
from typing import Dict, Optional

from hbdaemon.threads import alive

log = logging.getLogger(__name__)

_EVICTED = object()  # a connection shut down to make room, until its thread ends


class ConnectionLimitMixIn:
    """Put before the socketserver class: tracks live connections, refuses past the cap.

    With `evict_waiting`, a new connection at the cap takes the place of the one that has
    waited longest for its next request (idle, or trickling an unfinished one), so clients
    that hold connections open without finishing requests cannot lock everyone else out.
    """

    max_connections = 1024
    refuse_log_interval = 10.0  # seconds between "refused" log lines under a flood
    evict_waiting = False
    def service_actions(self):
        """Called by serve_forever at every turn of its loop: the listener is not stuck."""
        super().service_actions()
        alive()

    def init_connection_limit(self, max_connections: int) -> None:
        self.max_connections = max_connections
        # connection -> since when it waits for (the rest of) a request; None: being served
        self._conns: Dict[socket.socket, object] = {}
        self._conns_lock = threading.Lock()
        self._refused = 0
        self._refused_logged = 0.0
        self.refused_total = 0
        self.evicted_total = 0
        self.accept_failures = 0  # accept() failed for want of a file descriptor
        self._files_logged = float("-inf")
        # a connection wrapped since its accept (TLS): the socket that now holds its
        # descriptor, which eviction and stop must shut down (the accepted one is detached)
        self._wrapped: dict = {}

    @property
    def active_connections(self) -> int:
        return len(self._conns)

    def process_request(self, request, client_address):
        victim = None
        with self._conns_lock:
            full = len(self._conns) >= self.max_connections
            if full and self.evict_waiting:
                victim = self._longest_waiting()
                if victim is not None:
                    self._conns[victim] = _EVICTED  # on its way out: not chosen twice
                    full = False
            if not full:
                self._conns[request] = time.monotonic()
        if victim is not None:
            self.evicted_total += 1
            _hang_up(self._wrapped.get(victim, victim))
        if full:
            self._refuse(request)
            return
        super().process_request(request, client_address)

    def _longest_waiting(self) -> Optional[socket.socket]:
        waiting = [(since, id(conn), conn) for conn, since in self._conns.items()
                   if type(since) is float]
        return min(waiting)[2] if waiting else None

    def use_socket(self, request, wrapped: socket.socket) -> None:
        """`request`'s descriptor now belongs to `wrapped` (a TLS socket made from it)."""
        with self._conns_lock:
            if request in self._conns:
                self._wrapped[request] = wrapped

    def note_waiting(self, request) -> None:
        """The connection now waits for its next request (a candidate for eviction)."""
        self._mark(request, time.monotonic())

    def note_busy(self, request) -> None:
        """The connection's request is in: it is being served and is not evicted."""
        self._mark(request, None)

    def _mark(self, request, since: Optional[float]) -> None:
        with self._conns_lock:
            if request in self._conns and self._conns[request] is not _EVICTED:
                self._conns[request] = since

    def shutdown_request(self, request):
        with self._conns_lock:
            self._conns.pop(request, None)
            wrapped = self._wrapped.pop(request, None)
        if wrapped is not None:
            _hang_up(wrapped)
            wrapped.close()
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout, ssl.SSLError)):
            log.debug("%s: %s: %s", type(self).__name__, client_address or "a peer", exc)
            return  # the peer went away: routine, not a bug
        log.exception("%s: error while serving %s", type(self).__name__, client_address or "a peer")

    def refuse_connection(self, request) -> None:
        """Say goodbye to a connection over the cap (subclasses may answer something first)."""

    def get_request(self):
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):  # no descriptor for the connection
                self._out_of_files(exc)
            raise  # serve_forever drops this attempt and goes on

    def _out_of_files(self, exc: OSError) -> None:
        """The connection waits in the backlog until a descriptor frees: say so (at most
        every refuse_log_interval) and pause, instead of retrying accept() in a busy loop."""
        self.accept_failures += 1
        now = time.monotonic()
        if now - self._files_logged >= self.refuse_log_interval:
            log.error("%s: cannot accept connections: %s (raise the open file limit, "
                      "LimitNOFILE= or ulimit -n)", type(self).__name__, exc.strerror)
            self._files_logged = now
        time.sleep(0.1)

    def _refuse(self, request) -> None:
        self.refused_total += 1
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged >= self.refuse_log_interval:
            log.warning("%s: connection limit %d reached; refused %d connection(s)",
                        type(self).__name__, self.max_connections, self._refused)
            self._refused, self._refused_logged = 0, now
        try:
            request.settimeout(1.0)
            self.refuse_connection(request)
        except OSError:
            pass
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every live connection so its handler thread sees EOF and ends."""
        with self._conns_lock:
            conns = [self._wrapped.get(request, request) for request in self._conns]
        for request in conns:
            _hang_up(request)


def _hang_up(request: socket.socket) -> None:
    """Shut a connection down so its handler thread sees EOF and ends. The plain socket's
    shutdown, also for a TLS one: its own would undo the TLS state under the reader."""
    try:
        socket.socket.shutdown(request, socket.SHUT_RDWR)
    except OSError:
        pass


class ReusedThreadsMixIn:
    """Put before socketserver.ThreadingMixIn: a connection is served by a thread that
    served an earlier one and waits for the next, instead of a thread made and ended for
    each (a new connection per heartbeat paid ~100 µs for that). At most one thread per
    live connection, so the connection cap bounds them; one idle for `thread_idle`
    seconds ends."""

    thread_idle = 60.0

    def init_reused_threads(self) -> None:
        self._handoff: queue.SimpleQueue = queue.SimpleQueue()
        self._pool_lock = threading.Lock()
        self._idle = 0      # threads waiting for a connection, less the connections queued
        self.pool_threads = 0
        self._pool_names = itertools.count(1)

    def process_request(self, request, client_address):
        with self._pool_lock:
            reuse = self._idle > 0
            if reuse:
                self._idle -= 1
            else:
                self.pool_threads += 1
        self._handoff.put((request, client_address))
        if not reuse:
            threading.Thread(target=self._serve_connections, daemon=True,
                             name=f"hb-conn-{next(self._pool_names)}").start()

    def _serve_connections(self) -> None:
        while True:
            try:
                item = self._handoff.get(timeout=self.thread_idle)
            except queue.Empty:
                with self._pool_lock:
                    if self._idle > 0:  # nothing is on its way to this thread: end it
                        self._idle -= 1
                        self.pool_threads -= 1
                        return
                continue  # a connection was handed over meanwhile: take it
            if item is None:  # server_close
                with self._pool_lock:
                    self.pool_threads -= 1
                return
            try:
                self.process_request_thread(*item)  # handles and closes it; never raises
            except BaseException:  # noqa: B902 (a bug there must not strand the pool)
                log.exception("%s: a connection's thread failed", type(self).__name__)
            with self._pool_lock:
                self._idle += 1

    def server_close(self):
        super().server_close()
        with self._pool_lock:
            waiting, self._idle = self._idle, 0
        for _ in range(waiting):  # idle threads end now; busy ones when their peer is shut
            self._handoff.put(None)


NEW_ID_SLOTS = 2  # threads at a time doing intake that is not a known agent's heartbeat
NO_GATE = contextlib.nullcontext()


class FairGate:
    """At most `slots` threads inside at a time, the others let in in the order they came.

    A Semaphore lets a thread that just left barge back in ahead of those it woke; here a
    leaving thread hands its slot to the first waiter. Threads waiting here are parked, not
    competing for the GIL, so a thread with urgent work (a process died) gets it soon."""

    def __init__(self, slots: int):
        self._lock = threading.Lock()
        self._free = slots
        self._waiters: collections.deque = collections.deque()

    def __enter__(self):
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return self
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        turn.acquire()  # released by the thread that hands us its slot
        return self

    def __exit__(self, *exc):
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._free += 1
