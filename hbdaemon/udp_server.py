"""Signed heartbeats over UDP: one datagram each, `HB1 <KEYID> <hex HMAC-SHA256> <PAYLOAD>`.

For fleets: a datagram costs the daemon a fraction of a new TCP connection. What is lost
is lost (a missed beat; the timeout is several intervals), so nothing is answered. A
datagram is dropped, and counted by reason, when it is too large, not in the format, from
an unknown key, with a wrong MAC, for an id its key does not cover, without a timestamp
or one further than udp.max_skew from this daemon's clock, or a replay of one already
taken (the same agent_id and timestamp). Past those checks it is a heartbeat like any
other, applied by the same parser and registry as the other transports.
"""

import fnmatch
import hashlib
import hmac
import logging
import os
import re
import socket
import socketserver
import stat
import time
from typing import Callable, Dict, Optional, Tuple

from hbdaemon.protocol import (Heartbeat, ProtocolError, parse_heartbeat, parse_rfc3339,
                               warning_reason)
from hbdaemon.threads import alive

log = logging.getLogger(__name__)

TRANSPORT = "udp"
MAX_DATAGRAM = 1400
MAGIC = b"HB1"
_KEY_ID = re.compile(r"[A-Za-z0-9._:@-]{1,64}")
_MAC = re.compile(rb"[0-9a-f]{64}")
MAX_SEEN = 1_000_000  # agents whose newest timestamp is kept (pruned past the skew window)


class KeysFileError(ValueError):
    """The keys file is unusable; the message names the file and line."""


class Key:
    __slots__ = ("id", "secret", "globs")

    def __init__(self, key_id: str, secret: bytes, globs: Tuple[str, ...]):
        self.id, self.secret, self.globs = key_id, secret, globs

    def covers(self, agent_id: str) -> bool:
        return not self.globs or any(fnmatch.fnmatchcase(agent_id, g) for g in self.globs)


def read_keys(path: str) -> Dict[bytes, Key]:
    """The keys file: lines `KEYID SECRET [GLOB ...]`; # starts a comment. Raises
    KeysFileError naming the line."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise KeysFileError(f"{path}: not a regular file")
            data = f.read(4 * 2**20 + 1)
    except OSError as exc:
        raise KeysFileError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > 4 * 2**20:
        raise KeysFileError(f"{path}: larger than 4 MiB")
    if info.st_mode & 0o007:
        log.warning("udp: %s is readable by every user: anyone on this host can sign "
                    "heartbeats (chmod o-rwx)", path)
    keys: Dict[bytes, Key] = {}
    for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) < 2 or not _KEY_ID.fullmatch(words[0]):
            raise KeysFileError(f"{path}, line {number}: expected KEYID SECRET [GLOB ...], the "
                            "id 1-64 characters of A-Z a-z 0-9 . _ : @ -")
        if len(words[1]) < 16:
            raise KeysFileError(f"{path}, line {number}: the secret of {words[0]} is shorter than "
                            "16 characters")
        if words[0].encode() in keys:
            raise KeysFileError(f"{path}, line {number}: key {words[0]} is given twice")
        keys[words[0].encode()] = Key(words[0], words[1].encode(), tuple(words[2:]))
    if not keys:
        raise KeysFileError(f"{path}: no keys")
    return keys


def sign(key_id: str, secret: bytes, payload: bytes) -> bytes:
    """One datagram: what agentd and the upstream reporter send."""
    mac = hmac.new(secret, payload, hashlib.sha256).hexdigest().encode()
    return b"%s %s %s %s" % (MAGIC, key_id.encode(), mac, payload)


class ReplayGuard:
    """Each agent's newest timestamp taken: a datagram must be newer, so a replay (or one
    overtaken by a later beat) is dropped. Seeded from the records' last agent times at
    start, so a datagram captured before a restart cannot be replayed after it. An entry
    older than the skew window is forgotten (anything not newer would be stale anyway).
    Not thread-safe (one receiver thread uses it)."""

    def __init__(self, window: float):
        self.window = window
        self._newest: Dict[str, float] = {}
        self._next_prune = 0.0

    def seed(self, agent_id: str, epoch: float) -> None:
        self._newest[agent_id] = max(epoch, self._newest.get(agent_id, epoch))

    def first(self, agent_id: str, epoch: float, now: float) -> bool:
        """True if `epoch` is newer than every timestamp taken from this agent (and
        remembers it)."""
        if now >= self._next_prune or len(self._newest) >= MAX_SEEN:
            cutoff = now - self.window
            self._newest = {a: t for a, t in self._newest.items() if t >= cutoff}
            self._next_prune = now + self.window
        if epoch <= self._newest.get(agent_id, float("-inf")):
            return False
        self._newest[agent_id] = epoch
        return True


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
        self.replays = ReplayGuard(max_skew)
        self.component = None

    # socketserver's hooks: one datagram at a time on this thread, no handler objects
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
        reason, hb = self._check(data)
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
        stats.note_processed(TRANSPORT, time.perf_counter() - started)

    def _check(self, data: bytes):
        """(None, heartbeat) or (the reason to drop it, None)."""
        if len(data) > MAX_DATAGRAM:
            return "too_large", None
        parts = data.split(b" ", 3)
        if len(parts) != 4 or parts[0] != MAGIC:
            return "bad_format", None
        key = self.keys.get(parts[1])
        if key is None:
            return "unknown_key", None
        expected = hmac.new(key.secret, parts[3], hashlib.sha256).hexdigest().encode()
        if not _MAC.fullmatch(parts[2]) or not hmac.compare_digest(expected, parts[2]):
            return "bad_mac", None
        try:
            hb = parse_heartbeat(parts[3], require_agent_id=True)
        except ProtocolError as exc:
            return exc.reason, None
        if not key.covers(hb.agent_id):
            return "not_permitted", None
        epoch = parse_rfc3339(hb.timestamp) if hb.timestamp else None
        if epoch is None:
            return "no_timestamp", None
        now = self._wall()
        if abs(now - epoch) > self.max_skew:
            return "stale", None
        if not self.replays.first(hb.agent_id, epoch, now):
            return "replay", None
        return None, hb
