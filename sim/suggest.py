"""One "did you mean" for every message that rejects a name (keys, policies, distributions, options).

    >>> did_you_mean("workrs", ["workers", "service_time"])
    "; did you mean 'workers'?"
    >>> did_you_mean("Full-Jitter", ["none", "full-jitter"])
    "; did you mean 'full-jitter'?"
    >>> did_you_mean("zzz", ["workers"])
    ''
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["did_you_mean"]


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """"; did you mean 'x'?" for the nearest choice (ignoring case), or nothing (also for a non-string)."""
    if not isinstance(word, str):
        return ""
    by_lower = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1)
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""
