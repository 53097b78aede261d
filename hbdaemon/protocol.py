"""Wire protocol v1: parse and validate one heartbeat, and RFC 3339 times."""

import calendar
import json
import math
import re
import signal as signal_module
import time
from typing import Optional

MAX_MESSAGE_BYTES = 64 * 1024
MAX_PID = 2**31 - 1  # psutil and os.kill take a C int
MAX_MEMORY = 2**63 - 1
DEFAULT_STATUS = "running"
EXITED = "exited"  # status of a watched target that ended (see exit_reason)
UNRESPONSIVE = "unresponsive"  # status of a watched target alive but failing its probe
METRIC_FIELDS = ("cpu", "memory")
# A downstream hbdaemon's report may carry its agents' state changes (`events`) and its
# failing agents (`problems`); the central daemon keeps them as relayed records
MAX_RELAYED = 100  # entries of each list in one report
RELAY_STATES = frozenset(("unknown", "healthy", "over_threshold", "no_heartbeat", "dead",
                          "stopped", "forgotten"))
FAILING = frozenset(("no_heartbeat", "dead", "over_threshold"))
MAX_REASON = 256

_YEAR_1, _YEAR_9999_END = -62135596800, 253402300799  # 0001-01-01, 9999-12-31T23:59:59Z
_AGENT_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}\Z")
_NOT_ID_CHAR = re.compile(r"[^A-Za-z0-9._:@-]")
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(\.\d+)?([Zz]|[+-]\d\d:\d\d)\Z"
)


