"""Overrides, one module for all: `--set KEY=VALUE`, `--variant NAME=KEY=VALUE,...`, `--grid KEY=...`.

Every command that changes a scenario from the command line reads its overrides here: values as
TOML (else as a bare word), lists split at commas outside brackets and quotes, policy lists with
"all". Errors are ValueErrors that name the option and show an example.

    >>> parse_variant("lifo=server.discipline=lifo,server.cancel_on_timeout=true")
    Variant(name='lifo', sets=('server.discipline=lifo', 'server.cancel_on_timeout=true'))
    >>> parse_grid("server.workers=200,400,800")
    ('server.workers', [200, 400, 800])
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sim.policies import policy_names
from sim.presets import PRESETS
from sim.suggest import did_you_mean
from sim.units import parse_duration

__all__ = ["apply_sets", "assign", "toml_value", "toml_text", "canonical", "split_outside_brackets", "Variant",
           "parse_variant", "policy_list", "parse_grid", "parse_grid_spec", "grid_size", "duration_or_none", "RESERVED",
           "MAX_GRID_VALUES"]

#: grid keys swept by other means (policies by --policies, seeds by --replications or --seed)
RESERVED = {"seed", "client.policy", "client.policy.name"}
#: values one --grid key may take: a range's N is refused above it before any value is made (a log
#: range spans decades with a few dozen; 10,000 points of one key is already a day of runs)
MAX_GRID_VALUES = 10_000


# --- values -------------------------------------------------------------------------------

def toml_value(text: str) -> Any:
    """A value as `--set` reads it: TOML, else the bare word as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def toml_text(value: Any) -> str:
    """TOML for a value (the inverse of `toml_value`): what goes after `--set KEY=`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if not isinstance(value, float) or math.isfinite(value) else \
            ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        keys = (k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k) for k in value)
        return "{" + ", ".join(f"{k} = {toml_text(v)}" for k, v in zip(keys, value.values())) + "}"
    raise ValueError(f"cannot write {value!r} as a TOML value")


def canonical(value: Any) -> str:
    """A value as JSON with sorted keys: what tells two grid values (and two points) apart."""
    return json.dumps(value, sort_keys=True, default=str)


def duration_or_none(text: str) -> float | None:
    """Seconds, when `text` reads as a duration ("90s", "5m", "2"); else None."""
    try:
        return parse_duration(text)
    except (TypeError, ValueError):
        return None


def split_outside_brackets(text: str) -> list[str]:
    """Split at commas outside brackets, braces, parentheses and quotes: `a=1,b={x=1,y=2}`."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


# --- --set ----------------------------------------------------------------------------------

def apply_sets(raw: dict[str, Any], sets: Sequence[str]) -> list[tuple[str, str]]:
    """Apply `key.path=value` overrides in place; the value is read as TOML, else as a string.

    Returns the problems as (key path, message); `sim.config` turns them into located errors.

    `events.N.key` addresses event N; N equal to the number of events appends a new one.
    """
    problems = []
    for item in sets:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(("--set", f"expected KEY=VALUE such as server.workers=800, got {item!r}"))
            continue
        try:
            assign(raw, key.split("."), toml_value(text.strip()))
        except LookupError as exc:
            problems.append((key, f"{exc.args[0]} (from --set)"))
    return problems


def assign(node: Any, parts: list[str], value: Any) -> None:
    """Set `value` at the dotted path `parts` of a raw scenario; LookupError says why it cannot."""
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        if not head.isdigit() or int(head) > len(node):
            have = {0: "there are no events (index 0 adds one)", 1: "there is 1 event (index 0, or 1 to add one)"}
            raise LookupError(f"no item {head!r}: " + have.get(
                len(node), f"there are {len(node)} events (indices 0-{len(node) - 1}, or {len(node)} to add one)"))
        index = int(head)
        if index == len(node):
            node.append({})
        if not rest:
            node[index] = value
            return
        assign(node[index], rest, value)
        return
    if not isinstance(node, dict):
        raise LookupError(f"{head!r} is inside a value that is not a table")
    if not rest:
        node[head] = value
        return
    child = node.setdefault(head, [] if head == "events" else {})
    if isinstance(child, str) and head == "policy":  # policy = "name" -> a table to set keys in
        child = node[head] = {"name": child}
    assign(child, rest, value)


