"""A load test beside its simulated twin: the same story through the reference engine, curve by curve.

A load test replays a (scaled) scenario at `--speed K` against a real server; its twin is the
same scenario compressed by K (`sim.config.compress_scenario`), on the real server's `[server]`
table (`--capacity`: a file from `loginstorm calibrate --out`, KEY=VALUE by hand, or the lab's
own table), simulated by `des` a few times. `divergence` says how far the measured storm is from
the simulated one, measure by measure, each with a tolerance and its reason (MODEL.md 7: "the
report puts measured and simulated curves side by side").

    >>> parse_capacity('workers=8,service_time={dist="lognormal",median="40ms",p99="300ms"}')
    {'workers': 8, 'service_time': Lognormal(median=0.04, p99=0.3)}
    >>> parse_capacity('rate_limit.rate=20,rate_limit.burst=11,rate_limit.retry_after=1s')
    {'rate_limit.rate': 20.0, 'rate_limit.burst': 11.0, 'rate_limit.retry_after': 1.0}

A real tier is not scaled: `--scale S` makes the devices the scenario's population x S, while
the figures of a calibration file or of `--capacity KEY=VALUE` are the real server's, as they
are. Only the keys the twin takes from the scenario carry the scenario's scaling.

No gevent and no Locust here: this runs after the load test, in the `loginstorm` process.
"""

from __future__ import annotations

import html
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel, ValidationError

from sim.config import compress_scenario
from sim.describe import dist_text, policy_text
from sim.overrides import split_outside_brackets, toml_value
from sim.plots import figure_images, versus_figure
from sim.report import figure_html, html_page, summary_rows, table_html, write_html
from sim.runner import Outcome, combine, finite_json, simulate
from sim.scenario import P2P, Overload, RateLimit, Scenario, Server
from sim.suggest import did_you_mean
from sim.units import format_duration

__all__ = ["SERVER_KEYS", "SHARE_TOLERANCE", "RECOVERY_TOLERANCE", "SPLIT_TOLERANCE", "RELATIVE_TOLERANCE",
           "Capacity", "parse_capacity", "read_capacity", "twin_server", "simulated_twin", "online_share", "smooth",
           "divergence", "counts_identity", "sensitivity", "server_table", "versus_curves", "versus_section",
           "write_versus_report"]

#: the [server] tables whose keys `--capacity` addresses dotted (rate_limit.rate=20)
_TABLES: dict[str, type[BaseModel]] = {"rate_limit": RateLimit, "overload": Overload, "p2p": P2P}
#: every key `--capacity` and a calibration file may set: the `[server]` keys, nested ones dotted
SERVER_KEYS = tuple(Server.model_fields) + tuple(f"{t}.{k}" for t, m in _TABLES.items() for k in m.model_fields)
#: placeholders for the required keys not given, so that only the given ones are judged
_PLACEHOLDERS = {"": {"workers": 1, "service_time": 1.0}, "rate_limit": {"rate": 1.0},
                 "overload": {"knee": 0.0, "per_request": 0.0},
                 "p2p": {"supernode_ratio": 1.0, "children": 1, "slots": 0}}
#: keys `--scale` multiplies when the twin takes them from the scenario (`sim.config.scale_scenario`)
_SCALED = ("workers", "queue_limit", "rate_limit.rate", "rate_limit.burst", "overload.knee", "overload.per_request")

#: online share of the devices the storm touched: absolute gap after smoothing
SHARE_TOLERANCE = 0.10
#: recovery p90: relative (or one bin)
RECOVERY_TOLERANCE = 0.20
#: the split of outcomes: shares of the attempts, absolute
SPLIT_TOLERANCE = 0.10
#: amplification, login-time quantiles, time to first success: relative, at least this (else 2 x the replications' CV)
RELATIVE_TOLERANCE = 0.20
#: an outcome seen on one side only is a different mechanism once the other side has this many (and 1 % of attempts)
PRESENCE_COUNT, PRESENCE_SHARE = 10, 0.01
#: login times: a real network's round trips and the client's own overhead, which the model leaves out
LOGIN_TIME_SLACK_S = 0.1


# --- --capacity: a calibration file, or [server] keys by hand ------------------------------------------

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
    return _validated_capacity(raw)


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


def _validated_capacity(values: dict[str, Any], where: str = "--capacity") -> dict[str, Any]:
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
    sources = {key: _file_source(provenance.get(key), path) for key in (*flat, *_TABLES) if key in flat or
               key in provenance}
    calibration = data.get("calibration", {})
    warnings = tuple(str(w) for w in calibration.get("warnings", ())) if isinstance(calibration, dict) else ()
    return Capacity("file", f"--capacity {path.name}", server=server, sources=sources, warnings=warnings)


