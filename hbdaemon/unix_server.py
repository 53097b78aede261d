"""The Unix socket receiver: newline-delimited JSON heartbeats on persistent connections."""

import errno
import grp
import itertools
import logging
import os
import socket
import socketserver
import stat
import struct
import time
from typing import Iterable, List, Optional, Tuple

from hbdaemon import process
from hbdaemon.connlimit import NEW_ID_SLOTS, NO_GATE, ConnectionLimitMixIn, FairGate
from hbdaemon.protocol import (MAX_MESSAGE_BYTES, Heartbeat, ProtocolError, anonymous_id,
                               parse_heartbeat, warning_reason)
from hbdaemon.registry import (ID_CONFLICT, MAX_AGENTS, RATE_LIMITED, RELAYED, RESERVED_ID, Peer,
                               Registry)
from hbdaemon.stats import ReceiverStats

log = logging.getLogger(__name__)

TRANSPORT = "unix"
RECV_SIZE = 8192  # as io.BufferedReader reads: a read every ~50 lines lets other threads in
_CLOSE = object()  # _parse: the connection must be closed
_PEERCRED = struct.Struct("3i")
_REFUSALS = {ID_CONFLICT: "another live connection holds this id",
             MAX_AGENTS: "the agent table is full (agent.max_agents)",
             RATE_LIMITED: "this uid created too many new ids this minute "
                           "(agent.new_agents_per_minute)",
             RESERVED_ID: "this id is the daemon's own (manager.agent_id)",
             RELAYED: "this id is a downstream daemon's agent, relayed by it"}


class SocketInUseError(Exception):
    """Another live daemon answers on the socket path, or the path is not ours to take."""


def claim_socket_path(path: str) -> None:
    """Make `path` free for bind: remove a stale socket; refuse a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUseError(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except socket.timeout:
        raise SocketInUseError(f"{path}: a process is listening but not accepting; "
                               "is another hbdaemon running?") from None
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise SocketInUseError(f"{path}: cannot probe the existing socket: {exc}") from None
        log.info("removing stale socket %s", path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    else:
        raise SocketInUseError(f"another daemon is listening on {path}; not starting a second one")
    finally:
        probe.close()


def group_id(name: str) -> int:
    """The gid of group `name`, or ValueError in words an operator can act on."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f'no group named {name!r} on this host (set unix.socket_group: "" '
                         "to leave the socket's group as it is)") from None


class UnixHeartbeatServer(ConnectionLimitMixIn, socketserver.ThreadingUnixStreamServer):
    """Listens on the daemon socket; one thread per agent connection."""

    daemon_threads = True    # a stuck connection must never keep the process alive
    block_on_close = False   # close() shuts connections down itself, with a bound
    request_queue_size = 256  # after a daemon restart every agent reconnects at once

    def __init__(self, path: str, registry: Registry, stats: ReceiverStats, *, mode: int = 0o660,
                 group: str = "", verify_peer_pid: bool = True, idle_timeout: float = 270.0,
                 max_connections: int = 1024, gate: Optional[FairGate] = None):
        self.socket_path = path
        self.registry = registry
        self.stats = stats
        self.mode = mode
        self.gid = group_id(group) if group else -1
        self.verify_peer_pid = verify_peer_pid
        self.idle_timeout = idle_timeout or None
        self.closing = False
        self.gate = gate or FairGate(NEW_ID_SLOTS)
        self._conn_ids = itertools.count(1)
        self._identity = None
        self.init_connection_limit(max_connections)
        super().__init__(path, UnixHeartbeatHandler)

    def server_bind(self):
        claim_socket_path(self.socket_path)
        os.makedirs(os.path.dirname(self.socket_path), mode=0o755, exist_ok=True)
        old_umask = os.umask(0o177)  # nobody else may connect before the mode below is set
        try:
            super().server_bind()
        finally:
            os.umask(old_umask)
        try:
            os.chmod(self.socket_path, self.mode)
            # a daemon running as its own group already created it right; chown only if not
            if self.gid != -1 and os.stat(self.socket_path).st_gid != self.gid:
                os.chown(self.socket_path, -1, self.gid)
        except OSError as exc:
            os.unlink(self.socket_path)
            raise OSError(exc.errno, f"cannot set mode/group of the socket: {exc.strerror}") from None
        st = os.stat(self.socket_path)
        self._identity = (st.st_dev, st.st_ino)

    def next_conn_id(self) -> int:
        return next(self._conn_ids)

    def close(self) -> None:
        """Stop listening and end every connection (no agent is judged by it)."""
        self.closing = True
        self.server_close()
        self.close_connections()

    def remove_socket(self) -> None:
        """Unlink the socket path if it is still the socket we bound."""
        try:
            st = os.stat(self.socket_path)
            if (st.st_dev, st.st_ino) == self._identity:
                os.unlink(self.socket_path)
        except FileNotFoundError:
            pass


