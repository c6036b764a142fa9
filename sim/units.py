"""Durations as scenario files write them: numbers of seconds or strings with a unit.

    >>> parse_duration("250ms"), parse_duration("1h30m"), parse_duration(90)
    (0.25, 5400.0, 90.0)
    >>> format_duration(5400.0)
    '1h30m'
"""

from __future__ import annotations

import math
import re

__all__ = ["UNITS", "parse_duration", "format_duration"]

#: seconds per unit, longest suffix first so that "ms" wins over "m"
UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like ``"250ms"``, ``"5m"``, ``"1h30m"`` or ``"inf"``.

    Raises ValueError (TypeError for a bool or a non-scalar) saying what was expected.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"expected a duration (seconds, or a string like \"250ms\", \"5m\", \"inf\"), "
                        f"got {type(value).__name__} {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        seconds = _parse_text(value)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"a duration must be >= 0, got {value!r}")
    return seconds


def _parse_text(text: str) -> float:
    s = text.strip().lower().replace("_", "").replace(" ", "")
    if s in ("inf", "infinity", "forever"):
        return math.inf
    try:
        return float(s)  # "90" or "1.5": plain seconds
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _PART.finditer(s):
        if match.start() != pos:
            break
        total += float(match.group(1)) * UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(s):
        raise ValueError(f"expected a duration like \"250ms\", \"90s\", \"5m\", \"2h\", \"1d\" or \"inf\", "
                         f"got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """The shortest readable string that parses back to about the same value: ``"1h30m"``, ``"250ms"``."""
    if math.isinf(seconds):
        return "inf"
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:.4g}ms"
    parts = []
    rest = seconds
    for unit in ("d", "h", "m"):
        size = UNITS[unit]
        count = math.floor(rest / size + 1e-9)
        if count:
            parts.append(f"{count}{unit}")
            rest -= count * size
    if rest > 1e-9 or not parts:
        parts.append(f"{rest:.4g}s")
    return "".join(parts)
