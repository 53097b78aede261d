"""systemd notification (READY=1, WATCHDOG=1, STOPPING=1) over $NOTIFY_SOCKET, stdlib only."""

import logging
import os
import socket
from typing import Optional

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; does nothing when not started by systemd."""

    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        self.address = environ.get("NOTIFY_SOCKET") or None
        if self.address and self.address.startswith("@"):
            self.address = "\0" + self.address[1:]  # abstract namespace
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        valid_pid = not pid or pid == str(os.getpid())
        self.watchdog_interval: Optional[float] = (
            int(usec) / 1e6 / 2 if usec.isdigit() and int(usec) > 0 and valid_pid else None)

    def notify(self, message: str) -> bool:
        """Send one message; False (logged at debug) if there is no socket or it fails."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(1.0)
                sock.sendto(message.encode(), self.address)
            return True
        except OSError as exc:
            log.debug("sd_notify %r failed: %s", message, exc)
            return False
