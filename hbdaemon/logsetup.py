"""Logging set-up: stderr (journald) or a file that survives logrotate, text or JSON lines.

Shared by hbdaemon and agentd: agentd/logsetup.py is a byte-identical copy
(tests/unit/test_shared_copies.py keeps them equal; `make sync-copies` refreshes it).
"""

import json
import logging
import os
import stat
import sys
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from . import convert as cv
from .configkit import key

@dataclass(frozen=True)
class LogConfig:
    """The `log:` section, the same in both programs."""

    level: str = key("info", cv.choice("debug", "info", "warning", "error"))
    file: str = key("", cv.optional_path)
    format: str = key("text", cv.choice("text", "json"))


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_handler = None
_handler_key = None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc = {"time": f"{stamp}.{int(record.msecs):03d}Z", "level": record.levelname,
               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure(level: str, file: str = "", fmt: str = "text") -> None:
    """(Re)configure the root logger; a new file or format replaces the handler.

    Raises OSError if the log file cannot be opened (the old handler is then kept).
    """
    global _handler, _handler_key
    root = logging.getLogger()
    key = (file, fmt)
    if key != _handler_key:
        if file:
            from logging.handlers import WatchedFileHandler  # only when needed: it costs memory
            handler = WatchedFileHandler(file)
        else:
            handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
        if _handler is not None:
            root.removeHandler(_handler)
            _handler.close()
        root.addHandler(handler)
        _handler, _handler_key = handler, key
    root.setLevel(getattr(logging, level.upper()))


def unwritable(path: str, service_user: str = "", directory: bool = False) -> Optional[str]:
    """Why the program will not be able to write `path` (a file, or with `directory` a
    directory it creates files in), or None. For --check-config: run as root on a host where
    `service_user` exists (the packaged services' user), it judges for that user, since
    that is who the service runs as; else for whoever runs it."""
    path = os.path.realpath(path)  # through symlinks: the file that will be written
    parent = path if directory else os.path.dirname(path)
    while not os.path.exists(parent):  # a missing state_dir is created: judge its parent
        if not directory or parent == os.path.dirname(parent):
            return f"its directory {parent} does not exist"
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is not a directory"
    if not directory and os.path.isdir(path):
        return f"{path} is a directory"
    try:
        if os.statvfs(parent).f_flag & os.ST_RDONLY:
            return f"{parent} is on a read-only file system"
    except OSError:
        pass
    target = path if os.path.exists(path) else parent
    account = _account(service_user) if service_user and os.geteuid() == 0 else None
    if account is None:
        if os.access(target, os.W_OK | (os.X_OK if os.path.isdir(target) else 0)):
            return None
        return f"{target} is not writable by uid {os.geteuid()}"
    name, uid, gids = account
    blocked = _blocked(target, uid, gids)
    if blocked is None:
        return None
    what = "writable" if blocked == target else "reachable (no search permission)"
    return f"{blocked} is not {what} by user {name}, whom the service runs as"


def _account(name: str) -> Optional[Tuple[str, int, set]]:
    """(name, uid, gids) of a local user, or None if there is no such user."""
    import grp
    import pwd
    try:
        entry = pwd.getpwnam(name)
        gids = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
    except (KeyError, OSError):
        return None
    return name, entry.pw_uid, gids


def _blocked(path: str, uid: int, gids: set) -> Optional[str]:
    """The path that keeps `uid` (in `gids`) from writing `path` by the mode bits: `path`
    itself, or a directory above it that it may not search; None if nothing does."""
    def allowed(st: os.stat_result, bit: int) -> bool:  # bit: 2 write, 1 search
        shift = 6 if st.st_uid == uid else 3 if st.st_gid in gids else 0
        return bool(st.st_mode & (bit << shift))

    try:
        st = os.stat(path)
        if not allowed(st, 2) or (stat.S_ISDIR(st.st_mode) and not allowed(st, 1)):
            return path
        above = os.path.dirname(path)
        while True:
            if not allowed(os.stat(above), 1):
                return above
            if above == os.path.dirname(above):
                return None
            above = os.path.dirname(above)
    except OSError:
        return path
