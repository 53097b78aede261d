"""Wire protocol v1, the sending side: one heartbeat as one JSON line."""

import json
import time
from json.encoder import encode_basestring_ascii as _quote
from typing import Optional


def format_rfc3339(epoch: float) -> str:
    """`2026-11-27T20:35:24.456Z` (UTC, milliseconds)."""
    whole = int(epoch)
    millis = min(999, int((epoch - whole) * 1000))
    t = time.gmtime(whole)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{millis:03d}Z")


def encode_heartbeat(agent_id: str, pid: int, status: str, version: str,
                     cpu: Optional[float], memory: int, now: Optional[float] = None,
                     **target) -> bytes:
    """The heartbeat as one line of JSON, newline included (no cpu field if cpu is None).
    `target`: for a watched process, agent_pid (this agentd) and, when it exited,
    exit_code, signal and detail; None or empty ones are left out."""
    # written out by hand: json.dumps of a dict was a fifth of a beat's CPU
    when = format_rfc3339(time.time() if now is None else now)
    line = (f'{{"agent_id":{_quote(agent_id)},"pid":{int(pid)},"timestamp":"{when}",'
            f'"version":{_quote(version)},"status":{_quote(status)}')
    if cpu is not None:
        line += f',"cpu":{round(min(100.0, max(0.0, float(cpu))), 2)!r}'
    line += f',"memory":{max(0, int(memory))}'
    for name, value in target.items():
        if value is None or value == "":
            continue
        line += f',{_quote(name)}:{_quote(value) if isinstance(value, str) else json.dumps(value)}'
    return (line + "}\n").encode()
