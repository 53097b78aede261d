"""Logging set-up: stderr (journald) or a file that survives logrotate, text or JSON lines.

Shared by hbdaemon and agentd: agentd/logsetup.py is a byte-identical copy
(tests/unit/test_shared_copies.py keeps them equal; `make sync-copies` refreshes it).
"""

import json
import logging
import sys
import time
from dataclasses import dataclass

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
