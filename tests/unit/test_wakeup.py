"""The self-pipe the main loops wait on: a signal handler wakes them without a lock."""

import os
import signal
import threading
import time

from hbdaemon.wakeup import Wakeup


def test_set_wakes_a_wait_and_the_wake_up_is_used_up():
    w = Wakeup()
    try:
        assert w.wait(0) is False
        w.set()
        w.set()
        assert w.wait(5) is True
        assert w.wait(0) is False  # both bytes drained
        for _ in range(100_000):  # far more than the pipe holds: never blocks, never raises
            w.set()
        assert w.wait(0) is True and w.wait(0) is False
    finally:
        w.close()


def test_a_signal_handler_can_wake_the_main_thread_while_it_waits():
    w = Wakeup()
    seen = []

    def handler(signum, frame):
        seen.append(signum)
        w.set()

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        began = time.monotonic()
        for _ in range(100):  # the handler runs between the main thread's own waits
            if w.wait(0.1):
                break
        assert seen == [signal.SIGUSR1] and time.monotonic() - began < 5
    finally:
        signal.signal(signal.SIGUSR1, old)
        w.close()
