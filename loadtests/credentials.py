"""Who each device logs in as, without a secret ever reaching a log, a report or an exception.

Credentials come from a CSV file (`username,password`, one row per device, wrapping round) or
from environment variables named in the `[target]` table (`password = "${LOGINSTORM_PASSWORD}"`).
Every secret is held in a `Secret`, whose `str` and `repr` are `***`; only the code that builds
a request calls `reveal()`.

    >>> s = Secret("hunter2")
    >>> f"{s}", repr(s), s.reveal()
    ('***', 'Secret(***)', 'hunter2')
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Secret", "Account", "CredentialsError", "resolve", "load_accounts", "Accounts"]

_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


class CredentialsError(ValueError):
    """A credentials file or variable is missing or malformed (the message never holds a secret)."""


class Secret:
    """A string that prints as `***`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return "***"

    def __repr__(self) -> str:
        return "Secret(***)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Account:
    """One device's login: a username (not secret) and a password (secret)."""

    username: str
    password: Secret


def resolve(value: str | None, what: str, environ: dict[str, str] | None = None) -> str | None:
    """`"${VAR}"` -> the variable's value; anything else as is. A missing variable is an error
    naming the variable and the key, never a value."""
    if value is None:
        return None
    env = os.environ if environ is None else environ
    match = _ENV_REF.match(value)
    if not match:
        return value
    name = match.group(1)
    if name not in env:
        raise CredentialsError(f"{what} refers to ${{{name}}}, which is not set in the environment")
    return env[name]


def load_accounts(path: str | Path) -> list[Account]:
    """Rows of a `username,password` CSV (a header row with those names is required)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"username", "password"} <= set(reader.fieldnames):
                raise CredentialsError(f"{path}: the first line must be the header 'username,password'")
            accounts = []
            for line, row in enumerate(reader, start=2):
                if not row.get("username") or row.get("password") is None:
                    raise CredentialsError(f"{path}:{line}: a row needs a username and a password")
                accounts.append(Account(row["username"], Secret(row["password"])))
    except FileNotFoundError:
        raise CredentialsError(f"{path}: no such credentials file") from None
    except UnicodeDecodeError:
        raise CredentialsError(f"{path}: not a UTF-8 text file") from None
    if not accounts:
        raise CredentialsError(f"{path}: no credential rows after the header")
    return accounts


class Accounts:
    """Device i logs in as row i mod len(rows); one shared account when there is no file."""

    def __init__(self, rows: list[Account]) -> None:
        if not rows:
            raise CredentialsError("no credentials")
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def for_device(self, device: int) -> Account:
        return self._rows[device % len(self._rows)]