class UnixHeartbeatHandler(socketserver.StreamRequestHandler):
    """Reads heartbeats from one agent until EOF, error or idle timeout."""

    def setup(self):
        self.timeout = self.server.idle_timeout
        super().setup()

    def handle(self):
        server = self.server
        pid, uid, gid = _PEERCRED.unpack(self.connection.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        peer_process = process.PeerProcess(pid)
        peer = Peer(server.next_conn_id(), pid, uid, gid, peer_process.started)
        spoken = set()  # every id this connection spoke for: each is judged when it ends
        try:
            self._read_heartbeats(peer, spoken)
        finally:  # whatever ended the loop, no record may stay `connected` to a closed socket
            try:
                if not server.closing:
                    server.registry.connection_closed(peer.conn_id, spoken, peer_process.exited)
            finally:
                peer_process.close()

    def _read_heartbeats(self, peer: Peer, spoken: set) -> None:
        """The heartbeats of each read are parsed, then applied together: one hold of the
        registry's lock for all of them (eight connections that took it once per line fell
        into a convoy, each hand-off a wake-up and a GIL switch: 3x the CPU a heartbeat)."""
        server = self.server
        self._last_id = self._anonymous_id = None
        for lines in self._arrivals(peer):
            server.registry.yield_to_verdicts()
            beats: List[Tuple[Heartbeat, float]] = []
            close = False
            for line in lines:
                hb = self._parse(line, peer)
                if hb is _CLOSE:
                    close = True
                    break
                if hb is None:
                    continue
                if hb[0].agent_id is None:  # named and applied on its own, in its turn
                    self._apply(beats, peer, spoken)
                    beats = []
                    self._apply_anonymous(hb, peer, spoken)
                else:
                    beats.append(hb)
            self._apply(beats, peer, spoken)
            if close:
                return

    def _arrivals(self, peer: Peer) -> Iterable[List[bytes]]:
        """The complete lines of each read, blank ones left out, until EOF (a last line
        without its newline counts), an error, the idle timeout or a line too long."""
        server, buf = self.server, b""
        while True:
            try:
                chunk = self.connection.recv(RECV_SIZE)
            except socket.timeout:
                log.info("unix: closing idle connection of %s (pid %d): nothing for %.0fs",
                         self._last_id or "an unnamed peer", peer.pid, server.idle_timeout)
                server.stats.note_rejected(TRANSPORT, "idle_timeout")
                return
            except OSError as exc:
                log.debug("unix: connection of pid %d ended: %s", peer.pid, exc)
                return
            if not chunk:
                if buf.strip():
                    yield [buf]
                return
            buf += chunk
            if b"\n" in chunk:
                *lines, buf = buf.split(b"\n")
                lines = [line for line in lines if line and not line.isspace()]
                if lines:
                    yield lines
            if len(buf) > MAX_MESSAGE_BYTES:
                server.stats.note_received(TRANSPORT)
                self._drop(peer, "too_large", f"line longer than {MAX_MESSAGE_BYTES} bytes")
                return

    def _parse(self, line: bytes, peer: Peer):
        """(heartbeat, when its work began), None if it was refused (and counted), or _CLOSE
        when the connection must be closed (a line too long, or not JSON at all)."""
        server, pid = self.server, peer.pid
        started = time.perf_counter()
        server.stats.note_received(TRANSPORT)
        if len(line.rstrip(b"\r")) > MAX_MESSAGE_BYTES:
            self._drop(peer, "too_large", f"line longer than {MAX_MESSAGE_BYTES} bytes")
            return _CLOSE
        try:
            hb = parse_heartbeat(line.rstrip(b"\r"), require_agent_id=False)
        except ProtocolError as exc:
            if exc.field is None:  # not JSON at all: the stream cannot be trusted
                self._drop(peer, exc.reason, str(exc))
                return _CLOSE
            self._note(exc.reason, "unix: rejected heartbeat from pid %d: %s", pid, exc)
            return None
        sender = hb.pid if hb.agent_pid is None else hb.agent_pid  # a watcher speaks for pid
        if server.verify_peer_pid and sender != pid:
            self._note("pid_mismatch", "unix: rejected heartbeat of %s: it says %s %d but "
                       "the peer is pid %d (set unix.verify_peer_pid: false for agents in "
                       "other pid namespaces)", hb.agent_id or "an unnamed agent",
                       "pid" if hb.agent_pid is None else "agent_pid", sender, pid)
            return None
        return hb, started

    def _apply(self, beats: List[Tuple[Heartbeat, float]], peer: Peer, spoken: set) -> None:
        """Apply heartbeats that named their agent, in one go; through the gate when one
        of them is of an agent not known yet."""
        if not beats:
            return
        registry = self.server.registry
        new = any(hb.agent_id not in registry for hb, _ in beats)
        with (self.server.gate if new else NO_GATE):
            refusals = registry.apply_many([hb for hb, _ in beats], TRANSPORT, peer)
        for (hb, started), refusal in zip(beats, refusals):
            self._applied(hb, started, refusal, peer, spoken)

    def _apply_anonymous(self, beat: Tuple[Heartbeat, float], peer: Peer, spoken: set) -> None:
        """A heartbeat without agent_id: its connection's name (see _name_anonymous)."""
        hb, started = beat
        registry = self.server.registry
        with self.server.gate:
            hb.agent_id = self._anonymous_id or self._name_anonymous(peer)
            refusal = registry.apply(hb, TRANSPORT, peer)
            if refusal == ID_CONFLICT:  # another instance took the name meanwhile
                hb.agent_id = self._name_anonymous(peer)
                refusal = registry.apply(hb, TRANSPORT, peer)
        self._applied(hb, started, refusal, peer, spoken)

    def _applied(self, hb: Heartbeat, started: float, refusal: Optional[str], peer: Peer,
                 spoken: set) -> None:
        server = self.server
        if refusal is not None:
            self._note(refusal, "unix: refused heartbeat of %s from pid %d (uid %d): %s",
                       hb.agent_id, peer.pid, peer.uid, _REFUSALS[refusal])
            return
        self._last_id = hb.agent_id
        spoken.add(hb.agent_id)
        for warning in hb.warnings:
            server.stats.note_warning(TRANSPORT, warning_reason(warning))
        if hb.warnings:
            self._note("field_dropped", "unix: heartbeat of %s applied without: %s",
                       hb.agent_id, "; ".join(hb.warnings), count=False)
        server.stats.note_processed(TRANSPORT, time.perf_counter() - started)

    def _name_anonymous(self, peer: Peer) -> str:
        """Name the agent of this connection that sends no agent_id, once per connection."""
        base = anonymous_id(process.program_name(peer.pid), peer.uid, peer.pid)
        self._anonymous_id = self.server.registry.name_anonymous(base, peer)
        return self._anonymous_id

    def _note(self, reason: str, message: str, *args, count: bool = True) -> None:
        """Count a refused line (unless `count` is False) and log the problem: at WARNING at
        most once per reason every few seconds across all connections, else at DEBUG."""
        if count:
            self.server.stats.note_rejected(TRANSPORT, reason)
        if not self.server.stats.warn(f"unix:{reason}", message, *args):
            log.debug(message, *args)  # formatted only at debug level: a flood is cheap

    def _drop(self, peer: Peer, reason: str, message: str) -> None:
        self._note(reason, "unix: closing connection of %s (pid %d): %s",
                   self._last_id or "an unnamed peer", peer.pid, message)
