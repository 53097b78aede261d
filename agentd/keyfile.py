"""Keys for signed UDP heartbeats: files of lines `KEYID SECRET [GLOB ...]`, read the same
way by the daemon (udp.keys_file, manager.key_file) and by agentd (heartbeat.key_file).

Shared by hbdaemon and agentd: agentd/keyfile.py is a byte-identical copy
(tests/unit/test_shared_copies.py keeps them equal; `make sync-copies` refreshes it).
"""

import fnmatch
import os
import re
import stat
from typing import List, NamedTuple, Tuple

MAX_FILE = 4 * 2**20
MIN_SECRET = 16
MAGIC = b"HB1"
_KEY_ID = re.compile(r"[A-Za-z0-9._:@-]{1,64}")


class KeysFileError(ValueError):
    """The keys file is unusable; the message names the file and line."""


class Key(NamedTuple):
    id: str
    secret: bytes
    globs: Tuple[str, ...] = ()  # the agent ids it speaks for; (): any

    def covers(self, agent_id: str) -> bool:
        return not self.globs or any(fnmatch.fnmatchcase(agent_id, g) for g in self.globs)


def read_keys(path: str) -> List[Key]:
    """Every key in `path`, in order. A regular file only (a FIFO is refused, not waited
    on), UTF-8 only, lines split at newlines only; `#` begins a comment at the start of a
    line or after a blank, so a secret may contain it. Raises KeysFileError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise KeysFileError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise KeysFileError(f"{path}: not a regular file")
        data = f.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise KeysFileError(f"{path}: larger than {MAX_FILE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KeysFileError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    keys: List[Key] = []
    for number, line in enumerate(text.lstrip("\ufeff").split("\n"), 1):
        words = re.split(r"[ \t]+#|^#", line.strip(" \t\r"), maxsplit=1)[0].split()
        if not words:
            continue
        if len(words) < 2 or not _KEY_ID.fullmatch(words[0]):
            raise KeysFileError(f"{path}, line {number}: expected KEYID SECRET [GLOB ...], "
                                "the id 1-64 characters of A-Z a-z 0-9 . _ : @ -")
        if len(words[1]) < MIN_SECRET:
            raise KeysFileError(f"{path}, line {number}: the secret of {words[0]} is shorter "
                                f"than {MIN_SECRET} characters")
        if any(key.id == words[0] for key in keys):
            raise KeysFileError(f"{path}, line {number}: key {words[0]} is given twice")
        keys.append(Key(words[0], words[1].encode(), tuple(words[2:])))
    if not keys:
        raise KeysFileError(f"{path}: no keys")
    return keys


def read_one_key(path: str) -> Key:
    """The one key of a sender's key file (a line KEYID SECRET). Raises KeysFileError."""
    keys = read_keys(path)
    if len(keys) != 1 or keys[0].globs:
        raise KeysFileError(f"{path}: expected one line KEYID SECRET")
    return keys[0]


def sign(key: Key, payload: bytes) -> bytes:
    """One datagram: `HB1 KEYID <hex HMAC-SHA256(SECRET, PAYLOAD)> PAYLOAD`."""
    import hashlib  # here: OpenSSL's libcrypto is ~3.7 MB of RSS a Unix or HTTP agent
    import hmac     # does not need (agentd imports this module for its UDP transport)
    mac = hmac.new(key.secret, payload, hashlib.sha256).hexdigest().encode()
    return b"%s %s %s %s" % (MAGIC, key.id.encode(), mac, payload)
