"""Silences: `hbctl silence GLOB --for 30m --reason TEXT`.

With alertmanager.urls set, a silence is Alertmanager's (API v2, a matcher on
`agent_id`): made there, listed from there, expired there; this daemon keeps a copy,
refreshed every REFRESH seconds, to mark silenced agents and to hold back their
webhooks and hooks. Without Alertmanager, a silence is a local mute kept in
state_dir/silences.json. Either way, a silenced agent's webhooks and hooks do not run.
"""

import fnmatch
import json
import logging
import os
import re
import stat
import threading
import time
import uuid
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import quote

from hbdaemon.alerts import Alert, alert_labels
from hbdaemon.config import FAILING_STATES, AlertmanagerConfig
from hbdaemon.httpclient import SEND_ERRORS, request
from hbdaemon.protocol import format_rfc3339, parse_rfc3339
from hbdaemon.threads import Component, alive, guard, halt

log = logging.getLogger(__name__)

REFRESH = 15.0            # seconds between reads of Alertmanager's silences
MAX_SILENCES = 10_000     # kept (local) or read (Alertmanager)
MAX_ANSWER = 16 * 2**20   # bytes of Alertmanager's list of silences read
MAX_DURATION = 366 * 86400.0
MAX_LOCAL_FILE = 64 * 2**20  # bytes of silences.json (10,000 silences with long reasons fit)
MAX_ANSWERS = 200_000     # silenced() answers kept until the silences change
_GLOB_CHARS = re.compile(r"[*?\[]")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_OPS = {(False, True): "=", (False, False): "!=", (True, True): "=~", (True, False): "!~"}