def _flatten(table: dict[str, Any]) -> dict[str, Any]:
    """[server] keys, the nested tables' keys dotted (a distribution table stays one value)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in _TABLES and isinstance(value, dict):
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


def _merge(base: Server, overrides: dict[str, Any]) -> Server:
    """`base` with the dotted `overrides` in place; a nested table the base lacks is built from them."""
    update: dict[str, Any] = {}
    for key, value in _nest(overrides).items():
        if key in _TABLES and isinstance(value, dict):
            current = getattr(base, key)
            if current is None:
                update[key] = getattr(_validate({**_PLACEHOLDERS[""], key: value}, "--capacity"), key)
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
        server = scenario.server if capacity is None else _merge(scenario.server, capacity.overrides)
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
        if key in _TABLES and value is not None and key != "p2p":
            out += [f"{key}.{sub}" for sub in _TABLES[key].model_fields]
        else:
            out.append(key)
    return [k for k in out if k != "p2p" or server.p2p is not None]


def _value_text(server: Server, key: str) -> str:
    value = _get(server, key)
    if value is None:
        return "none"
    if key in ("service_time",):
        return dist_text(value)
    if key in ("retry_after", "reject_cost", "rate_limit.retry_after"):
        return format_duration(value)
    if isinstance(value, bool) or isinstance(value, str):
        return str(value).lower()
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def simulated_twin(scenario: Scenario, *, speed: float, capacity: dict[str, Any] | Server | None = None,
                   replications: int = 5, seed: int | None = None, until: float | None = None) -> list[Outcome]:
    """The load test's twin: `scenario` (already `--scale`d) at `--speed`, on `capacity`, run by `des`.

    `capacity`: dotted [server] keys (from `parse_capacity`) that replace the scenario's, as they
    are (not scaled: they describe the real server), or a whole `Server` table. Replication i
    runs with seed i of SeedSequence(seed).spawn(n) (seed: the scenario's), written in its
    summary so that one run can be repeated alone. `until` (real seconds) ends the twin where
    the load test ended, so that totals and recovery are those of the same stretch of the story.
    """
    if replications < 1:
        raise ValueError(f"replications must be >= 1, got {replications}")
    twin = compress_scenario(scenario, speed)
    if isinstance(capacity, Server):
        twin = twin.model_copy(update={"server": capacity})
    elif capacity:
        twin = twin.model_copy(update={"server": _merge(twin.server, _validated_capacity(capacity))})
    children = np.random.SeedSequence(twin.seed if seed is None else seed).spawn(replications)
    until = None if until is None or until >= twin.duration else until
    return [simulate(twin.model_copy(update={"seed": int(child.generate_state(1)[0])}), engine="des", until=until)
            for child in children]


# --- how far apart ----------------------------------------------------------------------------------

def online_share(ts: dict[str, np.ndarray], clients: float | None = None,
                 touched: float | None = None) -> np.ndarray:
    """Online clients per bin over the population: online / clients, or of the touched devices.

    `clients` is the (scaled) population, the same number on both sides, so a device the load
    test lost track of counts as not online rather than leaving the denominator; newcomers from
    `login_rate` can push the share above 1. Without `clients`, the bin's total of the four states.
    With `touched` (the devices the storm touched), 1 - (clients - online) / touched: the share of
    those devices online, the untouched ones (online throughout) left out of both terms.
    """
    online = np.asarray(ts["online"], dtype=float)
    if not clients:
        total = sum(np.asarray(ts[k], dtype=float) for k in ("online", "connecting", "offline", "gave_up"))
        return np.divide(online, total, out=np.full(len(online), np.nan), where=total > 0)
    if touched:
        return 1.0 - (clients - online) / touched
    return online / clients


def smooth(x: np.ndarray, bins: int = 3) -> np.ndarray:
    """Centred moving average over `bins` (odd) bins; fewer at the edges; NaN bins are left out.

        >>> smooth(np.array([0.0, 0.0, 3.0, 0.0]), 3).tolist()
        [0.0, 1.0, 1.0, 1.5]
    """
    if bins < 1 or bins % 2 == 0:
        raise ValueError(f"smooth_bins must be an odd number >= 1, got {bins}")
    x = np.asarray(x, dtype=float)
    known = np.isfinite(x)
    kernel, centre = np.ones(bins), slice(bins // 2, bins // 2 + len(x))   # "same", even if x is shorter
    total = np.convolve(np.where(known, x, 0.0), kernel)[centre]
    count = np.convolve(known.astype(float), kernel)[centre]
    return np.divide(total, count, out=np.full(len(x), np.nan), where=count > 0)


def _common_bins(measured: dict[str, np.ndarray], simulated: list[dict[str, np.ndarray]]) -> tuple[int, float]:
    """How many leading bins both sides have, and the bin width; the bins must start at the same times."""
    n = min(len(measured["t"]), *(len(s["t"]) for s in simulated))
    t = np.asarray(simulated[0]["t"], dtype=float)
    width = float(t[1] - t[0]) if len(t) > 1 else math.nan
    if n == 0 or not np.allclose(np.asarray(measured["t"], dtype=float)[:n], t[:n], atol=1e-6 * (width or 1)):
        raise ValueError(f"the measured and simulated bins differ (measured t = {list(measured['t'][:3])}..., "
                         f"simulated t = {list(t[:3])}...): build both with the compressed scenario's resolution")
    return n, width


def _pair(measured: Any, simulated: Any) -> dict[str, Any]:
    """Both values and (measured - simulated) / simulated."""
    rel = None
    if measured is not None and simulated is not None:
        rel = (measured - simulated) / simulated if simulated else (0.0 if measured == simulated else None)
    return {"measured": _plain(measured), "simulated": _plain(simulated), "relative_difference": _plain(rel)}


def _plain(x: Any) -> Any:
    return float(x) if isinstance(x, (int, float, np.number)) and not isinstance(x, bool) else x


#: the split of outcomes: (measure name, time-series column, what the report calls it)
_OUTCOMES = (("logins", "successes", "logins"), ("refusals", "rejected", "refused"),
             ("timeouts", "timeouts", "timed out"), ("errors", "errors", "errors"))


def divergence(measured_ts: dict[str, np.ndarray], simulated: list[dict[str, np.ndarray]],
               measured_summary: dict[str, Any], simulated_summaries: list[dict[str, Any]],
               smooth_bins: int = 3, *, start_s: float = 0.0, touched: float | None = None) -> dict[str, Any]:
    """Measured against the simulated replications, measure by measure, and the verdict.

    Compared, each with a tolerance and its reason (`measures`, in this order):
    - online share of the devices the storm touched (`online_share`), from the first bin that
      ends after `start_s` (the first event: before it the load test's devices are still
      starting up); largest gap after smoothing within SHARE_TOLERANCE;
    - recovery p90: within RECOVERY_TOLERANCE or one bin; never on both sides agrees only if
      the online-share curves agree;
    - the split of the attempts after `start_s` into logins, refusals, timeouts and errors:
      shares within SPLIT_TOLERANCE, and an outcome seen on one side only is a divergence once the
      other side has PRESENCE_COUNT of them (and PRESENCE_SHARE of its attempts);
    - attempts per episode, login time p50 and p95, time to first success after `start_s`:
      relative, within max(RELATIVE_TOLERANCE, 2 x the replications' coefficient of variation)
      (login times: or LOGIN_TIME_SLACK_S; first success: or one bin).
    The verdict agrees only if every measure is within its tolerance. `touched` defaults to the
    measured summary's `touched`, else the twin's episodes (at most the population).
    """
    n, width = _common_bins(measured_ts, simulated)
    first = int(np.searchsorted(np.asarray(measured_ts["t"][:n], dtype=float) + width, start_s, side="right"))
    first = min(first, n - 1)
    clients = measured_summary.get("clients") or _mean_of(simulated_summaries, "clients")
    if touched is None:
        touched = measured_summary.get("touched") or _mean_of(simulated_summaries, "episodes")
        touched = min(touched, clients) if touched and clients else None
    share = _share_measure(measured_ts, simulated, clients, touched, first, n, smooth_bins)
    recovery = _recovery_measure(measured_summary, simulated_summaries, width, share["ok"])
    split = _split_measures(measured_ts, simulated, first, n)
    rel = _relative_measures(measured_ts, simulated, measured_summary, simulated_summaries, first, n, width,
                             float(measured_ts["t"][first]) if n else 0.0, start_s)
    measures = [share, recovery, *split, *rel]
    ok = all(m["ok"] for m in measures)
    totals = {k: _pair(float(np.nansum(measured_ts[k])), float(np.mean([np.sum(ts[k]) for ts in simulated])))
              for k in ("attempts", "successes", "rejected", "timeouts", "errors") if k in measured_ts}
    return {
        "bin_s": width, "bins_compared": n, "from_s": float(measured_ts["t"][first]), "start_s": start_s,
        "replications": len(simulated), "clients": _plain(clients), "touched": _plain(touched),
        "online_share": share,
        "recovery_p90_s": recovery,
        "measures": measures,
        **{key: _pair(_mean_of([measured_summary], key), _mean_of(simulated_summaries, key))
           for key in ("amplification", "lowest_online_share")},
        "totals": totals,
        "counts": {"measured": counts_identity(measured_summary),
                   "simulated": counts_identity(_mean_summary(simulated_summaries))},
        "verdict": {"ok": ok, "beyond": [m["name"] for m in measures if not m["ok"]],
                    "text": _verdict_text(measures, ok)},
    }


def _share_measure(measured_ts, simulated, clients, touched, first: int, n: int, bins: int) -> dict[str, Any]:
    m_share = smooth(online_share(measured_ts, clients, touched)[first:n], bins)
    s_share = np.array([smooth(online_share(ts, clients, touched)[first:n], bins) for ts in simulated]).mean(axis=0)
    gaps = np.abs(m_share - s_share)
    worst = int(np.nanargmax(gaps)) if np.isfinite(gaps).any() else None
    if not clients:
        definition = "online / (online + connecting + offline + gave_up)"
    elif touched:
        definition = f"1 - (clients - online) / touched, with {touched:,.0f} of {clients:,.0f} devices touched"
    else:
        definition = "online / clients"
    at = None if worst is None else float(measured_ts["t"][first + worst])
    share = {
        "name": "online share of the touched devices", "kind": "share",
        "definition": definition, "smooth_bins": bins,
        "max_gap": None if worst is None else float(gaps[worst]), "max_gap_at_s": at,
        "measured_at_gap": None if worst is None else float(m_share[worst]),
        "simulated_at_gap": None if worst is None else float(s_share[worst]),
        "mean_gap": None if worst is None else float(np.nanmean(gaps)),
        "tolerance": SHARE_TOLERANCE,
        "reason": "the storm's shape on the devices it touched (the untouched ones would dilute the gap), "
                  "start-up excluded; 10 points is what replications of one model stay within",
    }
    share.update(measured=share["measured_at_gap"], simulated=share["simulated_at_gap"],
                 ok=share["max_gap"] is not None and share["max_gap"] <= SHARE_TOLERANCE)
    return share


def _recovery_measure(measured_summary, simulated_summaries, width: float, curves_agree: bool) -> dict[str, Any]:
    recovery = _pair(_mean_of([measured_summary], "recovery_s", "p90"),
                     _mean_of(simulated_summaries, "recovery_s", "p90"))
    m, s = recovery["measured"], recovery["simulated"]
    if m is None or s is None:
        ok = m is None and s is None and curves_agree
    else:
        ok = abs(m - s) <= max(RECOVERY_TOLERANCE * s, width)
    recovery.update(name="recovery p90", kind="seconds", tolerance=RECOVERY_TOLERANCE, ok=ok,
                    reason="when 90 % are back online for good; 'never' on both sides agrees only if the "
                           "online-share curves agree")
    return recovery


def _split_measures(measured_ts, simulated, first: int, n: int) -> list[dict[str, Any]]:
    """Shares of the attempts started after start-up that ended in each outcome."""
    def total(ts, k):
        return float(np.nansum(np.asarray(ts[k], dtype=float)[first:n])) if k in ts else 0.0

    m_attempts = total(measured_ts, "attempts")
    s_attempts = float(np.mean([total(ts, "attempts") for ts in simulated]))
    out = []
    for name, column, _said in _OUTCOMES:
        m_count = total(measured_ts, column)
        s_count = float(np.mean([total(ts, column) for ts in simulated]))
        m_share = m_count / m_attempts if m_attempts else None
        s_share = s_count / s_attempts if s_attempts else None
        gap = None if m_share is None or s_share is None else abs(m_share - s_share)
        only_one = _only_one_side(m_count, m_attempts, s_count, s_attempts)
        ok = (gap is not None and gap <= SPLIT_TOLERANCE and not only_one) or (m_attempts == s_attempts == 0)
        out.append({"name": f"share {name}", "kind": "share", "measured": m_share, "simulated": s_share,
                    "measured_count": m_count, "simulated_count": s_count, "gap": gap,
                    "tolerance": SPLIT_TOLERANCE, "ok": bool(ok), "only_one_side": only_one,
                    "reason": f"what the server did with the attempts; {100 * SPLIT_TOLERANCE:.0f} points, and "
                              f"{name} on one side only (>= {PRESENCE_COUNT} and >= {PRESENCE_SHARE:.0%} of the "
                              f"attempts) is another mechanism"})
    return out


def _only_one_side(m_count: float, m_attempts: float, s_count: float, s_attempts: float) -> bool:
    """An outcome one side has (PRESENCE_COUNT and PRESENCE_SHARE of its attempts) and the other never had."""
    def present(count, attempts):
        return count >= PRESENCE_COUNT and attempts > 0 and count / attempts >= PRESENCE_SHARE
    return (m_count == 0 and present(s_count, s_attempts)) or (s_count < 0.5 and present(m_count, m_attempts))


def _relative_measures(measured_ts, simulated, measured_summary, simulated_summaries, first: int, n: int,
                       width: float, from_s: float, start_s: float) -> list[dict[str, Any]]:
    def first_success(ts):
        ok = np.nonzero(np.asarray(ts["successes"], dtype=float)[first:n] > 0)[0]
        return None if not len(ok) else max(0.0, float(ts["t"][first + ok[0]]) - start_s)

    specs = [
        ("attempts per episode", "count", _mean_of([measured_summary], "amplification"),
         [_mean_of([s], "amplification") for s in simulated_summaries], 0.0,
         "how hard the clients retry: the policy meeting the server's answers"),
        ("login time p50", "seconds", _mean_of([measured_summary], "login_time_s", "p50"),
         [_mean_of([s], "login_time_s", "p50") for s in simulated_summaries], LOGIN_TIME_SLACK_S,
         "what a typical device waits, from wanting to be online to being online"),
        ("login time p95", "seconds", _mean_of([measured_summary], "login_time_s", "p95"),
         [_mean_of([s], "login_time_s", "p95") for s in simulated_summaries], LOGIN_TIME_SLACK_S,
         "the slow tail of the logins (p95: the quantile both summaries keep)"),
        ("time to first success", "seconds", first_success(measured_ts), [first_success(ts) for ts in simulated],
         width, "how soon after the first event the server lets a device back in (to the bin)"),
    ]
    return [_relative(*spec) for spec in specs]


def _relative(name: str, kind: str, measured: float | None, sims: list[float | None], slack: float,
              reason: str) -> dict[str, Any]:
    """Within max(RELATIVE_TOLERANCE, 2 x CV of the replications) of their mean, or within `slack`."""
    known = [v for v in sims if v is not None]
    simulated = float(np.mean(known)) if known and 2 * len(known) >= len(sims) else None
    cv = float(np.std(known, ddof=1) / abs(simulated)) if len(known) > 1 and simulated else 0.0
    tolerance = max(RELATIVE_TOLERANCE, 2 * cv)
    if measured is None or simulated is None:
        ok = measured is None and simulated is None
    else:
        ok = abs(measured - simulated) <= max(tolerance * abs(simulated), slack)
    return {**_pair(measured, simulated), "name": name, "kind": kind, "tolerance": tolerance, "slack": slack,
            "ok": bool(ok), "reason": reason + f"; tolerance max({RELATIVE_TOLERANCE:.0%}, 2 x the replications' "
                                               f"CV {cv:.0%})" + (f" or {_value(slack, kind)}" if slack else "")}


def counts_identity(summary: dict[str, Any]) -> dict[str, Any]:
    """attempts = successes + rejected + timeouts + errors + in_flight (in flight: still unanswered at the end)."""
    parts = {k: float(summary.get(k) or 0) for k in ("attempts", "successes", "rejected", "timeouts", "errors")}
    if "successes" not in summary:
        parts["successes"] = float(summary.get("logins") or 0)
    in_flight = summary.get("in_flight")
    if in_flight is None:
        in_flight = parts["attempts"] - parts["successes"] - parts["rejected"] - parts["timeouts"] - parts["errors"]
    return {**parts, "in_flight": round(float(in_flight), 9) + 0.0}     # + 0.0: no "-0"


def _mean_summary(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("attempts", "successes", "logins", "rejected", "timeouts", "errors")
    return {k: float(np.mean([s.get(k) or 0 for s in summaries])) for k in keys if any(k in s for s in summaries)}


def _mean_of(summaries: list[dict[str, Any]], *path: str) -> float | None:
    """The mean of a summary field over summaries; None where any lacks it (a recovery that never came)."""
    values = []
    for summary in summaries:
        for key in path:
            summary = summary.get(key) if isinstance(summary, dict) else None
        if summary is None:
            return None
        values.append(float(summary))
    return float(np.mean(values)) if values else None


def _verdict_text(measures: list[dict[str, Any]], ok: bool) -> str:
    if ok:
        return (f"The load test agrees with the simulation: all {len(measures)} measures within their tolerances "
                f"({', '.join(m['name'] for m in measures)}).")
    beyond = "; ".join(f"{m['name']} ({_value(m['measured'], m['kind'])} measured, "
                       f"{_value(m['simulated'], m['kind'])} simulated)" for m in measures if not m["ok"])
    return f"The load test and the simulation diverge: beyond tolerance: {beyond}."


def _value(x: float | None, kind: str) -> str:
    if kind == "seconds":
        return _seconds(x)
    if kind == "share":
        return _pct(x)
    return _num(x)


def _seconds(x: float | None) -> str:
    return "never" if x is None else format_duration(x)


# --- does an assumed key decide the outcome? ------------------------------------------------------------

#: keys a client cannot see well, and when they matter: "refusals" (the twin or the server refused),
#: "timeouts" (attempts timed out)
_SENSITIVE = (("queue_limit", "refusals"), ("retry_after", "refusals"), ("rate_limit", "refusals"),
              ("reject_cost", "refusals"), ("cancel_on_timeout", "timeouts"), ("discipline", "timeouts"),
              ("drop_expired", "timeouts"), ("overload", "timeouts"))
_UNCERTAIN = ("assumed", "the scenario", "default")


def _alternative(server: Server, key: str, measured_summary: dict[str, Any]) -> tuple[Any, str] | None:
    """(value, text) the key is tried at instead, or None where there is no sensible other value."""
    value = getattr(server, key)
    if key == "queue_limit":
        if math.isinf(value):
            peak = measured_summary.get("peak_in_flight")
            return (float(max(1, peak - server.workers)), f"{max(1, peak - server.workers):,.0f} (the measured "
                    f"peak in flight less the workers)") if peak else None
        return math.inf, "inf"
    if key in ("retry_after", "reject_cost"):
        return (0.0, "0s") if value > 0 else ((1.0, "1s") if key == "retry_after" else None)
    if key in ("rate_limit", "overload"):
        return (None, "none") if value is not None else None
    if key == "discipline":
        other = "lifo" if value == "fifo" else "fifo"
        return other, other
    return (not value, str(not value).lower())        # cancel_on_timeout, drop_expired


def sensitivity(scenario: Scenario, server: Server, sources: dict[str, tuple[str, str]], simulated: list[Outcome],
                measured_ts: dict[str, np.ndarray], measured_summary: dict[str, Any], div: dict[str, Any], *,
                speed: float, until: float | None, seed: int | None = None) -> list[dict[str, Any]]:
    """Whether a key the twin assumed (from calibrate's assumptions, the scenario or a default) decides
    the outcome: one more twin replication (the first one's seed) with the key at another value,
    for the keys the storm exercised (refusals: queue_limit, retry_after, rate_limit, reject_cost;
    timeouts: cancel_on_timeout, discipline, drop_expired, overload). A key decides when the
    verdict flips or a compared measure moves beyond its tolerance. Costs one des run per key tried.
    """
    active = {"refusals": any(o.summary.get("rejected") for o in simulated) or bool(measured_summary.get("rejected")),
              "timeouts": any(o.summary.get("timeouts") for o in simulated) or bool(measured_summary.get("timeouts"))}
    base = simulated[0]
    kw = {"start_s": div["start_s"], "touched": div["touched"]}
    base_ok = divergence(measured_ts, [base.timeseries], measured_summary, [base.summary], **kw)["verdict"]["ok"]
    out = []
    for key, when in _SENSITIVE:
        source = next((s for k, (s, _n) in sources.items() if k == key or k.startswith(key + ".")), "")
        alt = _alternative(server, key, measured_summary) if active[when] else None
        if alt is None or not source.startswith(_UNCERTAIN):
            continue
        other = simulated_twin(scenario, speed=speed, capacity=server.model_copy(update={key: alt[0]}),
                               replications=1, seed=seed, until=until)[0]
        moved = divergence(other.timeseries, [base.timeseries], other.summary, [base.summary], **kw)
        flipped = divergence(measured_ts, [other.timeseries], measured_summary, [other.summary],
                             **kw)["verdict"]["ok"] != base_ok
        changed = [m for m in moved["measures"] if not m["ok"]]
        if changed or flipped:
            out.append({"key": key, "value": "present" if key in _TABLES else _value_text(server, key),
                        "source": source, "alternative": alt[1], "verdict_flips": flipped,
                        "changed": [m["name"] for m in changed],
                        "text": _decides_text(key, server, source, alt[1], changed, flipped, base_ok)})
    return out


def _decides_text(key: str, server: Server, source: str, alt: str, changed: list[dict], flipped: bool,
                  base_ok: bool) -> str:
    """"assumed key queue_limit = 20 (...) decides the outcome: with inf the twin refuses 0 instead of 3,886"."""
    value = "present" if key in _TABLES else _value_text(server, key)
    what = []      # here "measured" is the run with the other value, "simulated" the twin's first run
    for m in sorted(changed, key=lambda m: -(m.get("gap") or -1))[:2]:     # the outcome that moved most first
        if "measured_count" in m:
            what.append(f"{_VERBS[m['name']]} {m['measured_count']:,.0f} instead of {m['simulated_count']:,.0f}")
        else:
            what.append(f"has {m['name']} {_value(m['measured'], m['kind'])} instead of "
                        f"{_value(m['simulated'], m['kind'])}")
    flip = f"the verdict would {'diverge' if base_ok else 'agree'}" if flipped else ""
    said = f"the twin {', '.join(what)}" + (f"; {flip}" if flip else "") if what else flip
    return f"assumed key {key} = {value} ({source}) decides the outcome: with {alt} {said}"


_VERBS = {"share logins": "logs in", "share refusals": "refuses", "share timeouts": "times out",
          "share errors": "answers with an error"}


# --- the curves and the report ---------------------------------------------------------------------

def versus_curves(ts: dict[str, np.ndarray], div: dict[str, Any]) -> dict[str, np.ndarray]:
    """What `sim.plots.versus_figure` draws of one run, over the `div["bins_compared"]` bins: "t",
    the online share in % (`online_share` of `div["clients"]`, smoothed), and attempts, logins and
    failed attempts (refused + timed out) per second."""
    n, width = div["bins_compared"], div["bin_s"]
    bins = div["online_share"]["smooth_bins"]
    return {
        "t": np.asarray(ts["t"][:n]),
        "online_share": 100 * smooth(online_share(ts, div["clients"])[:n], bins),
        "attempts": np.asarray(ts["attempts"][:n], dtype=float) / width,
        "logins": np.asarray(ts["successes"][:n], dtype=float) / width,
        "failed": (np.asarray(ts["rejected"][:n], dtype=float) + np.asarray(ts["timeouts"][:n])) / width,
    }


def _measure_row(m: dict[str, Any]) -> list[str]:
    kind = m["kind"]
    if m["name"].startswith("online share"):
        diff = _points(m["max_gap"]) + f" at {_seconds(m['max_gap_at_s'])}"
        tol = f"<= {_points(m['tolerance'])}"
    elif kind == "share":
        diff = "n/a" if m["gap"] is None else _points(m["gap"])
        diff += f" ({m['measured_count']:,.0f} vs {m['simulated_count']:,.0f})"
        tol = f"<= {_points(m['tolerance'])}" + ("; seen on one side only" if m["only_one_side"] else "")
    else:
        diff = _rel(m["relative_difference"])
        tol = f"<= {m['tolerance']:.0%}" + (" (or one bin)" if m["name"] == "recovery p90" else "") + \
            (f" (or {_value(m['slack'], kind)})" if m.get("slack") else "")
    return [m["name"], _value(m["measured"], kind), _value(m["simulated"], kind), diff, tol, _yes(m["ok"]),
            m["reason"]]


def _counts_rows(div: dict[str, Any]) -> list[list[str]]:
    rows = []
    for side, c in div["counts"].items():
        rows.append([side, *(f"{c[k]:,.1f}".removesuffix(".0") for k in
                             ("attempts", "successes", "rejected", "timeouts", "errors", "in_flight"))])
    return rows


def versus_section(div: dict[str, Any], figure: str, measured_summary: dict[str, Any],
                   simulated_summary: dict[str, Any], server_rows: Sequence[Sequence[str]] = (),
                   warnings: Sequence[str] = ()) -> str:
    """The HTML of the comparison (verdict, the measures with their tolerances and reasons, the
    counts, where the twin's server came from, `figure` as from `figure_html`, both summaries side
    by side), to embed in a load-test report."""
    verdict = div["verdict"]
    rows = [_measure_row(m) for m in div["measures"]]
    low = div["lowest_online_share"]
    extra = [["lowest online share (summary: online / wanting to be)", _pct(low["measured"]), _pct(low["simulated"]),
              _rel(low["relative_difference"])]]
    extra += [[f"total {k}", _num(v["measured"]), _num(v["simulated"]), _rel(v["relative_difference"])]
              for k, v in div["totals"].items()]
    simulated_rows = dict(summary_rows(simulated_summary))
    measured_rows = dict(summary_rows(measured_summary))
    fields = list(simulated_rows) + [k for k in measured_rows if k not in simulated_rows]
    side = [[f, measured_rows.get(f, "not measured"), simulated_rows.get(f, "n/a")] for f in fields]
    share = div["online_share"]
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return (f"<div class=\"verdict{'' if verdict['ok'] else ' bad'}\">{html.escape(verdict['text'])}</div>"
            + (f"<h2>Warnings</h2><ul class=\"note\">{warn}</ul>" if warn else "")
            + "<h2>Measured against simulated: the mechanism</h2>"
            + table_html(["measure", "measured", "simulated", "difference", "tolerance", "within", "why"], rows)
            + f"<p class=\"note\">Compared from {_seconds(div['from_s'])} (the first event at "
              f"{_seconds(div['start_s'])}; the bins before it hold the load test's start-up). Online share = "
              f"{html.escape(share['definition'])} (touched: devices that left online or started an episode "
              f"after the start), per bin of {format_duration(div['bin_s'])}, centred moving average over "
              f"{share['smooth_bins']} bins; simulated = mean of {div['replications']} replications.</p>"
            + "<h2>Counts</h2>"
            + table_html(["side", "attempts", "= logins", "+ refused", "+ timed out", "+ errors",
                          "+ in flight at the end"], _counts_rows(div))
            + table_html(["other figures", "measured", "simulated", "difference"], extra)
            + ("<h2>The twin's server</h2>" + table_html(["key", "value", "from", "note"], server_rows)
               if server_rows else "")
            + f"<h2>Curves</h2>{figure}"
            + "<h2>Summaries side by side</h2>"
            + table_html(["field", "measured", f"simulated (mean of {div['replications']})"], side))


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _points(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} points"


def _rel(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1%}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.4g}"


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def _replayed(scenario: Scenario, twin: Scenario, speed: float, runs: int) -> str:
    """What was replayed, in a sentence or three, for the report's lead paragraph."""
    scale = scenario.scale
    return (f"Scenario {scenario.name}" + (f" ({Path(scenario.source).name})" if scenario.source else "")
            + f" at --scale {scale:g} ({scenario.population.clients:,} clients) and --speed {speed:g}: "
            f"the story's {format_duration(scenario.duration)} in {format_duration(twin.duration)} of real time. "
            f"Unchanged by the speed: the client's timeout {dist_text(twin.client.timeout)}, its retry policy "
            f"{policy_text(twin.client.build_policy())}, and the server. --scale {scale:g} applies to the devices "
            f"(the scenario's population x {scale:g}) and to the server keys taken from the scenario; the figures "
            f"from calibrate or --capacity are the real server's, unscaled (see \"The twin's server\" for where "
            f"each key came from). Simulated: {runs} replications of the reference engine (des).")


def server_table(server: Server, sources: dict[str, tuple[str, str]]) -> list[dict[str, str]]:
    """The twin's [server] keys with their value, source and note (versus.json's `server`)."""
    return [{"key": key, "value": _value_text(server, key), "source": source, "note": note}
            for key, (source, note) in sources.items()]


def write_versus_report(out_dir: Path, scenario: Scenario, *, speed: float, measured_summary: dict[str, Any],
                        measured_ts: dict[str, np.ndarray], simulated: list[Outcome], title: str,
                        notes: Sequence[str] = (), capacity: Capacity | None = None,
                        check_assumptions: bool = True, until: float | None = None) -> list[Path]:
    """versus.json, versus.png and report.html in `out_dir`; returns the paths written.

    `scenario` is the one the load test ran (scaled, not compressed); `simulated` comes from
    `simulated_twin` (on `twin_server(scenario, capacity)`), whose compressed scenario gives the
    event marks on the load test's clock and the first event where start-up ends. With
    `check_assumptions`, `sensitivity` tries the assumed keys the storm exercised.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    twin = simulated[0].runs[0].scenario
    server, sources = twin_server(scenario, capacity)
    series = [o.timeseries for o in simulated]
    start = min((e.at for e in twin.events), default=0.0)
    div = divergence(measured_ts, series, measured_summary, [o.summary for o in simulated], start_s=start)
    decides = sensitivity(scenario, server, sources, simulated, measured_ts, measured_summary, div, speed=speed,
                          until=until) if check_assumptions else []
    table = server_table(twin.server, sources)
    warnings = [d["text"] for d in decides] + [f"calibrate: {w}" for w in (capacity.warnings if capacity else ())]
    json_path = out_dir / "versus.json"
    json_path.write_text(json.dumps(finite_json({**div, "server": table, "scale": scenario.scale,
                                                 "assumptions_that_decide": decides, "warnings": warnings}),
                                    indent=2) + "\n", encoding="utf-8")
    fig = versus_figure(versus_curves(measured_ts, div), [versus_curves(ts, div) for ts in series], twin, div, title)
    image, png = figure_images(fig, out_dir / "versus", svg=False)
    figure = figure_html(image, "Measured (solid) against simulated (dashed: mean of the replications; band: "
                                "their range) on the load test's clock; dashed vertical lines mark the scenario's "
                                "events.")
    lead = _replayed(scenario, twin, speed, len(simulated))
    twin_summary = combine([o.summary for o in simulated])
    twin_summary["seed"] = ", ".join(str(o.summary["seed"]) for o in simulated)  # not their mean
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    rows = [[r["key"], r["value"], r["source"], r["note"]] for r in table]
    body = (f"<h1>{html.escape(title)}</h1><p class=\"lead\">{html.escape(lead)}</p>"
            + (f"<ul class=\"note\">{items}</ul>" if items else "")
            + versus_section(div, figure, measured_summary, twin_summary, rows, warnings))
    page = write_html(out_dir / "report.html", html_page(title, body))
    return [json_path, *png, page]
