"""Wire protocol v1, the sending side: one heartbeat as one JSON line."""

import json
import math
import time
from json.encoder import encode_basestring_ascii as _quote
from typing import Optional


def format_rfc3339(epoch: float) -> str:
    """`2026-11-27T20:35:24.456Z` (UTC, milliseconds)."""
    whole = math.floor(epoch)
    millis = min(999, int((epoch - whole) * 1000))
    t = time.gmtime(whole)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{millis:03d}Z")


def _json(value) -> str:
    """One value as JSON: a string quoted (ASCII), a whole number as it is (json.dumps
    builds an encoder each call), anything else as json.dumps writes it."""
    kind = type(value)
    if kind is str:
        return _quote(value)
    if kind is int:  # not bool: True is not 1 on the wire
        return str(value)
    return json.dumps(value, allow_nan=False)


def encode_heartbeat(agent_id: str, pid: int, status: str, version: str,
                     cpu: Optional[float], memory: int, now: Optional[float] = None,
                     **target) -> bytes:
    """The heartbeat as one line of JSON, newline included (no cpu field if cpu is None).
    `target`: for a watched process, agent_pid (this agentd) and, when it exited,
    exit_code, signal and detail; None or empty ones are left out, and so are NaN and
    infinities (the daemon would refuse the whole line for one)."""
    # written out by hand: json.dumps of a dict was a fifth of a beat's CPU
    when = format_rfc3339(time.time() if now is None else now)
    line = (f'{{"agent_id":{_json(agent_id)},"pid":{_json(pid)},"timestamp":"{when}",'
            f'"version":{_json(version)},"status":{_json(status)}')
    if cpu is not None:
        line += f',"cpu":{round(min(100.0, max(0.0, float(cpu))), 2)!r}'
    line += f',"memory":{max(0, int(memory))}'
    for name, value in target.items():
        if value is None or value == "" or (type(value) is float and not math.isfinite(value)):
            continue
        line += f',{_quote(name)}:{_json(value)}'
    return (line + "}\n").encode()
