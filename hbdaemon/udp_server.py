"""Signed heartbeats over UDP: one datagram each, `HB1 <KEYID> <hex HMAC-SHA256> <PAYLOAD>`.

For fleets: a datagram costs the daemon a fraction of a new TCP connection. What is lost
is lost (a missed beat; the timeout is several intervals), so nothing is answered. A
datagram is dropped, and counted by reason, when it is too large, not in the format, from
an unknown key, with a wrong MAC, for an id its key does not cover, without a timestamp
or one further than udp.max_skew from this daemon's clock, or a replay of one already
taken (the same agent_id and timestamp). Past those checks it is a heartbeat like any
other, applied by the same parser and registry as the other transports.
"""

import hashlib
import hmac
import logging
import re
import socket
import socketserver
import time
from typing import Callable, Dict, Optional

from hbdaemon.keyfile import MAGIC, Key
from hbdaemon.protocol import (Heartbeat, ProtocolError, parse_heartbeat, parse_rfc3339,
                               warning_reason)
from hbdaemon.threads import alive

log = logging.getLogger(__name__)

TRANSPORT = "udp"
MAX_DATAGRAM = 1400
_MAC = re.compile(rb"[0-9a-f]{64}")
MAX_SEEN = 1_000_000  # agents whose newest timestamp is kept
RECEIVE_BUFFER = 4 * 2**20  # a burst of ~10,000 datagrams waits here, not lost (capped by
                            # net.core.rmem_max)


class ReplayGuard:
    """Each agent's newest timestamp taken, as a time: a datagram must be newer, so a
    replay, one overtaken by a later beat, or one held back by someone on the path is
    dropped. Only heartbeats the registry took are remembered (so one per agent, bounded
    by agent.max_agents), and it is seeded from the records at start, so a datagram
    captured before a restart cannot be replayed after it. Not thread-safe (one receiver
    thread uses it)."""

    def __init__(self):
        self._newest: Dict[str, float] = {}

    def newer(self, agent_id: str, epoch: float) -> bool:
        return epoch > self._newest.get(agent_id, float("-inf"))

    def taken(self, agent_id: str, epoch: float) -> None:
        if len(self._newest) >= MAX_SEEN and agent_id not in self._newest:
            self._forget_oldest()
        self._newest[agent_id] = max(epoch, self._newest.get(agent_id, epoch))

    def _forget_oldest(self) -> None:
        """More agents than MAX_SEEN (a table of millions): the tenth heard longest ago
        goes; a datagram of theirs is older still, and the skew check drops it."""
        keep = sorted(self._newest.items(), key=lambda item: item[1])[len(self._newest) // 10:]
        self._newest = dict(keep)


class HeartbeatUDPServer(socketserver.UDPServer):
    """Reads datagrams on one thread (serve_forever), checks them, and hands each
    heartbeat to `apply(hb, address)` (which returns a refusal reason or None)."""

    allow_reuse_address = True
    max_packet_size = MAX_DATAGRAM + 1  # one byte more: a longer datagram is seen as such

    def __init__(self, host: str, port: int, keys: Dict[bytes, Key],
                 apply: Callable[[Heartbeat, str], Optional[str]], stats, max_skew: float,
                 wallclock: Callable[[], float] = time.time):
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), None)
        self.keys, self._apply, self.stats, self.max_skew = keys, apply, stats, max_skew
        self._wall = wallclock
        self.replays = ReplayGuard()
        self.component = None

    # socketserver's hooks: one datagram at a time on this thread, no handler objects
    def server_bind(self) -> None:
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError as exc:
            log.warning("udp: cannot enlarge the receive buffer: %s", exc)
        super().server_bind()

    def process_request(self, request, client_address) -> None:
        data = request[0]
        try:
            self.take(data, client_address[0])
        except Exception:  # one datagram must not stop the receiver
            log.exception("udp: a datagram from %s could not be handled", client_address[0])
            self.stats.note_rejected(TRANSPORT, "internal_error")

    def handle_error(self, request, client_address) -> None:
        log.exception("udp: error handling a datagram from %s", client_address)

    def service_actions(self) -> None:
        alive()  # serve_forever turns at least every 0.5 s: the listener's pulse

    def take(self, data: bytes, host: str) -> None:
        started = time.perf_counter()
        stats = self.stats
        stats.note_received(TRANSPORT)
        reason, hb, epoch = self._check(data)
        if reason is not None:
            stats.note_rejected(TRANSPORT, reason,
                                f"udp: dropped a datagram from {host}: {reason}")
            return
        for warning in hb.warnings:
            stats.note_warning(TRANSPORT, warning_reason(warning))
        refusal = self._apply(hb, host)
        if refusal is not None:
            stats.note_rejected(TRANSPORT, refusal,
                                f"udp: refused {hb.agent_id} from {host}: {refusal}")
            return
        self.replays.taken(hb.agent_id, epoch)
        stats.note_processed(TRANSPORT, time.perf_counter() - started)

    def _check(self, data: bytes):
        """(None, heartbeat, its timestamp as epoch seconds), or (the reason to drop it,
        None, None)."""
        if len(data) > MAX_DATAGRAM:
            return "too_large", None, None
        parts = data.split(b" ", 3)
        if len(parts) != 4 or parts[0] != MAGIC:
            return "bad_format", None, None
        key = self.keys.get(parts[1])
        if key is None:
            return "unknown_key", None, None
        expected = hmac.new(key.secret, parts[3], hashlib.sha256).hexdigest().encode()
        if not _MAC.fullmatch(parts[2]) or not hmac.compare_digest(expected, parts[2]):
            return "bad_mac", None, None
        try:
            hb = parse_heartbeat(parts[3], require_agent_id=True)
        except ProtocolError as exc:
            return exc.reason, None, None
        if not key.covers(hb.agent_id):
            return "not_permitted", None, None
        epoch = parse_rfc3339(hb.timestamp) if hb.timestamp else None
        if epoch is None:
            return "no_timestamp", None, None
        now = self._wall()
        if abs(now - epoch) > self.max_skew:
            return "stale", None, None
        if not self.replays.newer(hb.agent_id, epoch):
            return "replay", None, None
        return None, hb, epoch
