"""A socketserver mix-in that caps concurrent connections and can close them all on stop."""

import logging
import socket
import sys
import threading
import time

log = logging.getLogger(__name__)


class ConnectionLimitMixIn:
    """Put before the socketserver class: tracks live connections, refuses past the cap."""

    max_connections = 1024
    refuse_log_interval = 10.0  # seconds between "refused" log lines under a flood

    def init_connection_limit(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self._conns: set = set()
        self._conns_lock = threading.Lock()
        self._refused = 0
        self._refused_logged = 0.0
        self.refused_total = 0

    @property
    def active_connections(self) -> int:
        return len(self._conns)

    def process_request(self, request, client_address):
        with self._conns_lock:
            full = len(self._conns) >= self.max_connections
            if not full:
                self._conns.add(request)
        if full:
            self._refuse(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
            log.debug("%s: %s: %s", type(self).__name__, client_address or "a peer", exc)
            return  # the peer went away: routine, not a bug
        log.exception("%s: error while serving %s", type(self).__name__, client_address or "a peer")

    def refuse_connection(self, request) -> None:
        """Say goodbye to a connection over the cap (subclasses may answer something first)."""

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
            conns = list(self._conns)
        for request in conns:
            try:
                request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
