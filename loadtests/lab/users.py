"""The lab's accounts: salted PBKDF2-SHA256 hashes in memory, CSV files of `username,password`.

A password is hashed once when the lab starts and never kept; a check costs one PBKDF2 run of
the stored iteration count, also for an unknown name (a dummy hash), so a miss costs what a hit
costs and names cannot be told apart by timing.

    >>> store = UserStore.from_pairs([("alice", "s3cret")], iterations=1000)
    >>> store.verify("alice", "s3cret"), store.verify("alice", "guess"), store.verify("bob", "s3cret")
    (True, False, False)

No message, `repr` or exception here ever holds a password.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import os
import secrets
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PasswordHash", "UserStore", "UsersFileError", "generate_users", "write_credentials",
           "read_credentials"]

SALT_BYTES = 16


class UsersFileError(ValueError):
    """A credentials file the lab cannot use (the message names the file and line, never a password)."""


@dataclass(frozen=True)
class PasswordHash:
    """PBKDF2-HMAC-SHA256 of a password with its own random salt."""

    salt: bytes = field(repr=False)
    iterations: int
    digest: bytes = field(repr=False)

    @classmethod
    def of(cls, password: str, iterations: int) -> PasswordHash:
        salt = secrets.token_bytes(SALT_BYTES)
        return cls(salt, iterations, _pbkdf2(password, salt, iterations))

    def matches(self, password: str) -> bool:
        return hmac.compare_digest(_pbkdf2(password, self.salt, self.iterations), self.digest)


def _pbkdf2(password: str, salt: bytes, iterations: int) -> bytes:
    # hashlib releases the GIL while it hashes: checks in a thread pool run in parallel
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8", "surrogatepass"), salt, iterations)


class UserStore:
    """name -> PasswordHash; `verify` does one PBKDF2 run whether or not the name exists."""

    def __init__(self, hashes: dict[str, PasswordHash], iterations: int):
        self._hashes = hashes
        self._dummy = PasswordHash.of(secrets.token_urlsafe(16), iterations)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]], iterations: int, threads: int | None = None) -> UserStore:
        """Hash every password (in parallel threads: at a high iteration count this is the slow part)."""
        pairs = list(pairs)
        with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
            hashes = pool.map(lambda pair: PasswordHash.of(pair[1], iterations), pairs)
            return cls({name: h for (name, _), h in zip(pairs, hashes)}, iterations)

    def verify(self, username: str, password: str) -> bool:
        stored = self._hashes.get(username)
        ok = (stored or self._dummy).matches(password)
        return ok and stored is not None

    def __contains__(self, username: object) -> bool:
        return username in self._hashes

    def __len__(self) -> int:
        return len(self._hashes)

    def __repr__(self) -> str:
        return f"UserStore({len(self)} users)"


def generate_users(n: int) -> list[tuple[str, str]]:
    """`user00001` ... with random passwords (`secrets.token_urlsafe`)."""
    width = max(5, len(str(n)))
    return [(f"user{i:0{width}d}", secrets.token_urlsafe(12)) for i in range(1, n + 1)]


def write_credentials(path: Path, users: Iterable[tuple[str, str]]) -> int:
    """Write `username,password` rows to a file only its owner can read (mode 0600); returns the count."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["username", "password"])
    count = 0
    for row in users:
        writer.writerow(row)
        count += 1
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file was already there with a wider mode
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        handle.write(buffer.getvalue())
    return count


def read_credentials(path: Path) -> list[tuple[str, str]]:
    """The (username, password) rows of a CSV file with a `username,password` header."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:   # -sig: a BOM from a spreadsheet
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise UsersFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsersFileError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}") from None
    if not rows or [c.strip() for c in rows[0][:2]] != ["username", "password"]:
        raise UsersFileError(f"{path}: line 1: expected the header username,password")
    users: dict[str, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < 2 or not row[0]:
            raise UsersFileError(f"{path}: line {line}: expected username,password")
        if row[0] in users:
            raise UsersFileError(f"{path}: line {line}: duplicate username {row[0]!r}")
        users[row[0]] = row[1]
    if not users:
        raise UsersFileError(f"{path}: no users")
    return list(users.items())
