"""agentd's own HTTP client against a scripted server on loopback: how it frames answers,
what it makes of hostile or odd ones, and that a dropped keep-alive connection costs no beat."""

import socket
import threading
import time

import pytest

from agentd.transport import MAX_BODY, HttpTransport, TransportError

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n" \
     b'{"status":"ok"}\n'


class ScriptedServer:
    """Answers each request with the next scripted bytes; None closes the connection
    without an answer. Records the requests' bodies."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.bodies, self.connections = [], 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/heartbeat"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while self.answers:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while self.answers:
                    body = self._read_request(conn)
                    if body is None:
                        break
                    answer = self.answers.pop(0)
                    if answer is None:
                        break
                    self.bodies.append(body)
                    try:
                        if callable(answer):  # it writes (or trickles) its own answer
                            answer(conn)
                        else:
                            conn.sendall(answer)
                    except OSError:  # the client gave up on a hostile answer
                        break

    @staticmethod
    def _read_request(conn):
        data = b""
        while b"\r\n\r\n" not in data:
            try:
                chunk = conn.recv(65536)
            except OSError:  # reset by a client that gave up on a hostile answer
                return None
            if not chunk:
                return None
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += conn.recv(65536)
        return body

    def close(self):
        self.sock.close()


@pytest.fixture
def serve():
    servers = []

    def make(*answers):
        servers.append(ScriptedServer(answers))
        return servers[-1]
    yield make
    for server in servers:
        server.close()


def test_keep_alive_carries_many_beats_on_one_connection(serve):
    server = serve(OK, OK, OK)
    transport = HttpTransport(server.url, 2.0, token="s3cret")
    for n in range(3):
        transport.send(b'{"n":%d}\n' % n)
    assert server.connections == 1
    assert server.bodies == [b'{"n":0}\n', b'{"n":1}\n', b'{"n":2}\n']
    assert transport.connected
    transport.close()


def test_a_connection_the_daemon_dropped_is_reopened_within_the_same_beat(serve):
    server = serve(OK, None, OK)
    transport = HttpTransport(server.url, 2.0)
    transport.send(b"1\n")
    transport.send(b"2\n")  # the first connection closes unanswered: sent again on a new one
    assert server.bodies == [b"1\n", b"2\n"] and server.connections == 2
    transport.close()


def test_chunked_and_close_delimited_answers_are_read(serve):
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n0\r\n\r\n")
    close_delimited = b"HTTP/1.0 200 OK\r\n\r\nbye"
    server = serve(chunked, OK, close_delimited)
    transport = HttpTransport(server.url, 2.0)
    transport.send(b"1\n")
    transport.send(b"2\n")  # after a chunked answer the stream is still in step
    transport.send(b"3\n")
    assert not transport.connected  # an answer without a length ends the connection
    transport.close()


@pytest.mark.parametrize("answer, permanent, retry_after", [
    (b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n", False, 7.0),
    (b"HTTP/1.1 429 Later\r\nretry-after:   nan  \r\nContent-Length: 0\r\n\r\n", False, 300.0),
    (b"HTTP/1.1 401 No\r\nContent-Length: 0\r\n\r\n", True, None),
    (b'HTTP/1.1 409 Taken\r\nContent-Length: 23\r\n\r\n{"message":"held by 7"}', True, None),
])
def test_refusals_say_whether_a_retry_can_help(serve, answer, permanent, retry_after):
    server = serve(answer)
    transport = HttpTransport(server.url, 2.0)
    with pytest.raises(TransportError) as err:
        transport.send(b"1\n")
    assert err.value.permanent is permanent
    assert err.value.retry_after == retry_after
    transport.close()


@pytest.mark.parametrize("answer", [
    b"SSH-2.0-OpenSSH\r\n\r\n",                      # not HTTP
    b"HTTP/1.1 abc\r\n\r\n",                         # no status code
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000,        # a header without end
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",   # cut short
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # not a chunk size
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n",  # nor this
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7fffffff\r\n" + b"x" * 70000,
])
def test_a_hostile_answer_is_a_transport_error_not_a_crash(serve, answer):
    server = serve(answer, None)
    transport = HttpTransport(server.url, 2.0)
    with pytest.raises(TransportError):
        transport.send(b"1\n")
    assert not transport.connected
    server.close()


def test_an_answer_larger_than_the_bound_is_cut_not_buffered_whole(serve):
    huge = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"x" * (MAX_BODY + 10)
    server = serve(huge)
    transport = HttpTransport(server.url, 2.0)
    transport.send(b"1\n")  # the first MAX_BODY bytes are the answer; the rest is not read
    assert not transport.connected  # and the connection, out of step, is dropped


def test_a_daemon_that_never_answers_times_out(serve):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    transport = HttpTransport(f"http://127.0.0.1:{sock.getsockname()[1]}/", 0.3)
    with pytest.raises(TransportError):
        transport.send(b"1\n")
    sock.close()


@pytest.mark.parametrize("line", [b" " * 60000, b"x:" + b" " * 60000 + b"\rz",
                                  b"\t" * 30000 + b":" + b"\t" * 30000])
def test_a_header_line_of_blanks_is_parsed_at_once(serve, line):
    server = serve(b"HTTP/1.1 200 OK\r\n" + line + b"\r\nContent-Length: 0\r\n\r\n")
    transport = HttpTransport(server.url, 2.0)
    started = time.monotonic()
    try:
        transport.send(b"1\n")
    except TransportError:
        pass
    assert time.monotonic() - started < 1.0  # a backtracking regex took minutes here
    transport.close()


def test_bare_line_feeds_and_trailers_keep_the_stream_in_step(serve):
    server = serve(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
                   b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"2\r\nok\r\n0\r\nX-Trailer: 1\r\n\r\n", OK)
    transport = HttpTransport(server.url, 2.0)
    for n in range(3):
        transport.send(b"%d\n" % n)
    assert server.connections == 1 and len(server.bodies) == 3
    transport.close()


def test_an_answer_nobody_asked_for_is_not_taken_for_the_next_one(serve):
    refused = b"HTTP/1.1 401 No\r\nContent-Length: 0\r\n\r\n"
    server = serve(OK + refused, OK)
    transport = HttpTransport(server.url, 2.0)
    transport.send(b"1\n")
    transport.send(b"2\n")  # the stray 401 is dropped with its connection, not read as ours
    assert server.connections == 2
    transport.close()


def test_a_trickled_answer_cannot_stretch_the_timeout(serve):
    def trickle(conn):
        try:
            for byte in b"HTTP/1.1 200 OK\r\nX: " + b"a" * 100:
                conn.sendall(bytes([byte]))
                time.sleep(0.05)
        except OSError:
            pass
    server = serve(trickle)
    transport = HttpTransport(server.url, 0.5)
    started = time.monotonic()
    with pytest.raises(TransportError) as err:
        transport.send(b"1\n")
    assert time.monotonic() - started < 1.5 and "timed out" in str(err.value)



def test_signals_on_the_sending_thread_cannot_stretch_the_timeout():
    """A read interrupted by a signal is retried within what is left of the exchange."""
    import signal
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    transport = HttpTransport(f"http://127.0.0.1:{sock.getsockname()[1]}/", 1.0)
    old = signal.signal(signal.SIGUSR1, lambda *_: None)
    result = []
    sender = threading.Thread(target=lambda: result.append(_timed_send(transport)))
    sender.start()
    try:
        while sender.is_alive():
            signal.pthread_kill(sender.ident, signal.SIGUSR1)
            time.sleep(0.2)
    finally:
        sender.join(10)
        signal.signal(signal.SIGUSR1, old)
        sock.close()
    assert result and result[0] < 2.0  # 1 s and a little, not stretched by 0.2 s signals


def _timed_send(transport) -> float:
    started = time.monotonic()
    try:
        transport.send(b"1\n")
    except TransportError:
        pass
    return time.monotonic() - started


# -- found by an attack on the poll()-based client ---------------------------------------

def test_an_answer_that_comes_between_two_beats_is_not_taken_for_the_next(serve):
    def answer_then_stray(conn):
        conn.sendall(OK)
        time.sleep(0.1)  # after the beat's exchange is over
        conn.sendall(b"HTTP/1.1 503 Busy\r\nRetry-After: 60\r\nContent-Length: 0\r\n\r\n")
    server = serve(answer_then_stray, OK)
    transport = HttpTransport(server.url, 2.0)
    transport.send(b"1\n")
    time.sleep(0.3)
    transport.send(b"2\n")  # a 503 read here would hold the agent back for 60 s
    assert server.connections == 2 and server.bodies == [b"1\n", b"2\n"]
    transport.close()


def test_a_kept_connection_that_times_out_is_not_retried_past_the_timeout(serve):
    never = lambda conn: time.sleep(3)  # noqa: E731 (reads the beat, never answers)
    server = serve(OK, never, OK)
    transport = HttpTransport(server.url, 1.0)
    transport.send(b"1\n")
    started = time.monotonic()
    with pytest.raises(TransportError, match="timed out"):
        transport.send(b"2\n")
    assert time.monotonic() - started < 1.5  # one timeout, not two
    assert server.bodies == [b"1\n", b"2\n"]  # and the beat went out once


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",        # a blank before the colon
    b"HTTP/1.1 100 Continue\r\n\r\n" + OK,                      # an interim answer first
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 P\r\n\r\n" + OK,
    b"HTTP/1.1 204 No Content\r\n\r\n",                         # no body, no length
])
def test_odd_but_whole_answers_are_taken_at_once(serve, answer):
    server = serve(answer, OK)
    transport = HttpTransport(server.url, 2.0)
    started = time.monotonic()
    transport.send(b"1\n")
    transport.send(b"2\n")
    assert time.monotonic() - started < 1.0 and server.connections == 1
    transport.close()