# --- policies and variants ----------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """A name and the `--set` overrides that make the variant out of the scenario."""

    name: str
    sets: tuple[str, ...]


def policy_list(policies: Sequence[str]) -> list[str]:
    """Policy names from names, comma-separated lists, "all" (every formula) and "presets" (every SDK
    preset, `sim.presets`): each once, in the order given.

        >>> policy_list(["none,full-jitter", "none", "aws-sdk-standard"])
        ['none', 'full-jitter', 'aws-sdk-standard']
    """
    known = policy_names()
    names: list[str] = []
    for item in policies:
        for name in (n.strip() for n in item.split(",")):
            if not name:
                continue
            if name == "all":
                names.extend(known)
            elif name == "presets":
                names.extend(PRESETS)
            elif name in PRESETS:
                names.append(name)
            else:
                if name not in known:
                    raise ValueError(f"unknown policy {name!r}{did_you_mean(name, known + list(PRESETS))} "
                                     f"(formulas: {', '.join(known)}; presets: {', '.join(PRESETS)}; "
                                     "or all, presets)")
                names.append(name)
    return list(dict.fromkeys(names))  # each once, in the order given


def parse_variant(spec: str) -> Variant:
    """`"NAME=KEY=VALUE[,KEY=VALUE...]"`: the name up to the first `=`, then overrides split on
    commas outside quotes and brackets; `"as-is="` is the scenario unchanged.

        >>> parse_variant('slow=server.workers=2,client.connect_delay={dist="uniform",low=0,high=5}')
        Variant(name='slow', sets=('server.workers=2', 'client.connect_delay={dist="uniform",low=0,high=5}'))
    """
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"--variant: expected NAME=KEY=VALUE[,KEY=VALUE...] such as lifo=server.discipline=lifo, "
                         f"got {spec!r}")
    sets = tuple(s.strip() for s in split_outside_brackets(rest) if s.strip())
    for item in sets:
        key, eq, _ = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--variant {name}: expected KEY=VALUE such as server.workers=8, got {item!r}")
    return Variant(name, sets)


# --- grids --------------------------------------------------------------------------------

def parse_grid(spec: str, limit: int | None = MAX_GRID_VALUES) -> tuple[str, list]:
    """`KEY=V1,V2,...` (TOML values, as `--set` reads them), `KEY=LO:HI:N` (N values, linear,
    both ends included) or `KEY=LO:HI:N:log` (geometric). Durations become seconds.

        >>> parse_grid("server.workers=200,400,800")
        ('server.workers', [200, 400, 800])
        >>> parse_grid("events.0.fraction=0.01:1:3:log")
        ('events.0.fraction', [0.01, 0.1, 1.0])
        >>> parse_grid("events.0.duration=1m:3m:3")
        ('events.0.duration', [60.0, 120.0, 180.0])

    Integer ends give whole numbers (`workers=100:1000:4:log` -> 100, 215, 464, 1000). More than
    `limit` values is a ValueError (None: no limit, `--no-limits`).
    """
    key, values, _ = parse_grid_spec(spec, limit)
    return key, values


