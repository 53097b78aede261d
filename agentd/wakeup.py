"""A self-pipe: how a signal handler (or any thread) wakes the main loop without a lock."""

import os
import select


class Wakeup:
    """set() writes a byte to a non-blocking pipe: safe in a signal handler, where
    Event.set() can deadlock on the lock its own thread holds inside wait() or clear()
    (see STYLE.md). wait(timeout) in the main loop returns when set() was called since
    the last wait, or after `timeout`."""

    def __init__(self):
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._poll = select.poll()
        self._poll.register(self._read, select.POLLIN)

    def set(self) -> None:
        try:
            os.write(self._write, b"\0")
        except OSError:  # the pipe is full (a wake-up is pending already) or closed
            pass

    def wait(self, timeout: float) -> bool:
        """True if woken, False on timeout; either way the pending wake-ups are used up."""
        woken = bool(self._poll.poll(max(0, int(timeout * 1000))))
        try:
            while os.read(self._read, 4096):
                pass
        except OSError:  # BlockingIOError: drained
            pass
        return woken

    def close(self) -> None:
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass
