"""What kind of server `loginstorm calibrate` measured, from its steps and probes (pure functions).

The closed-loop fit (`loadtests.calibrate.fit`) gives workers W and service time S; the
open-loop probes (`loadtests.probe`) show what happens when more is offered than is served:

* **rate-limited**: refusals start while the accepted latency stays at its unloaded value and
  few attempts are in flight; the accepted rate then flattens at the limit's `rate`, and a
  burst after an idle pause passes `burst` attempts (nginx `burst=B nodelay` passes B + 1);
* **refuses**: refusals start once the latency has grown, i.e. once a queue has filled:
  queue_limit ~ attempts in flight at the first refusal minus W;
* **queues**: beyond capacity nothing is refused; the latency grows with the backlog until
  clients time out (queue_limit = inf).

    ident = identify(calibration, probes, burst, loopback=True, max_rps=None, cores=2)
    ident.server["queue_limit"], ident.provenance["queue_limit"].confidence, ident.warnings

Every `[server]` key gets a value and a `Provenance` (measured or assumed, a confidence, a
note); `server_toml` writes the calibration file that `loginstorm loadtest --capacity FILE` reads.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from loadtests.probe import BurstResult, ProbeResult
from sim.overrides import toml_text
from sim.units import format_duration

if TYPE_CHECKING:
    from loadtests.calibrate import Calibration, StepResult

__all__ = ["Provenance", "Identification", "unloaded_latency", "refuses", "latency_grew", "rate_limited",
           "sweep_stop", "burst_from", "overload_from", "identify", "server_toml", "SERVER_KEYS",
           "client_limited", "CLIENT_CPU_LIMIT"]

CLIENT_CPU_LIMIT = 0.8        # the load generator is saturated at this share of one core ...
ACHIEVED = 0.9                # ... or when it started less than this share of the offered attempts
BEYOND = 1.3                  # a probe at this multiple of the fitted capacity is beyond it
GROWTH = 3.0                  # latency "grew": late accepted attempts took this multiple of the unloaded time
OVERLOAD = 1.3                # the service time at saturation exceeds the fit's by this factor: overload
SERVER_KEYS = ("workers", "service_time", "queue_limit", "retry_after", "discipline", "drop_expired",
               "cancel_on_timeout", "reject_cost", "fault_rate", "fault_when", "retry_after_from", "retry_after_max")


@dataclass(frozen=True)
class Provenance:
    source: str          # "measured" | "assumed"
    confidence: str      # "high" | "medium" | "low"
    note: str


@dataclass(frozen=True)
class Identification:
    """The server table (TOML-ready values) and where each key came from."""

    server: dict
    provenance: dict[str, Provenance]
    behaviour: str                        # "queues" | "refuses" | "rate-limited"
    refusal_status: list[int]
    client_cpu_share: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"server": self.server, "provenance": {k: asdict(v) for k, v in self.provenance.items()},
                "behaviour": self.behaviour, "refusal_status": self.refusal_status,
                "client_cpu_share": self.client_cpu_share, "warnings": self.warnings}


# --- reading one probe ----------------------------------------------------------------------

def unloaded_latency(steps: list[StepResult]) -> float | None:
    """The mean time of a login with nothing else in flight: the first step with a login."""
    return next((s.mean_latency_s for s in steps if s.mean_latency_s is not None), None)


def refuses(p: ProbeResult) -> bool:
    """More than a stray refusal: at least 3 and 5 % of the attempts."""
    return p.refused_total >= max(3, 0.05 * p.attempts)


def latency_grew(p: ProbeResult, unloaded: float) -> bool:
    """Late attempts waited behind a backlog: timeouts, or GROWTH x the unloaded time (and 50 ms more)."""
    late = p.late_latency_s
    return p.timeouts > 0 or (late is not None and late > max(GROWTH * unloaded, unloaded + 0.05))


def rate_limited(p: ProbeResult, unloaded: float) -> bool:
    """Refusals from early in the probe while the accepted attempts kept their unloaded time."""
    return (refuses(p) and p.first_refusal_s is not None and p.first_refusal_s < p.seconds / 2
            and p.latency_p50_s is not None and p.latency_p50_s <= GROWTH * unloaded + 0.01
            and not latency_grew(p, unloaded))


def client_limited(p: ProbeResult) -> bool:
    return p.client_cpu_share >= CLIENT_CPU_LIMIT or p.achieved_rps < ACHIEVED * p.offered_rps


def sweep_stop(p: ProbeResult, capacity_rps: float, unloaded: float, limiter_suspected: bool) -> str | None:
    """Why the open-loop sweep ends after probe `p` (None: offer twice as much next)."""
    if client_limited(p):
        return "client"
    if refuses(p) and p.first_refusal_s is not None and p.first_refusal_s < p.seconds / 2:
        return "refused"
    if latency_grew(p, unloaded) and p.offered_rps >= BEYOND * capacity_rps:
        return "queued"
    if p.offered_capped:
        return "max_rps"
    if not limiter_suspected and p.offered_rps >= 4 * capacity_rps:
        return "served"
    return None


def burst_from(b: BurstResult | None, rate: float) -> float | None:
    """The bucket's size from a burst after an idle pause: what passed, less what refilled meanwhile;
    None when nothing was refused (the bucket is at least `b.sent`)."""
    if b is None or b.refused == 0:
        return None
    return max(1.0, b.accepted - math.floor(rate * b.spread_s))     # whole tokens refilled meanwhile


def overload_from(steps: list[StepResult], workers: int) -> tuple[dict | None, float]:
    """Thrashing beyond the knee: the service time at the last saturated step (W / X) against the one
    at the peak. Returns the `overload` table when the ratio reaches OVERLOAD (else None), and the ratio.

    The simulator's overload multiplies the service time by 1 + per_request x (in system - knee);
    in a closed-loop step the clients in the system are the concurrency c.
    """
    used = [s for s in steps if s.successes > 0 and not s.capped]
    if len(used) < 2:
        return None, 1.0
    peak = max(used, key=lambda s: s.throughput_rps)
    last = used[-1]
    if last.concurrency <= max(workers, peak.concurrency):
        return None, 1.0
    ratio = peak.throughput_rps / last.throughput_rps
    if ratio < OVERLOAD:
        return None, ratio
    knee = max(workers, peak.concurrency)
    return {"knee": knee, "per_request": round((ratio - 1) / (last.concurrency - knee), 4)}, ratio


# --- the whole picture ----------------------------------------------------------------------

def identify(fit: Calibration, probes: list[ProbeResult], burst: BurstResult | None = None, *, loopback: bool,
             max_rps: float | None, cores: int | None, closed_loop_refusals: bool = False) -> Identification:
    """Every [server] key with its provenance, the behaviour beyond capacity, and warnings."""
    steps, warnings = fit.steps, []
    unloaded = unloaded_latency(steps) or fit.service_time_s
    usable = [p for p in probes if not client_limited(p)]
    busy = [s for s in steps if s.client_cpu_share >= CLIENT_CPU_LIMIT]
    if busy:
        warnings.append(f"the client used {busy[0].client_cpu_share:.0%} of a core in the step with "
                        f"{busy[0].concurrency} clients: the throughput there may be the client's limit")
    for p in probes:
        if client_limited(p):
            warnings.append(f"the client, not the server, was the limit of the probe at {p.offered_rps:.0f}/s "
                            f"(CPU {p.client_cpu_share:.0%} of a core, started {p.achieved_rps:.0f}/s on time): "
                            "no server limit is read from it")
    limit = next((p for p in usable if rate_limited(p, unloaded)), None)
    refusing = next((p for p in usable if refuses(p) and p is not limit and limit is None), None)
    queued = next((p for p in usable if latency_grew(p, unloaded) and not refuses(p)
                   and p.offered_rps >= BEYOND * fit.capacity_rps), None)
    prov: dict[str, Provenance] = {}
    if loopback:
        warnings.append(f"the host is on this machine: the parallelism measured is shared with the client's CPU"
                        f"{f' ({cores} cores)' if cores else ''}")
    server = _workers(fit, unloaded, limit, prov, warnings, loopback, cores)
    if limit is not None:
        behaviour = "rate-limited"
        server["rate_limit"] = _rate_limit(limit, burst, prov, warnings)
        _queue_assumed(server, prov, "the rate limit held the load below the workers' capacity: beyond it not seen")
    elif refusing is not None:
        behaviour = "refuses"
        before = max(0, (refusing.in_flight_at_first_refusal or 1) - 1)     # in flight besides the refused one
        server["queue_limit"] = max(0, before - server["workers"])
        prov["queue_limit"] = Provenance("measured", "medium", f"the first refusal came with {before} logins in "
                                         f"flight, less {server['workers']} workers")
        seen = refusing.retry_after_s
        server["retry_after"] = format_duration(seen[0]) if seen else "0s"
        prov["retry_after"] = Provenance("measured", "high" if seen else "medium",
                                         f"Retry-After {', '.join(f'{v:g} s' for v in seen)} on the refusals" if seen
                                         else "the refusals carried no Retry-After")
    elif queued is not None:
        behaviour = "queues"
        server["queue_limit"] = "inf"
        prov["queue_limit"] = Provenance("measured", "high" if queued.max_in_flight >= 4 * server["workers"]
                                         else "medium",
                                         f"no refusal at {queued.offered_rps:.0f}/s offered with up to "
                                         f"{queued.max_in_flight} logins in flight: it queues (latency "
                                         f"{_ms(queued.early_latency_s)} -> {_ms(queued.late_latency_s)}, "
                                         f"{queued.timeouts} timeouts)")
        server["retry_after"] = "0s"
        prov["retry_after"] = Provenance("measured", "medium", "nothing refused, so no Retry-After")
    else:
        behaviour = "queues"
        _queue_assumed(server, prov, "no probe went beyond the capacity with the latency growing or refusals")
        warnings.append("what the server does beyond its capacity was not observed: queue_limit = inf assumed")
    if closed_loop_refusals and limit is None and refusing is None:
        warnings.append("the closed-loop steps were refused, but no probe found the limit: it may be above "
                        "what the client could offer" + (" or max_rps" if max_rps else ""))
    if max_rps and any(p.offered_capped for p in probes) and limit is None and refusing is None and queued is None:
        warnings.append(f"the target's max_rps ({max_rps:g}/s) capped the probes: a limit above it is hidden")
    _assumed_keys(server, prov, behaviour)
    if limit is None:
        top = max((p.offered_rps for p in usable), default=0.0)
        prov["rate_limit"] = (Provenance("measured", "medium", f"no rate limit: nothing refused as a rate limit up to "
                                                               f"{top:.0f}/s offered")
                              if top >= BEYOND * fit.capacity_rps else
                              Provenance("assumed", "low", "no rate limit seen, but no probe went beyond the "
                                                           "capacity: one above it would be hidden"))
    _overload(fit, server, prov, warnings)
    _faults(steps, server, prov)
    warnings.append("cancel_on_timeout, discipline and drop_expired are invisible to a client: assumed; adaptive "
                    "protections (a concurrency limit, CoDel, a Retry-After from the queue) are not probed")
    statuses = sorted({s for p in usable for s in p.refused} | set(burst.statuses if burst else {}))
    cpu = max([s.client_cpu_share for s in steps] + [p.client_cpu_share for p in probes], default=0.0)
    return Identification(server, prov, behaviour, statuses, round(cpu, 3), warnings)


def _workers(fit: Calibration, unloaded: float, limit: ProbeResult | None, prov: dict, warnings: list,
             loopback: bool, cores: int | None) -> dict:
    first = next((s for s in fit.steps if s.successes > 0), None)
    r = fit.rtt_s * (first.requests_per_attempt if first else 1.0)
    held_back = fit.service_time_s + r > 1.5 * unloaded      # the fit read the limiter, not the workers
    shared = (f"; the server shares this machine's {cores} cores with the client" if loopback and cores else "")
    if limit is not None and held_back:
        top = max(s.concurrency for s in fit.steps)
        service = max(unloaded - r, 0.1 * unloaded)
        prov["workers"] = Provenance("measured", "low", f"a lower bound: {top} clients in flight kept the unloaded "
                                     "latency; the rate limit caps the load before the workers saturate")
        prov["service_time"] = Provenance("measured", "medium", f"the unloaded time of a login ({_ms(unloaded)}) "
                                          f"less the round trip ({_ms(r)})")
        return {"workers": top, "service_time": format_duration(service)}
    logins = first.successes if first else 0
    if fit.saturated:
        prov["workers"] = Provenance("measured", "medium" if loopback else "high",
                                     f"throughput flat from {fit.workers + 1} concurrent logins on{shared}")
    else:
        prov["workers"] = Provenance("measured", "low", f"a lower bound: throughput still grew at "
                                     f"{max(s.concurrency for s in fit.steps)} clients")
        warnings.append(f"throughput never saturated: workers = {fit.workers} is a lower bound")
    prov["service_time"] = Provenance("measured", "high" if logins >= 20 else "medium",
                                      f"fit of X(c) = min(c / (S + r), W / S), {logins} logins at c = 1")
    return {"workers": fit.workers, "service_time": format_duration(fit.service_time_s)}


def _rate_limit(p: ProbeResult, burst: BurstResult | None, prov: dict, warnings: list) -> dict:
    rate = p.steady_accepted_rps
    from_burst = burst_from(burst, rate)
    from_sweep = max(1.0, p.accepted - rate * p.seconds)
    if from_burst is not None:
        size, conf, note = from_burst, "high", (f"{burst.accepted} of {burst.sent} attempts released at once after "
                                                f"{burst.pause_s:g} s idle passed (nginx burst=B nodelay passes B + 1)")
    elif burst is not None:
        size, conf, note = float(burst.sent), "low", f"a lower bound: all {burst.sent} attempts of a burst passed"
        warnings.append(f"the burst probe was not refused: the bucket holds at least {burst.sent}")
    else:
        size, conf, note = from_sweep, "medium", "from the probe's first logins beyond the steady rate"
    prov["rate_limit.rate"] = Provenance("measured", "high" if p.accepted >= 20 else "medium",
                                         f"{rate:.1f} accepted/s while {p.offered_rps:.0f}/s were offered "
                                         f"({p.steady_refused_share:.0%} refused), the accepted latency unloaded")
    prov["rate_limit.burst"] = Provenance("measured", conf, note)
    seen = p.retry_after_s
    prov["rate_limit.retry_after"] = Provenance("measured", "high" if seen else "medium",
                                                f"Retry-After {', '.join(f'{v:g} s' for v in seen)} on "
                                                f"{', '.join(map(str, sorted(p.refused)))}" if seen else
                                                f"no Retry-After on {', '.join(map(str, sorted(p.refused)))}")
    return {"rate": round(rate, 2), "burst": round(size, 1), "retry_after": format_duration(seen[0]) if seen else "0s"}


def _queue_assumed(server: dict, prov: dict, why: str) -> None:
    server["queue_limit"] = "inf"
    server["retry_after"] = "0s"
    prov["queue_limit"] = Provenance("assumed", "low", why)
    prov["retry_after"] = Provenance("assumed", "low", "no refusal by a full queue was seen")


def _assumed_keys(server: dict, prov: dict, behaviour: str) -> None:
    server.update(discipline="fifo", drop_expired=False, cancel_on_timeout=False, reject_cost="0s")
    prov["discipline"] = Provenance("assumed", "low", "a client cannot see the order of the queue; most servers "
                                    "(and a listen backlog) serve first come, first served")
    prov["drop_expired"] = Provenance("assumed", "low", "a client cannot see whether abandoned requests are "
                                      "skipped")
    prov["cancel_on_timeout"] = Provenance("assumed", "low", "a client cannot see it; a sync worker (gunicorn) "
                                           "finishes the requests its clients abandoned")
    prov["reject_cost"] = Provenance("assumed", "low", "the worker time of a refusal is not visible"
                                     + ("" if behaviour == "queues" else " (the refusals' answer time is in the JSON)"))
    # docs/model.md section 3.3: a Retry-After that follows the queue, an adaptive limit or CoDel are not
    # probed (they would need a storm, not steps); the twin models none of them
    server.update(retry_after_from="fixed", retry_after_max="32s")
    prov["retry_after_from"] = Provenance("assumed", "low", "whether the Retry-After follows the queue is not "
                                          "probed: the value seen is taken as fixed")
    prov["retry_after_max"] = Provenance("assumed", "low", "used only with retry_after_from = \"queue\"")
    for table, what in (("concurrency", "an adaptive concurrency limit"), ("codel", "CoDel queue timeouts"),
                        ("resume", "a cheaper session resumption")):
        prov[table] = Provenance("assumed", "low", f"none: {what} is not probed")


def _faults(steps: list, server: dict, prov: dict) -> None:
    """fault_rate from the lowest-load step: its errors (another 5xx, no answer) are not the load's."""
    first = min(steps, key=lambda st: st.concurrency, default=None)
    if first is None or not first.attempts:
        server["fault_rate"] = 0.0
        prov["fault_rate"] = Provenance("assumed", "low", "no step made an attempt: no failure share to read")
    elif first.errors:
        server["fault_rate"] = round(first.errors / first.attempts, 4)
        prov["fault_rate"] = Provenance("measured", "low", f"{first.errors} of {first.attempts} attempts at "
                                                           f"{first.concurrency} client(s) ended in an error: "
                                                           "a share that fails whatever the load")
    else:
        server["fault_rate"] = 0.0
        prov["fault_rate"] = Provenance("measured", "medium", f"no error in {first.attempts} attempts at "
                                                              f"{first.concurrency} client(s)")
    server["fault_when"] = "fast"
    prov["fault_when"] = Provenance("assumed", "low", "whether an error comes at once or after the work is "
                                                      "not measured")


