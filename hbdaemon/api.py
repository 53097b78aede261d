"""The daemon's read/administer API: routes to JSON documents (transport-free, testable)."""

import json
import threading
import time
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple, Union

from hbdaemon import convert
from hbdaemon.config import STATES
from hbdaemon.events import EventLog
from hbdaemon.protocol import parse_rfc3339, valid_agent_id
from hbdaemon.registry import ID_CONFLICT, UNKNOWN, Registry
from hbdaemon.silences import SilenceError, Silences
from hbdaemon.status_page import STATUS_PAGE
from hbdaemon.stats import ReceiverStats

JSON = "application/json"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_EVENTS_PER_QUERY = 10000
# /agents?limit=: a page of 10,000 at 50,000 agents held intake's p99 at 200 ms
DEFAULT_PAGE = MAX_PAGE = 1000
PAGE_PARAMETERS = ("state", "match", "limit", "after", "changed_since")

HTML = "text/html; charset=utf-8"
AGENT_PATH = "/agents/<id>"  # one path segment: the agent id
SILENCE_PATH = "/silences/<id>"
_NAMED = (("/agents/", AGENT_PATH), ("/silences/", SILENCE_PATH))  # paths ending in a name


class Route(NamedTuple):
    """One entry of the route table."""

    method: str
    path: str
    action: str        # Api.serve_<action> (or "heartbeat": the receiver's intake)
    credential: bool   # needs a bearer token when tokens are configured


# Every route the HTTP listener serves: one table for the router, the 405 Allow header and
# the credential rule. HEAD is served wherever GET is.
ROUTES = (
    Route("GET", "/", "page", False),
    Route("GET", "/healthz", "healthz", False),
    Route("GET", "/stats", "stats", False),
    Route("GET", "/agents", "agents", False),
    Route("GET", "/summary", "summary", False),
    Route("GET", AGENT_PATH, "agent", False),
    Route("DELETE", AGENT_PATH, "forget", True),
    Route("GET", "/events", "events", False),
    Route("GET", "/history", "history", False),
    Route("GET", "/metrics", "metrics", False),
    Route("POST", "/heartbeat", "heartbeat", True),
    Route("GET", "/heartbeat/stats", "heartbeat_stats", False),  # the Go receiver's
    Route("GET", "/silences", "silences", False),
    Route("POST", "/silences", "silence", True),
    Route("DELETE", SILENCE_PATH, "unsilence", True),
)
_WITH_BODY = frozenset(("silence",))  # actions given the request's body
NETWORK_BOUND = frozenset(("silence", "unsilence"))  # actions that wait on Alertmanager
_TABLE: Dict[str, Dict[str, Route]] = {}
for _route in ROUTES:
    _TABLE.setdefault(_route.path, {})[_route.method] = _route


def resolve(method: str, path: str) -> Tuple[Route, Optional[str]]:
    """The route for `method` on a decoded path, and the name it ends in (an agent id, a
    silence id) or None.

    Raises ApiError: 404 for an unknown path, 405 (with Allow) for a method it does not take.
    """
    agent_id = None
    for prefix, pattern in _NAMED:
        if path.startswith(prefix):
            path, agent_id = pattern, path[len(prefix):]
            if "/" in agent_id:
                raise ApiError(404, "no such path")
    routes = _TABLE.get(path)
    if routes is None:
        raise ApiError(404, "no such path")
    route = routes.get("GET" if method == "HEAD" else method)
    if route is None:
        allow = sorted(routes) + (["HEAD"] if "GET" in routes else [])
        raise ApiError(405, f"this method is not allowed here; use {' or '.join(allow)}",
                       allow=", ".join(allow))
    return route, agent_id


class Stream:
    """An answer made while it is sent: `parts` yields its bytes a slice of records at a
    time, so a document of every agent (tens of MB at 100,000) is never whole in memory.
    Its length is not known ahead: it goes out chunked (HTTP/1.1)."""

    def __init__(self, parts: Iterator[bytes]):
        self.parts = parts


# An answer's body: bytes, or a Stream made while it is sent
Body = Union[bytes, Stream]


class SharedRender:
    """An expensive document (every agent): rendered by one thread at a time and reused for
    twice as long as rendering took, so a crowd of readers costs at most a third of a core
    and one copy in memory, however many ask at once. Thread-safe; blocks while rendering."""

    def __init__(self, render: Callable[[], Body], clock: Callable[[], float] = time.monotonic):
        self._render, self._clock = render, clock
        self._lock = threading.Lock()
        self._value: Optional[Body] = None
        self._fresh_until = 0.0

    def get(self) -> Body:
        with self._lock:
            started = self._clock()
            if self._value is None or started >= self._fresh_until:
                self._value = None  # the old copy goes before the new one is built
                self._value = self._render()
                done = self._clock()
                self._fresh_until = done + 2 * (done - started)
            return self._value

    def drop_stale(self) -> None:
        """Free the kept copy once it is too old to be served (tens of MB at 50,000 agents)."""
        if self._lock.acquire(blocking=False):
            try:
                if self._clock() >= self._fresh_until:
                    self._value = None
            finally:
                self._lock.release()


