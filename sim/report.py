"""Self-contained HTML reports: figures embedded as PNG, inline CSS, no JavaScript, no network.

Pages take images, not figures: the caller draws them with `sim.plots` (no matplotlib here).

    >>> png, images = figure_images(run_figure(outcome.timeseries, scenario), Path("out/quickstart/storm"))
    >>> write_run_report(outcome.summary, scenario, Path("out/quickstart"), files, png=png, images=images)
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from sim import __version__
from sim.describe import capacity_rps, client_text, dist_text, plain_lines, supernode_slots
from sim.scenario import Scenario
from sim.units import format_duration

__all__ = ["html_page", "figure_html", "table_html", "write_html", "write_run_report", "summary_rows"]

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1180px;
       padding: 0 1em; color: #1d2d35; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.lead { color: #44535c; margin-top: 0; } .verdict { font-size: 1.05em; background: #f3f6f8; padding: .6em 1em;
       border-left: 4px solid #2a9d8f; } .verdict.bad { border-left-color: #d62828; }
table { border-collapse: collapse; margin: .5em 0; font-size: .92em; } th, td { padding: .25em .7em; text-align: left;
       border-bottom: 1px solid #e4e8eb; } th { background: #f3f6f8; } td.num { text-align: right;
       font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #e4e8eb; }
figcaption, .note { color: #44535c; font-size: .9em; } footer { margin-top: 3em; color: #7a8a93; font-size: .85em; }
"""


def html_page(title: str, body_html: str) -> str:
    """A complete page around `body_html` (already escaped where needed)."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body_html}\n"
            f"<footer>Written by loginstorm {__version__}.</footer>\n</body></html>\n")


def figure_html(png: bytes, caption: str) -> str:
    """A <figure> with the image embedded as a base64 PNG (`png`: the bytes of a PNG file)."""
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure><img alt=\"{html.escape(caption)}\" src=\"data:image/png;base64,{data}\">"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def table_html(headers: list[str], rows: list[list[str]]) -> str:
    """An escaped table; cells that look like numbers are right-aligned."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(text: str) -> str:
    stripped = text.replace(",", "").replace("%", "").replace(".", "").replace("-", "").replace("±", "").strip()
    numeric = stripped[:1].isdigit()
    return f"<td class=\"num\">{html.escape(text)}</td>" if numeric else f"<td>{html.escape(text)}</td>"


def write_html(path: Path, page: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _fmt(value: Any) -> str:
    """A summary value as the report's tables show it: counts with thousands separators, never
    in scientific notation (a mean over replications is a float), other numbers to 4 digits.

        >>> [_fmt(v) for v in (13610.0, 13610.25, 0.61234, 1.4e-05, 3, None, True)]
        ['13,610', '13,610', '0.6123', '1.4e-05', '3', 'n/a', 'yes']
    """
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 or not math.isfinite(value) else f"{value:,.0f}"
    return str(value)


def _flat(block: dict[str, Any]) -> dict[str, Any]:
    """Nested blocks flattened to `block.field` (one level, as the summary nests them)."""
    out = {}
    for key, value in block.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def summary_rows(summary: dict[str, Any], ci: bool = False) -> list[list[str]]:
    """Every field of the summary, nested blocks flattened to `block.field`; with `ci`, a third
    column holds the field's 95 % confidence interval over the replications (`ci95`)."""
    fields = _flat({k: v for k, v in summary.items() if k not in ("runs", "ci95")})
    if not ci:
        return [[key, _fmt(value)] for key, value in fields.items()]
    bounds = _flat(summary.get("ci95") or {})
    return [[key, _fmt(value), _interval(bounds.get(key))] for key, value in fields.items()]


def _interval(bounds: Any) -> str:
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or None in bounds:
        return ""
    low, high = _fmt(bounds[0]), _fmt(bounds[1])
    return low if low == high else f"{low} to {high}"


def _parameters(s: Scenario) -> list[list[str]]:
    srv, cl, pop = s.server, s.client, s.population
    rows = [
        ["clients", f"{pop.clients:,}" + (f" (scale {s.scale:g})" if s.scale != 1 else "")],
        ["online at start", f"{pop.online_at_start:.0%}"],
        ["workers", f"{srv.workers:,}" + (f" + {supernode_slots(s):,} supernode slots" if srv.p2p else "")
         + f" (~{capacity_rps(s):,.1f} logins/s)"],
        ["service time", dist_text(srv.service_time)],
        ["queue limit", _fmt(srv.queue_limit if srv.queue_limit != float("inf") else "unlimited")],
        ["discipline", srv.discipline + (", drop expired" if srv.drop_expired else "")
         + (", cancel on timeout" if srv.cancel_on_timeout else "")],
        ["client timeout", dist_text(cl.timeout)],
        ["retry policy", client_text(cl)],
        ["duration", format_duration(s.duration)],
        ["seed", str(s.seed)],
    ]
    if srv.rate_limit is not None:
        rows.append(["rate limit", f"{srv.rate_limit.rate:g}/s, burst {srv.rate_limit.bucket:g}"])
    for i, e in enumerate(s.events[:_EVENT_ROWS]):
        rows.append([f"event {i}", f"{e.kind} at {format_duration(e.at)}"])
    if len(s.events) > _EVENT_ROWS:
        rest = s.events[_EVENT_ROWS:]
        rows.append([f"events {_EVENT_ROWS}-{len(s.events) - 1}", f"{len(rest):,} more, from "
                     f"{format_duration(min(e.at for e in rest))} to {format_duration(max(e.at for e in rest))} "
                     "(all in the scenario file)"])
    return rows


#: events listed one per row in the report; the rest are summed up in one row
_EVENT_ROWS = 30


def write_run_report(summary: dict[str, Any], s: Scenario, out_dir: Path, files: list[Path], *, png: bytes,
                     images: list[Path]) -> list[Path]:
    """report.html in `out_dir`, embedding `png` (the run figure) and linking `files` and `images`
    (the figure's files, e.g. storm.png / storm.svg); returns report.html and `images`."""
    figure = figure_html(png, "Clients, offered load against capacity, goodput against wasted work, "
                              "and the queue over time; dashed lines mark the scenario's events (with many "
                              "events, the first and the largest of each kind, and a strip counts them).")
    lines = plain_lines(summary, s)
    bad = summary.get("metastable") or summary["recovery_s"]["p99"] is None
    links = " · ".join(f"<a href=\"{html.escape(p.name)}\">{html.escape(p.name)}</a>" for p in files + images)
    body = (f"<h1>{html.escape(s.name)}</h1><p class=\"lead\">{html.escape(s.description)}</p>"
            f"<div class=\"verdict{' bad' if bad else ''}\">" + "<br>".join(html.escape(x) for x in lines) + "</div>"
            f"<h2>What happened</h2>{figure}"
            f"<h2>Key parameters</h2>{table_html(['parameter', 'value'], _parameters(s))}"
            f"<h2>Summary</h2>{_summary_table(summary)}"
            f"<h2>Data</h2><p>{links}</p>")
    page = write_html(out_dir / "report.html", html_page(f"loginstorm: {s.name}", body))
    return [page, *images]


def _summary_table(summary: dict[str, Any]) -> str:
    runs = summary.get("replications")
    if not summary.get("ci95") or not runs:
        return table_html(["field", "value"], summary_rows(summary))
    return (f"<p>Means over {runs} replications, with the 95 % confidence interval of each mean "
            f"(Student t, cut at 0, and at 1 for shares; empty where a run has no value).</p>"
            + table_html(["field", f"mean of {runs} runs", "95 % CI"], summary_rows(summary, ci=True)))

