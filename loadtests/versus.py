"""A load test beside its simulated twin: the curves and the report that sets them side by side.

`write_versus_report` judges the measured storm against the twin's runs (`loadtests.twin`) with
`loadtests.verdict`, tries the assumed keys (`loadtests.sensitivity`), and writes versus.json,
versus.png and report.html; the twin's server and where each key came from: `loadtests.capacity`.

No gevent and no Locust here: this runs after the load test, in the `loginstorm` process.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from loadtests.capacity import Capacity, server_table, twin_server
from loadtests.sensitivity import sensitivity
from loadtests.verdict import divergence, format_measure, format_num, format_pct, format_seconds, online_share, smooth
from sim.describe import client_text, dist_text
from sim.plots import figure_images, versus_figure
from sim.report import figure_html, html_page, summary_rows, table_html, write_html
from sim.runner import Outcome, combine, finite_json
from sim.scenario import Scenario
from sim.units import format_duration

__all__ = ["versus_curves", "versus_section", "write_versus_report"]


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
        diff = _points(m["max_gap"]) + f" at {format_seconds(m['max_gap_at_s'])}"
        tol = f"<= {_points(m['tolerance'])}"
    elif kind == "share":
        diff = "n/a" if m["gap"] is None else _points(m["gap"])
        diff += f" ({m['measured_count']:,.0f} vs {m['simulated_count']:,.0f})"
        tol = f"<= {_points(m['tolerance'])}" + ("; seen on one side only" if m["only_one_side"] else "")
    else:
        diff = _rel(m["relative_difference"])
        tol = f"<= {m['tolerance']:.0%}" + (" (or one bin)" if m["name"] == "recovery p90" else "") + \
            (f" (or {format_measure(m['slack'], kind)})" if m.get("slack") else "")
    return [m["name"], format_measure(m["measured"], kind), format_measure(m["simulated"], kind), diff, tol,
            _yes(m["ok"]), m["reason"]]


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
    extra = [["lowest online share (summary: online / wanting to be)", format_pct(low["measured"]),
              format_pct(low["simulated"]), _rel(low["relative_difference"])]]
    extra += [[f"total {k}", format_num(v["measured"]), format_num(v["simulated"]), _rel(v["relative_difference"])]
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
            + f"<p class=\"note\">Compared from {format_seconds(div['from_s'])} (the first event at "
              f"{format_seconds(div['start_s'])}; the bins before it hold the load test's start-up). Online share = "
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


def _points(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} points"


def _rel(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1%}"


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def _replayed(scenario: Scenario, twin: Scenario, speed: float, runs: int) -> str:
    """What was replayed, in a sentence or three, for the report's lead paragraph."""
    scale = scenario.scale
    return (f"Scenario {scenario.name}" + (f" ({Path(scenario.source).name})" if scenario.source else "")
            + f" at --scale {scale:g} ({scenario.population.clients:,} clients) and --speed {speed:g}: "
            f"the story's {format_duration(scenario.duration)} in {format_duration(twin.duration)} of real time. "
            f"Unchanged by the speed: the client's timeout {dist_text(twin.client.timeout)}, its retry policy "
            f"{client_text(twin.client)}, and the server. --scale {scale:g} applies to the devices "
            f"(the scenario's population x {scale:g}) and to the server keys taken from the scenario; the figures "
            f"from calibrate or --capacity are the real server's, unscaled (see \"The twin's server\" for where "
            f"each key came from). Simulated: {runs} replications of the reference engine (des).")


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
