"""A load test beside its simulated twin: the same story through the reference engine, curve by curve.

A load test replays a (scaled) scenario at `--speed K` against a real server; its twin is the
same scenario compressed by K (`sim.config.compress_scenario`), on the real server's capacity
(`--capacity`), simulated by `des` a few times. `divergence` says how far the measured curves
are from the simulated ones and whether that is within the tolerances we accept (MODEL.md 7:
"the report puts measured and simulated curves side by side").

    >>> parse_capacity('workers=8,service_time={dist="lognormal",median="40ms",p99="300ms"}')
    {'workers': 8, 'service_time': Lognormal(median=0.04, p99=0.3)}

No gevent and no Locust here: this runs after the load test, in the `loginstorm` process.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydantic import ValidationError

from sim.config import compress_scenario
from sim.describe import dist_text, policy_text
from sim.overrides import apply_sets, split_outside_brackets
from sim.plots import figure_images, versus_figure
from sim.report import figure_html, html_page, summary_rows, table_html, write_html
from sim.runner import Outcome, combine, finite_json, simulate
from sim.scenario import Scenario, Server
from sim.suggest import did_you_mean
from sim.units import format_duration

__all__ = ["CAPACITY_KEYS", "SHARE_TOLERANCE", "RECOVERY_TOLERANCE", "parse_capacity", "simulated_twin",
           "online_share", "smooth", "divergence", "versus_curves", "versus_section", "write_versus_report"]

#: the [server] keys `--capacity` may set: what describes the real server under test
CAPACITY_KEYS = ("workers", "service_time", "queue_limit", "retry_after", "reject_cost", "discipline",
                 "drop_expired", "cancel_on_timeout")
#: the accepted gaps: online share (absolute, after smoothing) and recovery p90 (relative)
SHARE_TOLERANCE, RECOVERY_TOLERANCE = 0.10, 0.20


# --- the twin -------------------------------------------------------------------------------------

def _split(text: str) -> list[str]:
    return [part.strip() for part in split_outside_brackets(text) if part.strip()]


def parse_capacity(text: str) -> dict[str, Any]:
    """`--capacity workers=8,service_time=50ms[,queue_limit=..,retry_after=..]` as validated [server] values.

    Values are read as `--set` reads them (TOML, else a bare word such as `50ms`); a comma inside
    `{...}` or `[...]` belongs to the value. Raises ValueError naming the key at fault.
    """
    raw: dict[str, Any] = {}
    for item in _split(text):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--capacity: expected KEY=VALUE[,KEY=VALUE...] such as workers=8,service_time=50ms, "
                             f"got {item!r}")
        apply_sets(raw, [f"{key}={value.strip()}"])
    return _validated_capacity(raw)


def _validated_capacity(values: dict[str, Any]) -> dict[str, Any]:
    """The values checked by the scenario's own `Server` model, typed as a scenario holds them."""
    for key in values:
        if key not in CAPACITY_KEYS:
            raise ValueError(f"--capacity: unknown key {key!r}{did_you_mean(key, CAPACITY_KEYS)} "
                             f"(keys: {', '.join(CAPACITY_KEYS)})")
    try:  # the required keys not given get placeholders, so that only the given ones are judged
        server = Server.model_validate({"workers": 1, "service_time": 1.0, **values})
    except ValidationError as exc:
        raise ValueError("; ".join(f"--capacity {'.'.join(map(str, e['loc']))}: "
                                   f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())) from None
    if server.workers < 1:
        raise ValueError("--capacity workers: must be >= 1, got 0")
    return {key: getattr(server, key) for key in values}