def parse_grid_spec(spec: str, limit: int | None = MAX_GRID_VALUES) -> tuple[str, list, bool]:
    """As `parse_grid`, and whether the values are durations (seconds)."""
    key, sep, text = spec.partition("=")
    key, text = key.strip(), text.strip()
    if not sep or not key or not text or " " in key:
        raise ValueError(f"--grid: expected KEY=V1,V2,... or KEY=LO:HI:N[:log], such as server.workers=200,400 "
                         f"or events.0.fraction=0.05:0.5:10, got {spec!r}")
    if key in RESERVED or key.startswith("client.policy.name"):
        raise ValueError(f"--grid {key}: not a grid key: use --policies for the policy and --replications "
                         f"(or --seed) for seeds")
    parts = text.split(":")
    if len(parts) in (3, 4) and re.fullmatch(r"\s*[+-]?\d+\s*", parts[2]) and "," not in text:
        _check_count(key, parts[2].strip(), limit)  # before numpy makes N values
        return (key, *_parse_range(key, parts))
    if len(parts) == 2 and "," not in text and all(part.strip() for part in parts):
        raise ValueError(f"--grid {key}: a range needs its number of values, LO:HI:N[:log], such as "
                         f"{text}:5; got {text!r}")
    items = [item.strip() for item in split_outside_brackets(text)]
    if any(not item for item in items):
        raise ValueError(f"--grid {key}: empty value in {text!r} (values are separated by commas)")
    _check_count(key, str(len(items)), limit)
    values = [toml_value(item) for item in items]
    if all(isinstance(v, str) and duration_or_none(v) is not None for v in values):
        return key, [duration_or_none(v) for v in values], True
    if len({canonical(v) for v in values}) != len(values):
        raise ValueError(f"--grid {key}: a value is given twice in {text!r}")
    return key, values, False


def grid_size(specs: Sequence[str], policies: Sequence[str] = (), replications: int = 1,
              limit: int | None = MAX_GRID_VALUES) -> int:
    """Runs a sweep plans: the product of the grids' value counts x policies (none given: the
    scenario's own, one) x replications, before any point is made.

        >>> grid_size(["server.workers=1:10:10", "events.0.fraction=0.1,0.2"], ["none,constant"], 3)
        120
    """
    points = math.prod(len(parse_grid_spec(spec, limit)[1]) for spec in specs)
    return points * max(1, len(policy_list(policies))) * replications


def _check_count(key: str, digits: str, limit: int | None) -> None:
    """N (as written) within `limit`; a wall of digits is over it without being read as a number."""
    if limit is None or digits.startswith("-"):  # N < 2 is refused by _parse_range
        return
    digits = digits.lstrip("+").lstrip("0") or "0"
    if len(digits) > len(str(limit)) or int(digits) > limit:
        shown = f"{int(digits):,}" if len(digits) <= 30 else f"a {len(digits)}-digit number of"
        raise ValueError(f"--grid {key}: {shown} values, more than the {limit:,} one key may take; use fewer "
                         f"(LO:HI:N:log spans decades with a few dozen), or pass --no-limits")


def _parse_range(key: str, parts: list[str]) -> tuple[list, bool]:
    scale = parts[3].strip().lower() if len(parts) == 4 else "lin"
    if scale not in ("lin", "linear", "log"):
        raise ValueError(f"--grid {key}: the 4th part of LO:HI:N:SCALE must be log or lin, got {parts[3]!r}")
    n = int(parts[2])
    if n < 2:
        raise ValueError(f"--grid {key}: a range needs N >= 2 values, got {n} (a single value: KEY=VALUE)")
    ends = [toml_value(p.strip()) for p in parts[:2]]
    whole = all(isinstance(e, int) and not isinstance(e, bool) for e in ends)
    durations = any(isinstance(e, str) for e in ends)
    lo, hi = (_range_end(key, e) for e in ends)
    if scale == "log" and not (lo > 0 and hi > 0):
        raise ValueError(f"--grid {key}: a log range needs LO and HI > 0, got {parts[0]}:{parts[1]}")
    raw = np.geomspace(lo, hi, n) if scale == "log" else np.linspace(lo, hi, n)
    if whole:
        return list(dict.fromkeys(int(round(v)) for v in raw)), False
    return [float(f"{v:.12g}") for v in raw], durations


def _range_end(key: str, end: Any) -> float:
    if isinstance(end, bool) or not isinstance(end, (int, float, str)):
        raise ValueError(f"--grid {key}: range ends must be numbers or durations, got {end!r}")
    value = duration_or_none(end) if isinstance(end, str) else float(end)
    if value is None or not math.isfinite(value):
        raise ValueError(f"--grid {key}: range ends must be finite numbers or durations like 30s, 5m; "
                         f"got {end!r}")
    return value