class ApiError(Exception):
    """An API answer other than success: HTTP code, message, and Allow for a 405."""

    def __init__(self, code: int, message: str, allow: str = ""):
        super().__init__(message)
        self.code, self.message, self.allow = code, message, allow


class Api:
    """Answers the API's routes from the registry, events and statistics. Thread-safe."""

    def __init__(self, registry: Registry, events: EventLog, stats: ReceiverStats,
                 extra_stats: Callable[[], dict], metrics: Callable[[], str],
                 wallclock: Callable[[], float] = time.time,
                 problems: Callable[[], List[str]] = lambda: [],
                 silences: Optional[Silences] = None):
        self.registry, self.events, self.stats = registry, events, stats
        self._extra_stats, self._wall, self._problems = extra_stats, wallclock, problems
        self.silences = silences
        self._metrics = SharedRender(lambda: metrics().encode())

    def handle(self, route: Route, agent_id: Optional[str], query: Dict[str, List[str]],
               by: str = "", body: bytes = b"") -> Tuple[int, object, str]:
        """(status, JSON-able document, text or bytes, content type) for a resolved route; raises
        ApiError. `by` names the client, for the record of who forgot an agent; `body` is
        the request's, for the routes that take one."""
        serve = getattr(self, "serve_" + route.action)
        if route.action in _WITH_BODY:
            return serve(query, agent_id, by, body)
        return serve(query, agent_id, by)

    def drop_stale(self) -> None:
        """Free rendered documents no longer fresh (the daemon's main loop calls it)."""
        self._metrics.drop_stale()

    def serve_page(self, query, agent_id, by) -> Tuple[int, object, str]:
        return 200, STATUS_PAGE, HTML

    def serve_healthz(self, query, agent_id, by) -> Tuple[int, object, str]:
        problems = self._problems()
        if problems:  # a part of the daemon is down or stuck: say which
            return 503, {"status": "failing", "problems": problems}, JSON
        return 200, {"status": "ok"}, JSON

    def serve_stats(self, query, agent_id, by) -> Tuple[int, object, str]:
        doc = self.stats.snapshot()
        doc.update(self._extra_stats())
        return 200, doc, JSON

    def serve_heartbeat_stats(self, query, agent_id, by) -> Tuple[int, object, str]:
        return 200, self.stats.go_snapshot(), JSON

    def serve_agents(self, query, agent_id, by) -> Tuple[int, object, str]:
        """Every agent (as ever), or with state, match, limit or after a page of them in
        agent_id order, with `next` (the `after` of the next page) while more remain."""
        if not any(name in query for name in PAGE_PARAMETERS):
            return 200, Stream(_json_stream("agents", map(
                self._annotate, self.registry.snapshot_chunks()))), JSON
        text = query.get("limit", [str(DEFAULT_PAGE)])[-1]
        if not (text.isascii() and text.isdigit() and len(text) <= 9) or int(text) < 1:
            raise ApiError(400, f"limit: a whole number from 1 (at most {MAX_PAGE} are given)")
        limit = min(int(text), MAX_PAGE)
        if "changed_since" in query:
            if any(name in query for name in ("state", "match", "after")):
                raise ApiError(400, "changed_since takes limit only (the changes of every "
                                    "agent, to keep a list of your own up to date)")
            return 200, self._changes(query["changed_since"][-1], limit), JSON
        state = query.get("state", [None])[-1] or None
        if state is not None and not set(state.split(",")) <= set(STATES):
            raise ApiError(400, f"state: one or more of {', '.join(STATES)}, separated by commas")
        match = query.get("match", [None])[-1] or None
        if match is not None and len(match) > 256:
            raise ApiError(400, "match: a glob of at most 256 characters")
        after = query.get("after", [""])[-1]
        records, following = self.registry.page(state, match, limit, after)
        doc = {"agents": self._annotate(records)}
        if following is not None:
            doc["next"] = following
        return 200, doc, JSON

    def _changes(self, cursor: str, limit: int) -> dict:
        """The records changed since `cursor` (from /summary or the last answer), the ids
        forgotten, and the cursor to ask with next; `reset` when the cursor is too old or
        from before a restart (read the list again, then poll from the cursor given)."""
        try:
            found = self.registry.changes(cursor, limit)
        except ValueError:
            raise ApiError(400, "changed_since: a cursor from /summary or a previous "
                                "answer") from None
        if found is None:
            return {"reset": True, "cursor": self.registry.cursor()}
        records, forgotten, following, more = found
        return {"agents": self._annotate(records), "forgotten": forgotten,
                "cursor": following, "more": more}

    def serve_summary(self, query, agent_id, by) -> Tuple[int, object, str]:
        """How many agents, by state and transport; the oldest problem."""
        return 200, self.registry.summary(), JSON

    def serve_agent(self, query, agent_id, by) -> Tuple[int, object, str]:
        record = self.registry.get(agent_id) if valid_agent_id(agent_id) else None
        if record is None:
            raise ApiError(404, f"no agent {agent_id!r}")
        return 200, self._annotate([record])[0], JSON

    def _annotate(self, records: List[dict]) -> List[dict]:
        return self.silences.annotate(records) if self.silences is not None else records

    def serve_silences(self, query, agent_id, by) -> Tuple[int, object, str]:
        return self._silence_call(lambda s: s.list("all" in query))

    def serve_silence(self, query, agent_id, by, body: bytes) -> Tuple[int, object, str]:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: [[[[... nested too deep
            doc = None
        if not isinstance(doc, dict):
            raise ApiError(400, 'expected a JSON object: {"match": GLOB, "for": "30m", '
                                '"reason": TEXT}')
        match, reason = doc.get("match"), doc.get("reason", "")
        try:
            duration = convert.positive_duration(doc.get("for", ""))
        except ValueError:
            raise ApiError(400, "for: a duration such as 30m, 2h or 3600") from None
        if not isinstance(match, str) or not isinstance(reason, str):
            raise ApiError(400, "match and reason: strings")
        who = str(doc.get("created_by") or "")[:100] or "hbctl"
        return self._silence_call(lambda s: s.create(match, duration, reason,
                                                     f"{who} via {by or 'the API'}"))

    def serve_unsilence(self, query, agent_id, by) -> Tuple[int, object, str]:
        return self._silence_call(lambda s: s.expire(agent_id))

    def _silence_call(self, call) -> Tuple[int, object, str]:
        if self.silences is None:
            raise ApiError(404, "no silences here")
        try:
            return 200, call(self.silences), JSON
        except SilenceError as exc:
            raise ApiError(exc.code, str(exc)) from None

    def serve_forget(self, query, agent_id, by) -> Tuple[int, object, str]:
        refusal = self.registry.forget(agent_id, by) if valid_agent_id(agent_id) else UNKNOWN
        if refusal == ID_CONFLICT:
            raise ApiError(409, f"agent {agent_id} is held by a live Unix connection; stop "
                                "that agent first")
        if refusal is not None:
            raise ApiError(404, f"no agent {agent_id!r}")
        return 200, {"success": True, "message": f"agent {agent_id} forgotten"}, JSON

    def serve_events(self, query, agent_id, by) -> Tuple[int, object, str]:
        return 200, {"events": self._events(query)}, JSON

    def serve_history(self, query, agent_id, by) -> Tuple[int, object, str]:
        """Recent cpu/memory samples: of the agents named by `agent` (repeated, at most
        MAX_PAGE), or of every agent, streamed."""
        names = query.get("agent")
        if names is None:
            return 200, Stream(_json_map("agents", self.registry.history_chunks(),
                                         {"step": self.registry.history_step})), JSON
        if len(names) > MAX_PAGE:
            raise ApiError(400, f"agent: at most {MAX_PAGE} at a time")
        return 200, {"step": self.registry.history_step,
                     "agents": self.registry.history(names)}, JSON

    def serve_metrics(self, query, agent_id, by) -> Tuple[int, object, str]:
        return 200, self._metrics.get(), METRICS_TYPE

    def _events(self, query: Dict[str, List[str]]) -> list:
        since = self._since(query.get("since", [""])[-1])
        agent = query.get("agent", [""])[-1] or None
        try:
            after = int(query["after"][-1]) if "after" in query else None
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


def _json_stream(name: str, chunks: Iterable[list]) -> Iterator[bytes]:
    """json.dumps({name: [every item of every chunk]}) a chunk at a time."""
    return _json_parts(b'{"%s": [' % name.encode(), chunks, b"]}")


def _json_map(name: str, chunks: Iterable[dict], head: dict) -> Iterator[bytes]:
    """json.dumps({**head, name: {every key: value of every chunk}}) a chunk at a time."""
    return _json_parts(json.dumps(head)[:-1].encode() + b', "%s": {' % name.encode(), chunks,
                       b"}}")


def _json_parts(opening: bytes, chunks: Iterable, closing: bytes) -> Iterator[bytes]:
    """`opening`, each chunk's JSON without its brackets (comma-separated), `closing`."""
    yield opening
    first = True
    for chunk in chunks:
        if chunk:
            yield (b"" if first else b", ") + json.dumps(chunk)[1:-1].encode()
            first = False
    yield closing