def simulated_twin(scenario: Scenario, *, speed: float, capacity: dict[str, Any] | None = None,
                   replications: int = 5, seed: int | None = None, until: float | None = None) -> list[Outcome]:
    """The load test's twin: `scenario` (already `--scale`d) at `--speed`, on `capacity`, run by `des`.

    `capacity` (from `parse_capacity`) replaces those [server] keys as they are, not scaled: it
    describes the real server. Replication i runs with seed i of SeedSequence(seed).spawn(n)
    (seed: the scenario's), written in its summary so that one run can be repeated alone.
    `until` (real seconds) ends the twin where the load test ended, so that totals and recovery
    are those of the same stretch of the story.
    """
    if replications < 1:
        raise ValueError(f"replications must be >= 1, got {replications}")
    twin = compress_scenario(scenario, speed)
    if capacity:
        twin = twin.model_copy(update={"server": twin.server.model_copy(update=_validated_capacity(capacity))})
    children = np.random.SeedSequence(twin.seed if seed is None else seed).spawn(replications)
    until = None if until is None or until >= twin.duration else until
    return [simulate(twin.model_copy(update={"seed": int(child.generate_state(1)[0])}), engine="des", until=until)
            for child in children]


# --- how far apart ----------------------------------------------------------------------------------

def online_share(ts: dict[str, np.ndarray], clients: float | None = None) -> np.ndarray:
    """Online clients per bin over the population: online / clients.

    `clients` is the (scaled) population, the same number on both sides, so a device the load
    test lost track of counts as not online rather than leaving the denominator; newcomers from
    `login_rate` can push the share above 1. Without `clients`, the bin's total of the four states.
    """
    online = np.asarray(ts["online"], dtype=float)
    if not clients:
        total = sum(np.asarray(ts[k], dtype=float) for k in ("online", "connecting", "offline", "gave_up"))
        return np.divide(online, total, out=np.full(len(online), np.nan), where=total > 0)
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


def divergence(measured_ts: dict[str, np.ndarray], simulated: list[dict[str, np.ndarray]],
               measured_summary: dict[str, Any], simulated_summaries: list[dict[str, Any]],
               smooth_bins: int = 3) -> dict[str, Any]:
    """Measured against the mean of the simulated replications, and the verdict on the tolerances.

    Online share (`online_share`, smoothed by `smooth`): the largest absolute gap and its bin
    (start time), within SHARE_TOLERANCE. Recovery p90 (`recovery_s.p90` of the summaries, the
    simulated one being the mean of the replications): within RECOVERY_TOLERANCE of the
    simulated value, or within one bin where that is less; both null (never recovered) agrees.
    Amplification and the totals of attempts, successes, rejected and timeouts are reported.
    """
    n, width = _common_bins(measured_ts, simulated)
    clients = measured_summary.get("clients") or _mean_of(simulated_summaries, "clients")
    m_share = smooth(online_share(measured_ts, clients)[:n], smooth_bins)
    s_shares = np.array([smooth(online_share(ts, clients)[:n], smooth_bins) for ts in simulated])
    s_share = s_shares.mean(axis=0)
    gaps = np.abs(m_share - s_share)
    worst = int(np.nanargmax(gaps)) if np.isfinite(gaps).any() else None
    share = {
        "definition": "online / clients" if clients else "online / (online + connecting + offline + gave_up)",
        "smooth_bins": smooth_bins,
        "max_gap": None if worst is None else float(gaps[worst]),
        "max_gap_at_s": None if worst is None else float(measured_ts["t"][worst]),
        "measured_at_gap": None if worst is None else float(m_share[worst]),
        "simulated_at_gap": None if worst is None else float(s_share[worst]),
        "mean_gap": None if worst is None else float(np.nanmean(gaps)),
        "tolerance": SHARE_TOLERANCE,
    }
    share["ok"] = share["max_gap"] is not None and share["max_gap"] <= SHARE_TOLERANCE
    recovery = _pair(_mean_of([measured_summary], "recovery_s", "p90"),
                     _mean_of(simulated_summaries, "recovery_s", "p90"))
    recovery.update(tolerance=RECOVERY_TOLERANCE, ok=_recovery_ok(recovery["measured"], recovery["simulated"], width))
    totals = {k: _pair(float(np.nansum(measured_ts[k])), float(np.mean([np.sum(ts[k]) for ts in simulated])))
              for k in ("attempts", "successes", "rejected", "timeouts")}
    ok = share["ok"] and recovery["ok"]
    return {
        "bin_s": width, "bins_compared": n, "replications": len(simulated), "clients": _plain(clients),
        "online_share": share,
        "recovery_p90_s": recovery,
        **{key: _pair(_mean_of([measured_summary], key), _mean_of(simulated_summaries, key))
           for key in ("amplification", "lowest_online_share")},
        "totals": totals,
        "verdict": {"ok": ok, "text": _verdict_text(share, recovery, ok)},
    }


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


