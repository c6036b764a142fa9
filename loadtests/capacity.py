"""`--capacity`: what the real server is, for the load test's simulated twin, and where each key came from.

`--capacity` is a file from `loginstorm calibrate --out` (a [server] table with its [provenance]),
[server] keys given by hand (KEY=VALUE, nested keys dotted), or the lab's own table; `twin_server`
makes of it the twin's [server] table and says, key by key, where the value came from.

    >>> parse_capacity('workers=8,service_time={dist="lognormal",median="40ms",p99="300ms"}')
    {'workers': 8, 'service_time': Lognormal(median=0.04, p99=0.3)}
    >>> parse_capacity('rate_limit.rate=20,rate_limit.burst=11,rate_limit.retry_after=1s')
    {'rate_limit.rate': 20.0, 'rate_limit.burst': 11.0, 'rate_limit.retry_after': 1.0}

A real tier is not scaled: the figures of a calibration file or of `--capacity KEY=VALUE` are the
real server's, as they are. Only the keys the twin takes from the scenario carry its `--scale`.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sim.describe import dist_text
from sim.overrides import split_outside_brackets, toml_value
from sim.protections import LIMIT_KEYS
from sim.scenario import P2P, CoDel, ConcurrencyLimit, Overload, RateLimit, Resume, Scenario, Server, table_of
from sim.suggest import did_you_mean
from sim.units import format_duration

__all__ = ["TABLES", "SERVER_KEYS", "Capacity", "parse_capacity", "read_capacity", "read_capacity_file",
           "validated_capacity", "merge", "twin_server", "value_text", "server_table"]

#: the [server] tables whose keys `--capacity` addresses dotted (rate_limit.rate=20)
TABLES: dict[str, type[BaseModel]] = {"rate_limit": RateLimit, "overload": Overload, "p2p": P2P,
                                     "concurrency": ConcurrencyLimit, "codel": CoDel, "resume": Resume}
#: every key `--capacity` and a calibration file may set: the `[server]` keys, nested ones dotted
SERVER_KEYS = tuple(Server.model_fields) + tuple(f"{t}.{k}" for t, m in TABLES.items() for k in m.model_fields)
#: placeholders for the required keys not given, so that only the given ones are judged
_PLACEHOLDERS = {"": {"workers": 1, "service_time": 1.0}, "rate_limit": {"rate": 1.0},
                 "overload": {"knee": 0.0, "per_request": 0.0},
                 "p2p": {"supernode_ratio": 1.0, "children": 1, "slots": 0},
                 "concurrency": {"kind": "aimd"}, "codel": {}, "resume": {"service_time": 1.0}}
#: keys `--scale` multiplies when the twin takes them from the scenario (`sim.config.scale_scenario`)
_SCALED = ("workers", "queue_limit", "rate_limit.rate", "rate_limit.burst", "overload.knee", "overload.per_request",
           "concurrency.initial", "concurrency.min", "concurrency.max", "concurrency.queue_size")
#: the tables `merge` validates whole (min <= initial <= max, target < interval)
_CHECKED = ("concurrency", "codel", "resume")
#: keys shown as durations, and as distributions
_DURATIONS = ("retry_after", "retry_after_max", "reject_cost", "rate_limit.retry_after", "concurrency.timeout",
              "codel.target", "codel.interval")
_DISTRIBUTIONS = ("service_time", "resume.service_time")


@dataclass(frozen=True)
class Capacity:
    """What `--capacity` said about the real server.

    `server`: a whole [server] table (a calibration file, the lab's table) that replaces the
    scenario's; `overrides`: dotted keys given by hand that replace those keys of the scenario's
    (scaled) table; `sources`: for each key given, where it came from (see `twin_server`).
    """

    origin: str                                    # "file", "hand" or "lab"
    label: str                                     # what to call it in a sentence
    server: Server | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, tuple[str, str]] = field(default_factory=dict)   # key -> (source, note)
    warnings: tuple[str, ...] = ()


def _split(text: str) -> list[str]:
    return [part.strip() for part in split_outside_brackets(text) if part.strip()]


def parse_capacity(text: str) -> dict[str, Any]:
    """`--capacity KEY=VALUE[,KEY=VALUE...]` as validated [server] values, nested keys dotted.

    Any [server] key (`SERVER_KEYS`): `workers=8,service_time=50ms,queue_limit=inf`,
    `rate_limit.rate=20,rate_limit.burst=11`, `overload.knee=4`. Values are read as `--set` reads
    them (TOML, else a bare word such as `50ms`); a comma inside `{...}` or `[...]` belongs to the
    value. Raises ValueError naming the key at fault.
    """
    raw: dict[str, Any] = {}
    for item in _split(text):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--capacity: expected KEY=VALUE[,KEY=VALUE...] such as workers=8,service_time=50ms, "
                             f"or a file from `loginstorm calibrate --out`, got {item!r}")
        _check_key(key, "--capacity")
        raw[key] = toml_value(value.strip())
    return validated_capacity(raw)


def _check_key(key: str, where: str) -> None:
    if key not in SERVER_KEYS:
        raise ValueError(f"{where}: unknown key {key!r}{did_you_mean(key, SERVER_KEYS)} "
                         f"(keys: {', '.join(SERVER_KEYS)})")


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"rate_limit.rate": 20} -> {"rate_limit": {"rate": 20}}; a whole table given inline stays."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        table, dot, sub = key.partition(".")
        if dot:
            out.setdefault(table, {})[sub] = value
        else:
            out[key] = value
    return out


def validated_capacity(values: dict[str, Any], where: str = "--capacity") -> dict[str, Any]:
    """The values checked by the scenario's own `Server` model, typed as a scenario holds them."""
    for key in values:
        _check_key(key, where)
    raw = {**_PLACEHOLDERS[""], **_nest(values)}
    for table, holders in _PLACEHOLDERS.items():
        if table and isinstance(raw.get(table), dict):
            raw[table] = {**holders, **raw[table]}
    server = _validate(raw, where)
    if "workers" in values and server.workers < 1:
        raise ValueError(f"{where} workers: must be >= 1, got {server.workers}")
    return {key: _get(server, key) for key in values}


def _validate(raw: dict[str, Any], where: str) -> Server:
    try:
        return Server.model_validate(raw)
    except ValidationError as exc:
        raise ValueError("; ".join(f"{where} {'.'.join(map(str, e['loc']))}: "
                                   f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())) from None


def _get(server: Server, key: str) -> Any:
    table, dot, sub = key.partition(".")
    value = getattr(server, table)
    return getattr(value, sub) if dot and value is not None else value


def read_capacity(text: str) -> Capacity:
    """`--capacity FILE` (a TOML file with a [server] table) or `--capacity KEY=VALUE,...`.

    A calibration file's [provenance] says, for each key, whether calibrate measured it (with a
    confidence) or assumed it; its [calibration] warnings travel to the report. Raises
    ValueError naming the file and the key at fault.
    """
    path = Path(text).expanduser()
    if "=" in text and not path.is_file():
        return Capacity("hand", f"--capacity {text}", overrides=parse_capacity(text),
                        sources={k: ("given by hand (--capacity)", "") for k in parse_capacity(text)})
    return read_capacity_file(path)


def read_capacity_file(path: Path) -> Capacity:
    """A calibration file (format: `loginstorm calibrate --out`) as the twin's whole [server] table."""
    where = f"--capacity {path}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{where}: no such file (give a file from `loginstorm calibrate --out`, "
                         f"or KEY=VALUE such as workers=8,service_time=50ms)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where}: not a TOML file ({exc})") from None
    table = data.get("server")
    if not isinstance(table, dict):
        raise ValueError(f"{where}: no [server] table (write one with `loginstorm calibrate --out FILE`)")
    flat = _flatten(table)
    for key in flat:
        _check_key(key, f"{where}: [server]")
    server = _validate(table, f"{where}: [server]")
    provenance = data.get("provenance", {})
    if not isinstance(provenance, dict):
        raise ValueError(f"{where}: [provenance] must be a table")
    sources = {key: _file_source(provenance.get(key), path) for key in (*flat, *TABLES) if key in flat or
               key in provenance}
    calibration = data.get("calibration", {})
    warnings = tuple(str(w) for w in calibration.get("warnings", ())) if isinstance(calibration, dict) else ()
    return Capacity("file", f"--capacity {path.name}", server=server, sources=sources, warnings=warnings)


