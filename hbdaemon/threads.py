"""Named daemon threads and a bounded join: how every component runs its background work."""

import logging
import threading
from typing import Optional

log = logging.getLogger(__name__)


def spawn(name: str, target, *args) -> threading.Thread:
    """Start `target(*args)` in a daemon thread called `name` (a stuck one never blocks exit)."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread


def join(thread: Optional[threading.Thread], timeout: float) -> bool:
    """Wait up to `timeout` for `thread` to end; warn and return False if it did not."""
    if thread is None:
        return True
    thread.join(timeout)
    if thread.is_alive():
        log.warning("thread %s did not stop within %.1fs", thread.name, timeout)
        return False
    return True