def _overload(fit: Calibration, server: dict, prov: dict, warnings: list) -> None:
    table, ratio = overload_from(fit.steps, server["workers"])
    if table is not None:
        server["overload"] = table
        note = f"throughput fell {ratio:.2f}x beyond the knee: the service time grows with the logins in the system"
        prov["overload.knee"] = Provenance("measured", "medium", note)
        prov["overload.per_request"] = Provenance("measured", "medium", note)
    elif any(st.concurrency > server["workers"] and st.successes for st in fit.steps[1:]):
        prov["overload"] = Provenance("measured", "medium", f"no overload: throughput beyond the knee within "
                                                            f"{ratio:.2f}x of its peak")
    else:
        prov["overload"] = Provenance("assumed", "low", "no step went beyond the workers: overload not observable")
    if table is None and ratio >= 1.1:
        warnings.append(f"throughput fell {ratio:.2f}x beyond the knee, too little to fill overload")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds)


# --- the calibration file -------------------------------------------------------------------

def server_toml(ident: Identification, host: str, command: str, when: str) -> str:
    """The calibration file: [server], [server.rate_limit]/[server.overload], [provenance], [calibration]."""
    lines = [f"# {command} ({when})",
             "# every [server] key is measured or assumed: see [provenance]; warnings in [calibration]", "",
             "[server]"]
    nested = {k: v for k, v in ident.server.items() if isinstance(v, dict)}
    lines += [f"{k} = {toml_text(v)}" for k, v in ident.server.items() if k not in nested]
    for name, table in nested.items():
        lines += ["", f"[server.{name}]", *(f"{k} = {toml_text(v)}" for k, v in table.items())]
    lines += ["", "[provenance]"]
    for key, p in ident.provenance.items():
        lines.append(f"{json.dumps(key) if '.' in key else key} = {{ source = {toml_text(p.source)}, "
                     f"confidence = {toml_text(p.confidence)}, note = {toml_text(p.note)} }}")
    lines += ["", "[calibration]", f"host = {toml_text(host)}", f"behaviour = {toml_text(ident.behaviour)}",
              f"refusal_status = {toml_text(ident.refusal_status)}", f"client_cpu_share = {ident.client_cpu_share}",
              "warnings = [", *(f"    {toml_text(w)}," for w in ident.warnings), "]", ""]
    return "\n".join(lines)
