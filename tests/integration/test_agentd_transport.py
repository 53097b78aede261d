"""agentd's Unix transport against a real listening socket whose backlog is full."""

import os
import socket
import threading

from agentd.transport import UnixTransport


def test_a_full_accept_backlog_is_waited_out_not_a_failure(short_tmp):
    path = os.path.join(short_tmp, "full.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(0)
    fillers = []
    while True:  # fill the backlog the way a connect flood does
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except BlockingIOError:
            s.close()
            break
        fillers.append(s)
    for s in fillers:
        s.close()
    freed = threading.Timer(0.2, lambda: [server.accept()[0].close() for _ in fillers])
    freed.start()
    transport = UnixTransport(path, timeout=3.0)
    try:
        transport.send(b'{"pid": 1}\n')  # EAGAIN at first: retried within the timeout
        assert transport.connected
    finally:
        freed.join(5)
        transport.close()
        server.close()