def _flatten(table: dict[str, Any]) -> dict[str, Any]:
    """[server] keys, the nested tables' keys dotted (a distribution table stays one value)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in TABLES and isinstance(value, dict):
            out.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            out[key] = value
    return out


def _file_source(entry: Any, path: Path) -> tuple[str, str]:
    """(source, note) of one [provenance] entry."""
    if not isinstance(entry, dict):
        return f"given in {path.name} (no provenance)", ""
    note = str(entry.get("note", ""))
    confidence = entry.get("confidence")
    if entry.get("source") == "measured":
        return f"measured by calibrate (confidence {confidence or 'not given'})", note
    if entry.get("source") == "assumed":
        return "assumed by calibrate" + (f" (confidence {confidence})" if confidence else ""), note
    return f"given in {path.name}", note


def merge(base: Server, overrides: dict[str, Any]) -> Server:
    """`base` with the dotted `overrides` in place; a nested table the base lacks is built from them."""
    update: dict[str, Any] = {}
    for key, value in _nest(overrides).items():
        if key in TABLES and isinstance(value, dict):
            current = getattr(base, key)
            if current is None or (key == "concurrency" and value.get("kind", current.kind) != current.kind):
                update[key] = getattr(_validate({**_PLACEHOLDERS[""], key: value}, "--capacity"), key)
            elif key in _CHECKED:   # the protections' keys depend on each other: the whole table is checked
                update[key] = getattr(_validate({**_PLACEHOLDERS[""], key: {**table_of(current), **value}},
                                                "--capacity"), key)
            else:
                update[key] = current.model_copy(update=value)
        else:
            update[key] = value
    return base.model_copy(update=update)


def twin_server(scenario: Scenario, capacity: Capacity | None) -> tuple[Server, dict[str, tuple[str, str]]]:
    """The twin's [server] table, and for each of its keys (dotted) where it came from and a note.

    A calibration file's or the lab's table is the twin's table (keys it lacks: the model's
    defaults); keys given by hand replace those of the scenario's table, which `--scale` has
    scaled (`scenario` is the load test's, already scaled). A real server is never scaled.
    """
    scale = scenario.scale
    own = "the scenario" if scale == 1 else f"the scenario (scaled by --scale {scale:g})"

    def from_scenario(key: str) -> str:
        return own if key in _SCALED or scale == 1 else "the scenario (not a count: --scale leaves it)"

    if capacity is None or capacity.origin == "hand":
        server = scenario.server if capacity is None else merge(scenario.server, capacity.overrides)
        given = {} if capacity is None else capacity.sources
        return server, {key: given.get(key) or given.get(key.partition(".")[0]) or (from_scenario(key), "")
                        for key in _keys(server)}
    server = capacity.server
    if capacity.origin == "lab":
        return server, {key: ("the lab's own table", "GET /server.json") for key in _keys(server)}
    return server, {key: capacity.sources.get(key) or ("default", "not in the file: the model's default")
                    for key in _keys(server)}


def _keys(server: Server) -> list[str]:
    """The twin's keys as the report lists them: a nested table absent is one row, present its keys."""
    out = []
    for key in Server.model_fields:
        value = getattr(server, key)
        if key == "concurrency" and value is not None:     # its kind's keys only
            out += [f"{key}.{sub}" for sub in ("kind", *LIMIT_KEYS[value.kind])]
        elif key in TABLES and value is not None and key != "p2p":
            out += [f"{key}.{sub}" for sub in TABLES[key].model_fields]
        else:
            out.append(key)
    return [k for k in out if k != "p2p" or server.p2p is not None]


def value_text(server: Server, key: str) -> str:
    """One key (dotted) of `server` as the report writes it: a duration, a distribution, inf, none."""
    value = _get(server, key)
    if value is None:
        return "none"
    if key in _DISTRIBUTIONS:
        return dist_text(value)
    if key in _DURATIONS:
        return format_duration(value)
    if isinstance(value, bool) or isinstance(value, str):
        return str(value).lower()
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def server_table(server: Server, sources: dict[str, tuple[str, str]]) -> list[dict[str, str]]:
    """The twin's [server] keys with their value, source and note (versus.json's `server`)."""
    return [{"key": key, "value": value_text(server, key), "source": source, "note": note}
            for key, (source, note) in sources.items()]