def _recovery_ok(measured: float | None, simulated: float | None, width: float) -> bool:
    if measured is None or simulated is None:
        return measured is None and simulated is None
    return abs(measured - simulated) <= max(RECOVERY_TOLERANCE * simulated, width)


def _verdict_text(share: dict[str, Any], recovery: dict[str, Any], ok: bool) -> str:
    gap = "n/a" if share["max_gap"] is None else \
        f"{100 * share['max_gap']:.1f} points at {format_duration(share['max_gap_at_s'])}"
    rel = recovery["relative_difference"]
    rec = f"{_seconds(recovery['measured'])} measured, {_seconds(recovery['simulated'])} simulated" + \
        (f" ({rel:+.0%})" if rel is not None else "")
    head = "The load test agrees with the simulation" if ok else "The load test and the simulation diverge"
    return (f"{head}: online share {'within' if share['ok'] else 'beyond'} {100 * SHARE_TOLERANCE:.0f} points "
            f"(largest gap {gap}); recovery p90 {'within' if recovery['ok'] else 'beyond'} "
            f"{RECOVERY_TOLERANCE:.0%} ({rec}).")


def _seconds(x: float | None) -> str:
    return "never" if x is None else format_duration(x)


# --- the curves and the report ---------------------------------------------------------------------

def versus_curves(ts: dict[str, np.ndarray], div: dict[str, Any]) -> dict[str, np.ndarray]:
    """What `sim.plots.versus_figure` draws of one run, over the `div["bins_compared"]` bins: "t",
    the online share in % (`online_share` of `div["clients"]`, smoothed as the verdict compares it),
    and attempts, logins and failed attempts (refused + timed out) per second."""
    n, width = div["bins_compared"], div["bin_s"]
    bins = div["online_share"]["smooth_bins"]
    return {
        "t": np.asarray(ts["t"][:n]),
        "online_share": 100 * smooth(online_share(ts, div["clients"])[:n], bins),
        "attempts": np.asarray(ts["attempts"][:n], dtype=float) / width,
        "logins": np.asarray(ts["successes"][:n], dtype=float) / width,
        "failed": (np.asarray(ts["rejected"][:n], dtype=float) + np.asarray(ts["timeouts"][:n])) / width,
    }


