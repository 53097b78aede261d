"""A large fleet written straight into a daemon's state store: the daemon remembers it at
start, as after a restart, without a heartbeat each (100,000 in seconds)."""

import json
import os
import sqlite3
import time

from hbdaemon.store import DB_NAME, Store


def write_fleet(state_dir: str, total: int, dead: int, prefix: str = "host") -> list:
    """Store `total` agents <prefix>-NNNNNN: the first `dead` dead (they stay dead after a
    restart), the rest healthy (unknown after it, until heard). Returns the dead ids."""
    Store(state_dir, 100, 1.0).open()  # the schema, as the daemon makes it
    now = time.time()
    rows, dead_ids = [], []
    for n in range(total):
        agent_id = f"{prefix}-{n:06d}"
        state = "dead" if n < dead else "healthy"
        if state == "dead":
            dead_ids.append(agent_id)
        rows.append((agent_id, json.dumps({
            "agent_id": agent_id, "state": state, "state_since": now - 3600 + n % 3600,
            "reason": "process 4242 is gone" if state == "dead" else "",
            "pid": 4242, "status": "running", "version": "1.0.0", "cpu": 0.5,
            "memory": 31457280, "transport": "udp", "last_seen": now - 30,
            "agent_time": None, "first_seen": now - 86400, "heartbeats": 1440,
            "remote": "10.1.2.3", "summary": {"healthy": 12}, "interval": 60.0})))
    db = sqlite3.connect(os.path.join(state_dir, DB_NAME))
    with db:
        db.executemany("INSERT OR REPLACE INTO agents (agent_id, data) VALUES (?, ?)", rows)
    db.close()
    return dead_ids
