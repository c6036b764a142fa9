"""How far a measured storm is from its simulated twin: measure by measure, each with a tolerance and
its reason, and the verdict (docs/model.md section 7: "the report puts measured and simulated curves side by side").

Pure: numpy over the two sides' time series and summaries; no simulation and no HTML here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sim.units import format_duration

__all__ = ["SHARE_TOLERANCE", "RECOVERY_TOLERANCE", "SPLIT_TOLERANCE", "RELATIVE_TOLERANCE", "PRESENCE_COUNT",
           "PRESENCE_SHARE", "LOGIN_TIME_SLACK_S", "quantile_error", "online_share", "smooth", "divergence",
           "counts_identity", "format_measure", "format_seconds", "format_pct", "format_num"]

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
      (login times: also 2 x the quantile's sampling error over the measured logins,
      `quantile_error`, or LOGIN_TIME_SLACK_S; first success: or one bin).
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
              for k in ("attempts", "successes", "rejected", "timeouts", "errors", "short_circuited", "suppressed",
                        "resumptions", "resumed")
              if k in measured_ts}
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

    logins = float(measured_summary.get("logins") or 0)
    specs = [
        ("attempts per episode", "count", _mean_of([measured_summary], "amplification"),
         [_mean_of([s], "amplification") for s in simulated_summaries], 0.0,
         "how hard the clients retry: the policy meeting the server's answers", 0.0),
        ("login time p50", "seconds", _mean_of([measured_summary], "login_time_s", "p50"),
         [_mean_of([s], "login_time_s", "p50") for s in simulated_summaries], LOGIN_TIME_SLACK_S,
         "what a typical device waits, from wanting to be online to being online", quantile_error(0.5, logins)),
        ("login time p95", "seconds", _mean_of([measured_summary], "login_time_s", "p95"),
         [_mean_of([s], "login_time_s", "p95") for s in simulated_summaries], LOGIN_TIME_SLACK_S,
         "the slow tail of the logins (p95: the quantile both summaries keep)", quantile_error(0.95, logins)),
        ("time to first success", "seconds", first_success(measured_ts), [first_success(ts) for ts in simulated],
         width, "how soon after the first event the server lets a device back in (to the bin)", 0.0),
    ]
    return [_relative(*spec) for spec in specs]


def quantile_error(q: float, n: float) -> float:
    """The relative standard error of the q-quantile of n login times, for an exponential tail:
    sqrt(q / (n (1 - q))) / ln(1 / (1 - q)). The measured quantile is one draw of it, so the
    comparison allows 2 of these; a lighter tail varies less (this errs on the wide side).

        >>> round(quantile_error(0.95, 120), 3), round(quantile_error(0.5, 120), 3)
        (0.133, 0.132)
    """
    if n <= 0:
        return 0.0
    return math.sqrt(q / (n * (1 - q))) / math.log(1 / (1 - q))


def _relative(name: str, kind: str, measured: float | None, sims: list[float | None], slack: float,
              reason: str, sampling: float = 0.0) -> dict[str, Any]:
    """Within max(RELATIVE_TOLERANCE, 2 x CV of the replications, 2 x `sampling`, the measured
    value's own relative standard error) of their mean, or within `slack`."""
    known = [v for v in sims if v is not None]
    simulated = float(np.mean(known)) if known and 2 * len(known) >= len(sims) else None
    cv = float(np.std(known, ddof=1) / abs(simulated)) if len(known) > 1 and simulated else 0.0
    tolerance = max(RELATIVE_TOLERANCE, 2 * cv, 2 * sampling)
    if measured is None or simulated is None:
        ok = measured is None and simulated is None
    else:
        ok = abs(measured - simulated) <= max(tolerance * abs(simulated), slack)
    reason += f"; tolerance max({RELATIVE_TOLERANCE:.0%}, 2 x the replications' CV {cv:.0%}" \
        + (f", 2 x the quantile's sampling error {sampling:.0%}" if sampling else "") + ")" \
        + (f" or {format_measure(slack, kind)}" if slack else "")
    return {**_pair(measured, simulated), "name": name, "kind": kind, "tolerance": tolerance, "slack": slack,
            "ok": bool(ok), "reason": reason}


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
    beyond = "; ".join(f"{m['name']} ({format_measure(m['measured'], m['kind'])} measured, "
                       f"{format_measure(m['simulated'], m['kind'])} simulated)" for m in measures if not m["ok"])
    return f"The load test and the simulation diverge: beyond tolerance: {beyond}."


def format_measure(x: float | None, kind: str) -> str:
    """A measure's value as the verdict and the report write it: seconds, a share in %, or a number."""
    if kind == "seconds":
        return format_seconds(x)
    if kind == "share":
        return format_pct(x)
    return format_num(x)


def format_seconds(x: float | None) -> str:
    """A duration; None (a recovery that never came) is "never"."""
    return "never" if x is None else format_duration(x)


def format_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def format_num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.4g}"
