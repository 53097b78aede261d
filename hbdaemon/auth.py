"""Who may speak for which agent over HTTP: the bearer tokens and the ids each one covers."""

import fnmatch
import hmac
from typing import Optional, Sequence, Tuple

from hbdaemon.config import Config, read_token


class Grant:
    """What one presented token may do: speak for every id, or for those matching its globs."""

    __slots__ = ("name", "globs")

    def __init__(self, name: str, globs: Optional[Tuple[str, ...]] = None):
        self.name, self.globs = name, globs

    def covers(self, agent_id: str) -> bool:
        return self.globs is None or any(fnmatch.fnmatchcase(agent_id, g) for g in self.globs)


OPEN = Grant("no token configured")


class Credentials:
    """The configured tokens: http.auth_token_file (any id) and http.tokens (ids by glob).

    With none configured, every request is allowed (the listener is loopback by default).
    """

    def __init__(self, token: Optional[bytes] = None,
                 scoped: Sequence[Tuple[bytes, Tuple[str, ...], str]] = ()):
        self._tokens = []
        if token is not None:
            self._tokens.append((token, Grant("the http.auth_token_file token")))
        for secret, globs, path in scoped:
            self._tokens.append((secret, Grant(f"the token in {path}", tuple(globs))))

    @property
    def required(self) -> bool:
        return bool(self._tokens)

    def check(self, authorization: Optional[str]) -> Optional[Grant]:
        """The grant for an `Authorization: Bearer ...` header; None if missing or wrong."""
        if not self._tokens:
            return OPEN
        if not authorization or authorization[:7].lower() != "bearer ":
            return None
        given = authorization[7:].strip().encode("utf-8", "replace")
        found = None
        for secret, grant in self._tokens:  # compare with every token: no early exit to time
            if hmac.compare_digest(given, secret) and found is None:
                found = grant
        return found

    @classmethod
    def from_config(cls, cfg: Config) -> "Credentials":
        """Read every token file named in `cfg.http`. Raises ConfigError."""
        scoped = [(read_token(t.token_file, cfg.source, f"http.tokens[{i}].token_file"),
                   t.agents, t.token_file) for i, t in enumerate(cfg.http.tokens)]
        return cls(read_token(cfg.http.auth_token_file, cfg.source), scoped)