def versus_section(div: dict[str, Any], figure: str, measured_summary: dict[str, Any],
                   simulated_summary: dict[str, Any]) -> str:
    """The HTML of the comparison (verdict, divergence table, `figure` as from `figure_html`,
    both summaries side by side), to embed in a load-test report."""
    verdict = div["verdict"]
    share, rec = div["online_share"], div["recovery_p90_s"]
    rows = [["online share, largest gap (smoothed)", _pct(share["measured_at_gap"]), _pct(share["simulated_at_gap"]),
             _points(share["max_gap"]) + f" at {_seconds(share['max_gap_at_s'])}",
             f"<= {_points(SHARE_TOLERANCE)}",
             _yes(share["ok"])],
            ["recovery p90", _seconds(rec["measured"]), _seconds(rec["simulated"]), _rel(rec["relative_difference"]),
             f"<= {RECOVERY_TOLERANCE:.0%} (or one bin)", _yes(rec["ok"])]]
    low = div["lowest_online_share"]
    rows.append(["lowest online share (summary: online / wanting to be)", _pct(low["measured"]),
                 _pct(low["simulated"]), _rel(low["relative_difference"]), "", ""])
    for name, pair in [("amplification (attempts per episode)", div["amplification"]),
                       *((f"total {k}", v) for k, v in div["totals"].items())]:
        rows.append([name, _num(pair["measured"]), _num(pair["simulated"]), _rel(pair["relative_difference"]), "", ""])
    simulated_rows = dict(summary_rows(simulated_summary))
    measured_rows = dict(summary_rows(measured_summary))
    fields = list(simulated_rows) + [k for k in measured_rows if k not in simulated_rows]
    side = [[f, measured_rows.get(f, "not measured"), simulated_rows.get(f, "n/a")] for f in fields]
    return (f"<div class=\"verdict{'' if verdict['ok'] else ' bad'}\">{html.escape(verdict['text'])}</div>"
            f"<h2>Measured against simulated</h2>"
            + table_html(["measure", "measured", "simulated", "difference", "tolerance", "within"], rows)
            + f"<p class=\"note\">Online share = {html.escape(share['definition'])}, per bin of "
              f"{format_duration(div['bin_s'])}, centred moving average over {share['smooth_bins']} bins; "
              f"simulated = mean of {div['replications']} replications.</p>"
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
    srv = twin.server
    own = srv == scenario.server
    capacity = ("the scenario's [server] table" + (f" at --scale {scenario.scale:g}" if scenario.scale != 1 else "")
                if own else "the real server (given apart from the scenario; see the notes)")
    return (f"Scenario {scenario.name}" + (f" ({Path(scenario.source).name})" if scenario.source else "")
            + f" at --scale {scenario.scale:g} ({scenario.population.clients:,} clients) and --speed {speed:g}: "
            f"the story's {format_duration(scenario.duration)} in {format_duration(twin.duration)} of real time. "
            f"Unchanged by the speed: the client's timeout {dist_text(twin.client.timeout)}, its retry policy "
            f"{policy_text(twin.client.build_policy())}, and the server. Capacity from {capacity}: "
            f"{srv.workers:,} worker{'' if srv.workers == 1 else 's'}, service time {dist_text(srv.service_time)}, "
            f"queue limit "
            f"{'unlimited' if math.isinf(srv.queue_limit) else f'{srv.queue_limit:,.0f}'}, Retry-After "
            f"{format_duration(srv.retry_after)}. Simulated: {runs} replications of the reference engine (des).")


def write_versus_report(out_dir: Path, scenario: Scenario, *, speed: float, measured_summary: dict[str, Any],
                        measured_ts: dict[str, np.ndarray], simulated: list[Outcome], title: str,
                        notes: Sequence[str] = ()) -> list[Path]:
    """versus.json, versus.png and report.html in `out_dir`; returns the paths written.

    `scenario` is the one the load test ran (scaled, not compressed); `simulated` comes from
    `simulated_twin`, whose compressed scenario gives the event marks on the load test's clock.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    twin = simulated[0].runs[0].scenario
    series = [o.timeseries for o in simulated]
    div = divergence(measured_ts, series, measured_summary, [o.summary for o in simulated])
    json_path = out_dir / "versus.json"
    json_path.write_text(json.dumps(finite_json(div), indent=2) + "\n", encoding="utf-8")
    fig = versus_figure(versus_curves(measured_ts, div), [versus_curves(ts, div) for ts in series], twin, div, title)
    image, png = figure_images(fig, out_dir / "versus", svg=False)
    figure = figure_html(image, "Measured (solid) against simulated (dashed: mean of the replications; band: "
                                "their range) on the load test's clock; dashed vertical lines mark the scenario's "
                                "events.")
    lead = _replayed(scenario, twin, speed, len(simulated))
    twin_summary = combine([o.summary for o in simulated])
    twin_summary["seed"] = ", ".join(str(o.summary["seed"]) for o in simulated)  # not their mean
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    body = (f"<h1>{html.escape(title)}</h1><p class=\"lead\">{html.escape(lead)}</p>"
            + (f"<ul class=\"note\">{items}</ul>" if items else "")
            + versus_section(div, figure, measured_summary, twin_summary))
    page = write_html(out_dir / "report.html", html_page(title, body))
    return [json_path, *png, page]