class SilenceError(Exception):
    """A request about silences that cannot be done: `code` is the HTTP answer."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class Silence:
    """A silence as both kinds are shown: matchers as (name, op, value) with op one of
    =, !=, =~, !~ (regexes anchored at both ends, as Alertmanager's are)."""

    __slots__ = ("id", "matchers", "starts", "ends", "created_by", "comment", "_compiled")

    def __init__(self, id: str, matchers: List[Tuple[str, str, str]], starts: float,
                 ends: float, created_by: str, comment: str):
        self.id, self.matchers, self.starts, self.ends = id, matchers, starts, ends
        self.created_by, self.comment = created_by, comment
        self._compiled = None

    def active(self, now: float) -> bool:
        return self.starts <= now < self.ends

    def matches(self, labels: Dict[str, str]) -> bool:
        """Whether every matcher holds. A regex is tried only in the shapes a glob has
        (literals, `.`, `.*`, `.+`, a [class]), as a glob: Python's backtracking engine
        takes hours on some regexes Alertmanager's RE2 takes in linear time, and it
        would hold every thread of the daemon meanwhile. A silence with another regex
        covers nothing here (Alertmanager still applies it to its notifications)."""
        if self._compiled is None:
            self._compiled = [(name, op, regex_glob(value) if "~" in op else value)
                              for name, op, value in self.matchers]
        for name, op, want in self._compiled:
            have = labels.get(name, "")  # a missing label is empty, as in Alertmanager
            if op == "=":
                ok = have == want
            elif op == "!=":
                ok = have != want
            elif want is None:
                return False
            else:
                ok = fnmatch.fnmatchcase(have, want) == (op == "=~")
            if not ok:
                return False
        return True

    def to_dict(self, now: float) -> dict:
        state = "active" if self.active(now) else "pending" if now < self.starts else "expired"
        return {"id": self.id, "state": state,
                "matchers": [{"name": n, "op": op, "value": v} for n, op, v in self.matchers],
                "starts_at": format_rfc3339(self.starts), "ends_at": format_rfc3339(self.ends),
                "created_by": self.created_by, "comment": self.comment}


_REGEX_TOKEN = re.compile(r"\\[^A-Za-z0-9]|\.\*|\.\+|\.|\[\^?\]?[^\]\[\\]*\]|[^\\.\[\]()|*+?{}^$]")


def regex_glob(regex: str) -> Optional[str]:
    """A regex made only of literals, `.`, `.*`, `.+` and [classes], as the glob that
    matches the same strings; None for anything else."""
    out, at = [], 0
    while at < len(regex):
        token = _REGEX_TOKEN.match(regex, at)
        if token is None:
            return None
        text = token.group()
        at = token.end()
        if text == ".*":
            out.append("*")
        elif text == ".+":
            out.append("?*")
        elif text == ".":
            out.append("?")
        elif text.startswith("["):
            out.append("[!" + text[2:] if text.startswith("[^") else text)
        else:
            literal = text[-1]
            out.append(f"[{literal}]" if literal in "*?[" else literal)
    return "".join(out)


def glob_regex(glob: str) -> str:
    """An agent-id glob (* ? [...] [!...]) as an RE2 regex (Alertmanager anchors it)."""
    out, i, n = [], 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i + 1 + (glob[i + 1:i + 2] == "!")
            j += glob[j:j + 1] == "]"  # a ] first in the set is one of its characters
            end = glob.find("]", j)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = glob[i + 1:end].replace("\\", "\\\\")
                out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def check_glob(glob: str) -> None:
    """Raises SilenceError for a glob Alertmanager and this daemon would read differently
    (a POSIX class) or that matches nothing (a reversed range)."""
    if "[[:" in glob or "[:" in glob:
        raise SilenceError(400, "match: POSIX classes such as [[:alpha:]] are not globs here")
    try:
        re.compile(glob_regex(glob))
    except re.error as exc:
        raise SilenceError(400, f"match: not a glob ({exc})") from None


def glob_matcher(glob: str) -> Tuple[str, str, str]:
    return ("agent_id", "=~", glob_regex(glob)) if _GLOB_CHARS.search(glob) else \
        ("agent_id", "=", glob)


class Silences:
    """The daemon's silences, local or Alertmanager's. Thread-safe."""

    def __init__(self, cfg: AlertmanagerConfig, state_dir: str, instance: str,
                 wallclock: Callable[[], float] = time.time):
        self.cfg, self.instance = cfg, instance
        self.path = os.path.join(state_dir, "silences.json")
        self._wall = wallclock
        self._lock = threading.Lock()
        self._silences: List[Silence] = []
        # what silenced() looks at: silences by the agent_id they name exactly, the rest;
        # and its answers, until a silence starts or ends or the list changes
        self._by_agent: Dict[str, List[Silence]] = {}
        self._general: List[Silence] = []
        self._answers: Dict[Tuple[str, str], Optional[str]] = {}
        self._answers_until = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.component: Optional[Component] = None
        self.last_error = ""

    @property
    def mode(self) -> str:
        return "alertmanager" if self.cfg.urls else "local"

    def configure(self, cfg: AlertmanagerConfig) -> None:
        self.cfg = cfg
        with self._lock:
            self._answers_until = 0.0  # the labels matchers look at may have changed
        self._wake.set()

    def report(self) -> dict:
        now = self._wall()
        with self._lock:
            active = sum(s.active(now) for s in self._silences)
        return {"mode": self.mode, "active": active, "last_error": self.last_error}

    # -- start, stop ----------------------------------------------------------------------

    def start(self) -> None:
        """Read the local mutes; with Alertmanager, keep its silences fresh on hb-silences."""
        self._load_local()
        self.component = guard("hb-silences", self._loop,
                               stuck_after=REFRESH + 3 * self.cfg.timeout + 30)

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._wake.set()
        halt(self.component, timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            alive()
            if self.cfg.urls:
                try:
                    self._refresh()
                except (SEND_ERRORS + (SilenceError,)) as exc:
                    if not self.last_error:
                        log.warning("silences: cannot read Alertmanager's: %s", exc)
                    self.last_error = str(exc)[:300]
            self._wake.wait(REFRESH)
            self._wake.clear()

    # -- what is silenced -----------------------------------------------------------------

    def silenced(self, agent_id: str, state: str) -> Optional[str]:
        """The id of an active silence covering this agent's alert in `state` (for a state
        that is no alert, the alert it would raise first, `dead`), or None."""
        if not self._silences:
            return None
        state = state if state in FAILING_STATES else "dead"
        now = self._wall()
        with self._lock:
            if now >= self._answers_until or len(self._answers) > MAX_ANSWERS:
                self._answers = {}
                self._answers_until = min([s.starts if s.starts > now else s.ends
                                           for s in self._silences if s.ends > now] or [now + 60])
            elif (agent_id, state) in self._answers:
                return self._answers[(agent_id, state)]
            candidates = self._by_agent.get(agent_id, []) + self._general
            answers = self._answers
        labels = alert_labels(Alert(agent_id, state, now, ""), self.instance, self.cfg.labels)
        found = next((s.id for s in candidates if s.active(now) and s.matches(labels)), None)
        with self._lock:
            if answers is self._answers:  # not a stale answer for a list changed meanwhile
                answers[(agent_id, state)] = found
        return found

    def _set(self, silences: List[Silence]) -> None:
        """A new list of silences (under the lock)."""
        self._silences = silences
        self._by_agent, self._general = {}, []
        for silence in silences:
            exact = [v for n, op, v in silence.matchers if n == "agent_id" and op == "="]
            if exact:
                self._by_agent.setdefault(exact[0], []).append(silence)
            else:
                self._general.append(silence)
        self._answers, self._answers_until = {}, 0.0

    def annotate(self, records: List[dict]) -> List[dict]:
        """Each record's `silenced`: the id of the silence covering it, or null."""
        for rec in records:
            rec["silenced"] = self.silenced(rec["agent_id"], rec["state"]) \
                if self._silences else None
        return records

    # -- create, list, expire -------------------------------------------------------------

    def list(self, include_expired: bool = False) -> dict:
        """From the copy (Alertmanager's is read every REFRESH seconds and after each
        change made here): a hung Alertmanager must not hang the API."""
        now = self._wall()
        with self._lock:
            shown = [s.to_dict(now) for s in self._silences if include_expired or s.ends > now]
        return {"mode": self.mode, "silences": shown}

    def create(self, glob: str, duration: float, reason: str, by: str) -> dict:
        glob, reason = glob.strip(), reason.strip()
        if not glob or len(glob) > 256 or any(c.isspace() or not c.isprintable() for c in glob):
            raise SilenceError(400, "match: a glob of agent ids such as web-* (no spaces)")
        check_glob(glob)
        if not 0 < duration <= MAX_DURATION:
            raise SilenceError(400, "for: a duration from 1s to 366d, such as 30m")
        if not reason:
            raise SilenceError(400, "reason: say why (it is shown with the silence)")
        now = self._wall()
        silence = Silence("", [glob_matcher(glob)], now, now + duration, by[:200], reason[:1000])
        if self.cfg.urls:
            silence.id = self._am_create(silence)
            self._refresh_soon()
        else:
            with self._lock:
                live = [s for s in self._silences if s.ends > now]
                if len(live) >= MAX_SILENCES:
                    raise SilenceError(507, f"{MAX_SILENCES} silences already: expire some")
                silence.id = str(uuid.uuid4())
                self._save_local(live + [silence])
                self._set(live + [silence])
        log.info("silence %s: %s for %.0fs by %s: %s", silence.id, glob, duration, by, reason)
        return silence.to_dict(now)

    def expire(self, silence_id: str) -> dict:
        if not _UUID.fullmatch(silence_id or ""):  # both kinds of id are UUIDs
            raise SilenceError(404, f"no silence {silence_id!r}")
        now = self._wall()
        if self.cfg.urls:
            self._refresh()
            with self._lock:
                if not any(s.id == silence_id for s in self._silences):
                    raise SilenceError(404, f"no silence {silence_id} in Alertmanager, or it "
                                            "has expired")
            status, answer = self._am("DELETE", f"/api/v2/silence/{quote(silence_id)}")
            if status == 404 or (status == 500 and b"not found" in answer.lower()):
                raise SilenceError(404, f"no silence {silence_id!r} in Alertmanager")
            if status // 100 != 2:
                raise SilenceError(502, f"Alertmanager answered {status}: "
                                        f"{answer[:200].decode('utf-8', 'replace')}")
            self._refresh_soon()
        else:
            with self._lock:
                found = [s for s in self._silences if s.id == silence_id and s.ends > now]
                if not found:
                    raise SilenceError(404, f"no silence {silence_id!r}")
                self._save_local([s for s in self._silences if s.ends > now and s is not found[0]])
                self._set([s for s in self._silences if s.ends > now and s is not found[0]])
        log.info("silence %s expired", silence_id)
        return {"id": silence_id, "state": "expired"}

    # -- Alertmanager ---------------------------------------------------------------------

    def _am(self, method: str, path: str, doc=None) -> Tuple[int, bytes]:
        """The request to the first Alertmanager that answers (they are one cluster, which
        shares silences among its members)."""
        body = json.dumps(doc).encode() if doc is not None else None
        errors = []
        for url in self.cfg.urls:
            try:
                return request(method, url.rstrip("/") + path, body,
                               {"Content-Type": "application/json"}, self.cfg.timeout,
                               max_answer=MAX_ANSWER)
            except SEND_ERRORS as exc:
                errors.append(f"{url}: {exc}")
        raise SilenceError(502, "no Alertmanager answered: " + "; ".join(errors))

    def _am_create(self, silence: Silence) -> str:
        doc = {"matchers": [{"name": n, "value": v, "isRegex": "~" in op, "isEqual": "!" not in op}
                            for n, op, v in silence.matchers],
               "startsAt": format_rfc3339(silence.starts), "endsAt": format_rfc3339(silence.ends),
               "createdBy": silence.created_by, "comment": silence.comment}
        status, answer = self._am("POST", "/api/v2/silences", doc)
        try:
            silence_id = json.loads(answer)["silenceID"] if status == 200 else None
        except (ValueError, KeyError, TypeError, RecursionError):
            silence_id = None
        if not isinstance(silence_id, str):
            raise SilenceError(502, f"Alertmanager did not take the silence ({status}): "
                                    f"{answer[:200].decode('utf-8', 'replace')}")
        return silence_id

    def _refresh_soon(self) -> None:
        """After a change made in Alertmanager: read its silences now, or, if that fails
        (the change is made all the same), on hb-silences' next turn."""
        try:
            self._refresh()
        except (SEND_ERRORS + (SilenceError,)) as exc:
            log.warning("silences: cannot read Alertmanager's after a change: %s", exc)
            self._wake.set()

    def _refresh(self) -> None:
        """Alertmanager's silences that are not expired, as this daemon's copy."""
        status, answer = self._am("GET", "/api/v2/silences")
        if status != 200:
            raise SilenceError(502, f"Alertmanager answered {status} for its silences")
        try:
            items = json.loads(answer)
        except (ValueError, RecursionError):
            raise SilenceError(502, "Alertmanager's list of silences is not JSON "
                                    "(or larger than 16 MiB)") from None
        if not isinstance(items, list):
            raise SilenceError(502, "Alertmanager's list of silences is not a list")
        silences = [s for s in map(_from_am, items[:MAX_SILENCES]) if s is not None]
        with self._lock:
            self._set(silences)
        if self.last_error:
            log.info("silences: reading Alertmanager's again")
        self.last_error = ""

    # -- local ----------------------------------------------------------------------------

    def _load_local(self) -> None:
        """The local silences kept before a restart. A file that cannot be read as ours is
        moved aside (never overwritten by the next save) and the daemon starts without it."""
        if self.cfg.urls:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("silences: cannot open %s (%s): starting without local silences",
                      self.path, exc.strerror)
            return
        try:
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise ValueError("not a regular file")
                items = json.loads(f.read(MAX_LOCAL_FILE + 1) or b"[]")
                if not isinstance(items, list):
                    raise ValueError("not a list")
        except (OSError, ValueError, RecursionError) as exc:
            aside = f"{self.path}.bad-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
            try:
                os.replace(self.path, aside)
            except OSError:
                aside = "(could not move it aside)"
            log.error("silences: %s is unreadable (%s): moved to %s, starting without local "
                      "silences", self.path, str(exc)[:200], aside)
            return
        now = self._wall()
        silences = [s for s in map(_from_local, items) if s is not None and s.ends > now]
        with self._lock:
            self._set(silences[:MAX_SILENCES])
        if silences:
            log.info("silences: %d local silences from %s", len(silences), self.path)

    def _save_local(self, silences: List[Silence]) -> None:
        """Atomically (a crash leaves the old file or the new one). Under the lock."""
        rows = [{"id": s.id, "matchers": [list(m) for m in s.matchers], "starts": s.starts,
                 "ends": s.ends, "created_by": s.created_by, "comment": s.comment}
                for s in silences]
        data = json.dumps(rows, ensure_ascii=False).encode()
        tmp = self.path + ".tmp"
        try:
            if len(data) > MAX_LOCAL_FILE:
                raise OSError(f"the silences would take more than {MAX_LOCAL_FILE} bytes")
            try:
                os.unlink(tmp)  # whatever is there, a symlink included, is not followed
            except FileNotFoundError:
                pass
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise SilenceError(500, f"cannot keep the silence in {self.path}: {exc}") from None


def _from_am(item) -> Optional[Silence]:
    """One of Alertmanager's gettableSilences, or None if expired or not understood."""
    try:
        if item["status"]["state"] == "expired":
            return None
        if not all(type(m.get("isRegex", False)) is bool and type(m.get("isEqual", True)) is bool
                   for m in item["matchers"]):
            return None
        matchers = [(m["name"], _OPS[(m.get("isRegex", False), m.get("isEqual", True))],
                     m["value"]) for m in item["matchers"]]
        starts, ends = parse_rfc3339(item["startsAt"]), parse_rfc3339(item["endsAt"])
        if not matchers or not all(isinstance(v, str) for m in matchers for v in (m[0], m[2])) \
                or not _plausible(starts) or not _plausible(ends) \
                or not isinstance(item["id"], str):
            return None
        return Silence(item["id"], matchers, starts, ends, str(item.get("createdBy", "")),
                       str(item.get("comment", "")))
    except (KeyError, TypeError, AttributeError):
        return None


def _from_local(row) -> Optional[Silence]:
    try:
        matchers = [tuple(m) for m in row["matchers"]]
        if not matchers or not all(len(m) == 3 and all(isinstance(v, str) for v in m)
                                   and m[1] in _OPS.values() for m in matchers):
            return None
        starts, ends = float(row["starts"]), float(row["ends"])
        if not (isinstance(row["id"], str) and _plausible(starts) and _plausible(ends)):
            return None
        return Silence(row["id"], matchers, starts, ends, str(row.get("created_by", "")),
                       str(row.get("comment", "")))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _plausible(epoch) -> bool:
    """A time a silence may start or end at: from 1970 to the end of year 9999."""
    return isinstance(epoch, (int, float)) and 0 <= epoch <= 253402300799
