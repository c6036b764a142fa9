"""Whether a key the twin assumed decides the outcome: the twin run again with that key at another value.

A client cannot see some of a server's keys well (how long its queue is, what it does with an
attempt that timed out); calibrate assumes them. `sensitivity` tries each such key the storm
exercised and reports the ones that flip the verdict or move a measure beyond its tolerance.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from loadtests.capacity import TABLES, value_text
from loadtests.twin import simulated_twin
from loadtests.verdict import divergence, format_measure
from sim.runner import Outcome
from sim.scenario import Scenario, Server

__all__ = ["sensitivity"]

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
            out.append({"key": key, "value": "present" if key in TABLES else value_text(server, key),
                        "source": source, "alternative": alt[1], "verdict_flips": flipped,
                        "changed": [m["name"] for m in changed],
                        "text": _decides_text(key, server, source, alt[1], changed, flipped, base_ok)})
    return out


def _decides_text(key: str, server: Server, source: str, alt: str, changed: list[dict], flipped: bool,
                  base_ok: bool) -> str:
    """"assumed key queue_limit = 20 (...) decides the outcome: with inf the twin refuses 0 instead of 3,886"."""
    value = "present" if key in TABLES else value_text(server, key)
    what = []      # here "measured" is the run with the other value, "simulated" the twin's first run
    for m in sorted(changed, key=lambda m: -(m.get("gap") or -1))[:2]:     # the outcome that moved most first
        if "measured_count" in m:
            what.append(f"{_VERBS[m['name']]} {m['measured_count']:,.0f} instead of {m['simulated_count']:,.0f}")
        else:
            what.append(f"has {m['name']} {format_measure(m['measured'], m['kind'])} instead of "
                        f"{format_measure(m['simulated'], m['kind'])}")
    flip = f"the verdict would {'diverge' if base_ok else 'agree'}" if flipped else ""
    said = f"the twin {', '.join(what)}" + (f"; {flip}" if flip else "") if what else flip
    return f"assumed key {key} = {value} ({source}) decides the outcome: with {alt} {said}"


_VERBS = {"share logins": "logs in", "share refusals": "refuses", "share timeouts": "times out",
          "share errors": "answers with an error"}
