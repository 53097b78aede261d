"""Wire protocol v1, the sending side: one heartbeat as one JSON line."""

import json
import time
from typing import Optional


def format_rfc3339(epoch: float) -> str:
    """`2026-11-27T20:35:24.456Z` (UTC, milliseconds)."""
    whole = int(epoch)
    millis = min(999, int((epoch - whole) * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def encode_heartbeat(agent_id: str, pid: int, status: str, version: str,
                     cpu: Optional[float], memory: int, now: Optional[float] = None,
                     **target) -> bytes:
    """The heartbeat as one line of JSON, newline included (no cpu field if cpu is None).
    `target`: for a watched process, agent_pid (this agentd) and, when it exited,
    exit_code, signal and detail; None or empty ones are left out."""
    doc = {"agent_id": agent_id, "pid": pid,
           "timestamp": format_rfc3339(time.time() if now is None else now),
           "version": version, "status": status}
    if cpu is not None:
        doc["cpu"] = round(min(100.0, max(0.0, cpu)), 2)
    doc["memory"] = max(0, int(memory))
    doc.update((name, value) for name, value in target.items() if value not in (None, ""))
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()
