"""The daemon's read/administer API: routes to JSON documents (transport-free, testable)."""

import time
from typing import Callable, Dict, List, Tuple

from hbdaemon import convert
from hbdaemon.events import EventLog
from hbdaemon.protocol import parse_rfc3339, valid_agent_id
from hbdaemon.registry import Registry
from hbdaemon.status_page import STATUS_PAGE
from hbdaemon.stats import ReceiverStats

JSON = "application/json"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_EVENTS_PER_QUERY = 10000

_ROUTES = {"/": "GET", "/healthz": "GET", "/stats": "GET", "/agents": "GET", "/events": "GET",
           "/history": "GET", "/metrics": "GET", "/heartbeat": "POST"}
HTML = "text/html; charset=utf-8"


class ApiError(Exception):
    """An API answer other than success: HTTP code, message, and Allow for a 405."""

    def __init__(self, code: int, message: str, allow: str = ""):
        super().__init__(message)
        self.code, self.message, self.allow = code, message, allow


class Api:
    """Answers GET/DELETE requests from the registry, events and statistics. Thread-safe."""

    def __init__(self, registry: Registry, events: EventLog, stats: ReceiverStats,
                 extra_stats: Callable[[], dict], metrics: Callable[[], str],
                 wallclock: Callable[[], float] = time.time):
        self.registry, self.events, self.stats = registry, events, stats
        self._extra_stats, self._metrics, self._wall = extra_stats, metrics, wallclock

    def handle(self, method: str, path: str, query: Dict[str, List[str]]) -> Tuple[int, object, str]:
        """(status, JSON-able document or text, content type); raises ApiError."""
        if path.startswith("/agents/"):
            return self._agent(method, path[len("/agents/"):])
        path = path.rstrip("/") or "/"
        allowed = _ROUTES.get(path)
        if allowed is None:
            raise ApiError(404, f"no such path: {path}")
        if method != allowed:
            raise ApiError(405, f"{method} is not allowed on {path}; use {allowed}", allow=allowed)
        if path == "/":
            return 200, STATUS_PAGE, HTML
        if path == "/healthz":
            return 200, {"status": "ok"}, JSON
        if path == "/stats":
            doc = self.stats.snapshot()
            doc.update(self._extra_stats())
            return 200, doc, JSON
        if path == "/agents":
            return 200, {"agents": self.registry.snapshot()}, JSON
        if path == "/events":
            return 200, {"events": self._events(query)}, JSON
        if path == "/history":
            return 200, {"step": self.registry.history_step, "agents": self.registry.history()}, JSON
        if path == "/metrics":
            return 200, self._metrics(), METRICS_TYPE
        raise ApiError(405, f"{method} {path} is served by the receiver, not the API", allow=allowed)

    def _agent(self, method: str, agent_id: str) -> Tuple[int, object, str]:
        if method not in ("GET", "DELETE"):
            raise ApiError(405, f"{method} is not allowed on /agents/<id>; use GET or DELETE",
                           allow="GET, DELETE")
        if not valid_agent_id(agent_id):
            raise ApiError(404, f"no agent {agent_id!r}")
        if method == "DELETE":
            if not self.registry.forget(agent_id):
                raise ApiError(404, f"no agent {agent_id!r}")
            return 200, {"success": True, "message": f"agent {agent_id} forgotten"}, JSON
        record = self.registry.get(agent_id)
        if record is None:
            raise ApiError(404, f"no agent {agent_id!r}")
        return 200, record, JSON

    def _events(self, query: Dict[str, List[str]]) -> list:
        since = self._since(query.get("since", [""])[-1])
        agent = query.get("agent", [""])[-1] or None
        try:
            after = int(query.get("after", ["0"])[-1])
            limit = int(query.get("limit", ["1000"])[-1])
        except ValueError:
            raise ApiError(400, "after and limit must be whole numbers") from None
        limit = max(1, min(limit, MAX_EVENTS_PER_QUERY))
        return [ev.to_dict() for ev in self.events.query(since, agent, after, limit)]

    def _since(self, text: str):
        """`since` as an RFC 3339 time, epoch seconds, or a duration ago (`10m`)."""
        if not text:
            return None
        epoch = parse_rfc3339(text)
        if epoch is not None:
            return epoch
        try:
            return self._wall() - convert.duration(text) if not _is_number(text) else float(text)
        except ValueError:
            raise ApiError(400, "since: expected an RFC 3339 time, epoch seconds, "
                                "or a duration such as 10m") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