class ProtocolError(ValueError):
    """A heartbeat that breaks the protocol; `field` names the culprit, or is None."""

    def __init__(self, field: Optional[str], message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field

    @property
    def reason(self) -> str:
        """A short label for counting rejects (`invalid_<field>` or `invalid_message`)."""
        return f"invalid_{self.field}" if self.field else "invalid_message"


class Heartbeat:
    """One validated heartbeat. `timestamp` is the agent's clock as sent (RFC 3339 text) or None.

    `cpu` or `memory` None: the agent sent an invalid value, so the previous one stays.
    `warnings` names each optional field that was dropped or clamped (liveness beats metrics).
    """

    __slots__ = ("agent_id", "pid", "timestamp", "version", "status", "cpu", "memory", "summary",
                 "warnings", "agent_pid", "exit_code", "signal", "detail", "watcher", "events",
                 "problems", "problems_total")

    def __init__(self, agent_id, pid, timestamp=None, version="", status=DEFAULT_STATUS,
                 cpu=0.0, memory=0, summary=None, warnings=(), agent_pid=None, exit_code=None,
                 signal=None, detail="", watcher=None, events=None, problems=None,
                 problems_total=None):
        self.agent_id = agent_id
        self.pid = pid
        self.timestamp = timestamp
        self.version = version
        self.status = status
        self.cpu = cpu
        self.memory = memory
        self.summary = summary  # a downstream hbdaemon's agents per state, or None
        self.warnings = warnings
        # a target watched by agentd: the sending agentd's pid (the peer to check), and
        # with status "exited" how the target ended, as far as agentd knows
        self.agent_pid, self.exit_code, self.signal, self.detail = \
            agent_pid, exit_code, signal, detail
        self.watcher = watcher  # who speaks for the target: the agentd's agent_id
        # from a downstream daemon: [(agent_id, to_state, reason, epoch)] changes, oldest
        # first; [(agent_id, state, reason, since)] its failing agents, of problems_total
        self.events, self.problems, self.problems_total = events, problems, problems_total

    def __repr__(self) -> str:
        return (f"Heartbeat(agent_id={self.agent_id!r}, pid={self.pid}, status={self.status!r}, "
                f"cpu={self.cpu}, memory={self.memory})")


def valid_agent_id(value) -> bool:
    """True if `value` is a string the protocol accepts as an agent id."""
    return isinstance(value, str) and _AGENT_ID.match(value) is not None


def anonymous_id(program: Optional[str], uid: int, pid: int) -> str:
    """The id of a Unix agent that sent no agent_id: `<program>@uid<uid>`, one record for a
    program across its restarts (`pid-<pid>` if its program is unknown). The program name
    is the process's own say: characters outside the id alphabet become `_`."""
    if not program:
        return f"pid-{pid}"
    return f"{_NOT_ID_CHAR.sub('_', program)[:100]}@uid{uid}"


def parse_heartbeat(data, require_agent_id: bool = True) -> Heartbeat:
    """Parse bytes, str or an already-decoded dict into a Heartbeat, or raise ProtocolError.

    Only the identity (`agent_id`, `pid`) or the framing (not a JSON object) voids a
    heartbeat; a bad optional field is dropped (cpu over 100 clamped) and named in
    `warnings`. Without an agent_id (allowed on the Unix socket) `agent_id` is None: the
    receiver names the agent (see anonymous_id).
    """
    obj = decode_json(data) if isinstance(data, (bytes, bytearray, str)) else data
    if not isinstance(obj, dict):
        raise ProtocolError(None, "expected a JSON object")
    pid = obj.get("pid")
    if type(pid) is not int:
        raise ProtocolError("pid", "required, an integer > 0")
    if not 0 < pid <= MAX_PID:
        raise ProtocolError("pid", f"must be between 1 and {MAX_PID}")
    agent_pid = obj.get("agent_pid")
    if agent_pid is not None and (type(agent_pid) is not int or not 0 < agent_pid <= MAX_PID):
        raise ProtocolError("agent_pid", f"an integer between 1 and {MAX_PID} (the sender's pid)")
    agent_id = obj.get("agent_id")
    if agent_id is None:
        if require_agent_id:
            raise ProtocolError("agent_id", "required, 1-128 characters of A-Z a-z 0-9 . _ : @ -")
    elif not valid_agent_id(agent_id):
        raise ProtocolError("agent_id", "must be 1-128 characters of A-Z a-z 0-9 . _ : @ -")
    warnings = []
    cpu = _optional(obj, "cpu", _cpu, 0.0, warnings)
    memory = _optional(obj, "memory", _memory, 0, warnings)
    version = _optional(obj, "version", _version, "", warnings)
    status = _optional(obj, "status", _status, DEFAULT_STATUS, warnings) or DEFAULT_STATUS
    summary = _optional(obj, "summary", _summary, None, warnings)
    exit_code = _optional(obj, "exit_code", _exit_code, None, warnings)
    signal = _optional(obj, "signal", _signal, None, warnings)
    detail = _optional(obj, "detail", _detail, "", warnings)
    watcher = _optional(obj, "watcher", _watcher, None, warnings)
    events = _optional(obj, "events", _relayed_events, None, warnings)
    problems = _optional(obj, "problems", _relayed_problems, None, warnings)
    total = _optional(obj, "problems_total", _count, None, warnings)
    if problems is not None and (total is None or total < len(problems)):
        total = len(problems)
    return Heartbeat(agent_id, pid, timestamp=_optional_time(obj.get("timestamp")),
                     version=version, status=status, cpu=cpu, memory=memory, summary=summary,
                     warnings=tuple(warnings), agent_pid=agent_pid, exit_code=exit_code,
                     signal=signal, detail=detail, watcher=watcher, events=events,
                     problems=problems, problems_total=total)


def exit_reason(hb: Heartbeat) -> str:
    """Why a watched target is `dead`, from its `exited` heartbeat: how it ended, as far
    as its watcher knows, and the watcher's detail."""
    if hb.signal is not None:
        try:
            name = f" ({signal_module.Signals(hb.signal).name})"
        except ValueError:
            name = ""
        how = f"process {hb.pid} was killed by signal {hb.signal}{name}"
    elif hb.exit_code is not None:
        how = f"process {hb.pid} exited with code {hb.exit_code}"
    else:
        how = "" if hb.detail else f"process {hb.pid} exited"
    return ": ".join(part for part in (how, hb.detail) if part)


def _optional(obj: dict, field: str, convert, default, warnings: list):
    """`convert(value)` for a field the daemon can do without: absent gives `default`; a bad
    value is dropped (None for a metric, so the previous value stays) with a warning."""
    value = obj.get(field)
    if value is None:
        return default
    try:
        return convert(value, warnings)
    except ValueError as exc:
        warnings.append(f"{field}: {exc}; ignored")
        return None if field in METRIC_FIELDS else default


def warning_reason(warning: str) -> str:
    """The counted reason for one of Heartbeat.warnings: metric_invalid for cpu and memory."""
    return "metric_invalid" if warning.partition(":")[0] in METRIC_FIELDS else "field_invalid"


def decode_json(data):
    """Decode one JSON document from bytes or str, raising ProtocolError on anything wrong."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(None, f"message larger than {MAX_MESSAGE_BYTES} bytes")
    if isinstance(data, (bytes, bytearray)):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(None, "message is not valid UTF-8") from None
    try:
        return json.loads(data, parse_constant=_no_constant, parse_int=_bounded_int)
    except RecursionError:
        raise ProtocolError(None, "invalid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and ints over the digit limit
        raise ProtocolError(None, f"invalid JSON: {exc}") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # strict JSON: no NaN or Infinity literals


def _bounded_int(digits: str):
    # an integer no field can hold stays a number (so it voids only its own field) without
    # costing quadratic time to convert (Python 3.9 has no digit limit)
    return int(digits) if len(digits) <= 40 else math.inf


def _text(limit: int):
    def convert(value, warnings) -> str:
        if not isinstance(value, str) or len(value) > limit:
            raise ValueError(f"must be a string of at most {limit} characters")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate, sent as an escape such as \ud800
                raise ValueError("must be valid Unicode text") from None
        return value
    return convert


_version, _status, _detail = _text(64), _text(32), _text(200)


def _watcher(value, warnings) -> str:
    if not valid_agent_id(value):
        raise ValueError("must be an agent id (1-128 characters of A-Z a-z 0-9 . _ : @ -)")
    return value


def _relayed(value, states, time_field: str) -> list:
    """[(agent_id, state, reason, epoch)] from a list of objects {agent_id, STATE FIELD,
    reason, TIME FIELD}; the whole list is refused if one entry is malformed."""
    state_field = "to" if time_field == "time" else "state"
    if not isinstance(value, list) or len(value) > MAX_RELAYED:
        raise ValueError(f"must be a list of at most {MAX_RELAYED} objects")
    out = []
    for entry in value:
        if not isinstance(entry, dict):
            raise ValueError("each entry must be an object")
        agent_id, state = entry.get("agent_id"), entry.get(state_field)
        reason, when = entry.get("reason", ""), entry.get(time_field)
        epoch = parse_rfc3339(when) if isinstance(when, str) and len(when) <= 64 else None
        # a str first: a list or object would make `in states` raise TypeError, not refuse
        if not valid_agent_id(agent_id) or not isinstance(state, str) or state not in states \
                or epoch is None \
                or not isinstance(reason, str) or len(reason) > MAX_REASON:
            raise ValueError(f"each entry: agent_id, {state_field} (a state), reason (text "
                             f"of at most {MAX_REASON} characters), {time_field} (RFC 3339)")
        out.append((agent_id, state, reason, epoch))
    return out


def _relayed_events(value, warnings) -> list:
    return _relayed(value, RELAY_STATES, "time")


def _relayed_problems(value, warnings) -> list:
    return _relayed(value, FAILING, "since")


def _count(value, warnings) -> int:
    if type(value) is not int or not 0 <= value < 2**31:
        raise ValueError("must be an integer >= 0")
    return value


def _exit_code(value, warnings) -> int:
    if type(value) is not int or not 0 <= value <= 255:
        raise ValueError("must be an integer from 0 to 255")
    return value


def _signal(value, warnings) -> int:
    if type(value) is not int or not 0 < value < 128:
        raise ValueError("must be a signal number from 1 to 127")
    return value


def _cpu(value, warnings) -> float:
    if type(value) not in (int, float):
        raise ValueError("must be a number from 0 to 100 (percent of the machine)")
    try:
        value = float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise ValueError("must be a number from 0 to 100 (percent of the machine)") from None
    if not 0 <= value < math.inf:
        raise ValueError("must be a number from 0 to 100 (percent of the machine)")
    if value > 100:
        # per-core figures (the Go agent's gopsutil) go past 100 on a busy host: still alive
        warnings.append(f"cpu: {value:g} is over 100 (percent of the machine); clamped to 100")
        return 100.0
    return value


def _memory(value, warnings) -> int:
    if type(value) is not int or not 0 <= value <= MAX_MEMORY:
        raise ValueError("must be an integer number of bytes >= 0")
    return value


def _summary(value, warnings) -> dict:
    """An upstream report's `summary`: up to 16 counts by name (e.g. agents per state)."""
    if (not isinstance(value, dict) or len(value) > 16
            or not all(isinstance(k, str) and 0 < len(k) <= 32 and k.isascii()
                       and type(v) is int and 0 <= v < 2**31 for k, v in value.items())):
        raise ValueError("must be an object of at most 16 names with counts >= 0")
    return value


def _optional_time(value) -> Optional[str]:
    # Informational only, so kept as sent and parsed when shown (off the intake path);
    # anything unparsable is shown as null: "use the server's time".
    return value if isinstance(value, str) and len(value) <= 64 else None


def parse_rfc3339(text: str) -> Optional[float]:
    """Epoch seconds from an RFC 3339 time (any fraction length, Z or offset), else None."""
    m = _RFC3339.match(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second <= 60):
        return None
    zone = m.group(8)
    if zone not in ("Z", "z") and (int(zone[1:3]) > 23 or int(zone[4:6]) > 59):
        return None
    try:
        base = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    fraction = float(m.group(7)) if m.group(7) else 0.0
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        base -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    if not _YEAR_1 <= base <= _YEAR_9999_END:  # the offset moved it out of what RFC 3339 shows
        return None
    return base + fraction


def format_rfc3339(epoch: Optional[float]) -> Optional[str]:
    """`2026-11-27T20:35:24.456Z` for epoch seconds (None stays None)."""
    if epoch is None:
        return None
    whole = int(epoch // 1)
    millis = int(round((epoch - whole) * 1000))
    if millis == 1000:
        whole, millis = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"
