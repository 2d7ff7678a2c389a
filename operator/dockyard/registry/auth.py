"""htpasswd basic authentication with bcrypt, cached so a pull does not cost 100 ms per request.

Verification results, failures included, are cached by (user, sha256(password)) in a bounded
LRU, so repeating a wrong password costs no bcrypt either; the whole cache is dropped when
the file changes. As in distribution, only a password's first 72 bytes count: that is
all bcrypt ever hashed, so an entry made from a longer password accepts it. Kubernetes
updates a mounted Secret by swapping a symlink, so the file is polled (stat on the resolved
path: inode, size, mtime) instead of watched.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from threading import Lock

import bcrypt

CACHE_LIMIT = 4096
BCRYPT_MAX_PASSWORD = 72
"""bcrypt reads at most 72 bytes of a password; Go's bcrypt (distribution) ignores the rest, Python's raises."""


class Htpasswd:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._users: dict[str, bytes] = {}
        self._signature: tuple[int, int, int] | None = None
        self._cache: OrderedDict[tuple[str, bytes], bool] = OrderedDict()
        self._cache_lock = Lock()  # the event loop reads the cache while bcrypt threads fill it
        self.reload_if_changed()

    def reload_if_changed(self) -> bool:
        """Blocking: stat (and maybe read) the file. Returns True when it was reloaded."""
        try:
            st = os.stat(self.path)
            signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            signature = None
        if signature == self._signature and signature is not None:
            return False
        users: dict[str, bytes] = {}
        try:
            text = self.path.read_text()
        except OSError:
            text = ""  # an unreadable file admits nobody
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or ":" not in line:
                continue
            user, _, hashed = line.partition(":")
            if hashed.startswith(("$2y$", "$2b$", "$2a$")):
                users[user] = hashed.encode()
        self._users, self._signature, self._cache = users, signature, OrderedDict()
        return True

    @staticmethod
    def parse_header(header: str | None) -> tuple[str, str] | None:
        if not header or not header[:6].lower() == "basic ":
            return None
        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (user, password) if sep else None

    def cached(self, user: str, password: str) -> bool | None:
        key = (user, hashlib.sha256(password.encode()).digest())
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
            return hit

    def verify(self, user: str, password: str) -> bool:
        """Blocking (bcrypt): call from a worker thread."""
        hit = self.cached(user, password)
        if hit is not None:
            return hit
        key = (user, hashlib.sha256(password.encode()).digest())
        hashed = self._users.get(user)
        ok = False
        if hashed is not None:
            try:
                ok = bcrypt.checkpw(password.encode()[:BCRYPT_MAX_PASSWORD], hashed)
            except ValueError:
                ok = False
        with self._cache_lock:
            self._cache[key] = ok
            while len(self._cache) > CACHE_LIMIT:
                self._cache.popitem(last=False)
        return ok
