"""sweep.html for a parameter sweep: the phase diagram and heatmaps embedded, the verdict and every point.

    paths = write_sweep_report(Path("out/storm-sweep"))  # reads sweep.json and points.csv there

The figures come from `sim.plots.sweep`, what they say from `sim.sweep_analysis`; a figure whose
columns are missing from points.csv is left out of sweep.html with a note.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from sim.plots import Figure, figure_images, heatmap_figure, phase_figure
from sim.report import figure_html, html_page, table_html, write_html
from sim.sweep_analysis import (FIELDS, HEATMAP_FIELDS, OPTIONAL_REGIMES, REGIMES, TIPPING, Point, key_values,
                                never_share, read_sweep, regimes_present, value_text)
from sim.units import format_duration

__all__ = ["write_sweep_report", "points_table"]


def write_sweep_report(out_dir: Path) -> list[Path]:
    """phase.png/.svg, heatmap-FIELD.png/.svg for recovery_s.p99, amplification and peak_offered_rps,
    and sweep.html (figures embedded, readable offline) in `out_dir`, from its sweep.json and
    points.csv; returns the paths written. A figure whose columns are missing is left out with a note.
    """
    meta, points = read_sweep(out_dir)
    keys = list(meta["grid"])
    policies = list(meta.get("policies") or dict.fromkeys(p["policy"] for p in points))
    x_key, y_key = keys[0], keys[1] if len(keys) > 1 else None
    facet = keys[2] if len(keys) > 2 else None
    # A fourth key and beyond (not written by sweep.py today): held at their first value.
    where = {k: key_values(points, k)[0] for k in keys[3:]}
    reps = meta.get("replications")
    written: list[Path] = []
    sections, notes = [], []
    columns = set(points[0]) if points else set()

    if {col for col, _, _ in REGIMES} - OPTIONAL_REGIMES <= columns:
        fig = phase_figure(points, x_key, y_key, policies, facet=facet, where=where, replications=reps)
        figure = _embed_and_save(fig, _phase_caption(x_key, y_key, facet), out_dir / "phase", written)
        reading = _phase_reading(y_key is None, len(regimes_present(points)) > 3)
        sections.append(("Phase diagram", f"<p>{html.escape(reading)}</p>{figure}"))
    else:
        notes.append("No phase diagram: points.csv has no metastable_share / recover_share / never_degrade_share.")
    heat = []
    for field in HEATMAP_FIELDS:
        if field not in columns:
            notes.append(f"No figure of {field}: points.csv has no such column.")
            continue
        fig = heatmap_figure(points, x_key, y_key, field, policies, facet=facet, where=where, replications=reps)
        # save_figure swaps the suffix: give it one, or ".p99" of the field name would be taken for it.
        heat.append(_embed_and_save(fig, _heat_caption(field, y_key is None), out_dir / f"heatmap-{field}.png",
                                    written))
    if heat:
        sections.append(("Recovery, amplification and peak load", "".join(heat)))
    body = _body(meta, points, keys, policies, where, sections, notes, written)
    page = write_html(out_dir / "sweep.html", html_page(f"{meta.get('scenario', 'sweep')}: sweep", body))
    return written + [page]


def _embed_and_save(fig: Figure, caption: str, stem: Path, written: list[Path]) -> str:
    """The figure as HTML, then as PNG and SVG files (appended to `written`); closes it."""
    # keep_layout: the layout computed for the embedded PNG serves the two files too
    png, paths = figure_images(fig, stem, keep_layout=True)
    written += paths
    return figure_html(png, caption)


# --- the words around the figures ------------------------------------------------------

def _phase_reading(one_key: bool, unrecovered: bool) -> str:
    return _phase_words(one_key) + (" Purple: below 99 % online at the end without being metastable (a trigger "
                                     "too late in the run, clients that gave up, a run stopped early)."
                                     if unrecovered else "")


def _phase_words(one_key: bool) -> str:
    if one_key:
        return ("Each panel is one retry policy; the coloured bands stack the shares of replications that ended "
                "metastable (red, at the bottom: the storm kept itself going after its trigger was over), that "
                "degraded and then recovered (amber), and that never fell below 99 % online (green, at the top). "
                "The vertical black line marks where the red band crosses one half: the value at which this login "
                "tier tips into self-sustaining failure.")
    return ("Each panel is one retry policy; each cell one point of the grid. The bar in a cell is split by how "
            "its replications ended: red = metastable (the storm kept itself going after its trigger was over), "
            "amber = degraded, then recovered, green = never fell below 99 % online; the number is the red share. "
            "The thick black line is the tipping boundary: on one side at least half of the replications end "
            "metastable, on the other fewer. It is where this login tier tips into self-sustaining failure.")


def _phase_caption(x_key: str, y_key: str | None, facet: str | None) -> str:
    over = x_key if y_key is None else f"{x_key} (across) and {y_key} (up)"
    rows = f"; one row of panels per value of {facet}" if facet else ""
    return f"How the replications end over {over}, one panel per retry policy{rows}."


def _named(field: str) -> str:
    """`Time back to 99 % online (recovery_s.p99)`: the field's title with its column name."""
    title = FIELDS[field].title if field in FIELDS else field
    named = title if title.startswith(field) else f"{title} ({field})"
    return named[0].upper() + named[1:]


def _heat_caption(field: str, one_key: bool) -> str:
    if one_key:
        return (f"{_named(field)} against the swept key: mean and 95 % CI over the replications, one line per "
                "policy; lines that coincide hide each other (the table has every number).")
    never = (" Hatched cells: some replications were never back to 99 % online; the cell gives the share and "
             "the mean of the replications that did recover.") if field.startswith("recovery_s") else ""
    return f"{_named(field)}, mean over the replications; every panel shares one colour scale.{never}"


# --- the page --------------------------------------------------------------------------

def _body(meta: dict, points: list[Point], keys: list[str], policies: list[str], where: dict[str, Any],
          sections: list[tuple[str, str]], notes: list[str], written: list[Path]) -> str:
    name = html.escape(str(meta.get("scenario", "sweep")))
    grid = meta["grid"]
    n = meta.get("points") or math.prod(len(v) for v in grid.values())
    reps = meta.get("replications")
    runs = f" = {n * len(policies) * reps:,} runs" if reps else ""
    lead = (f"{n} grid points × {len(policies)} retry polic{'y' if len(policies) == 1 else 'ies'} × "
            f"{reps if reps else '?'} replications{runs}; engine {meta.get('engine', '?')}, "
            f"seed {meta.get('seed', '?')}.")
    swept = [[k, ", ".join(value_text(k, float(v) if isinstance(v, (int, float)) else v) for v in grid[k]),
              role] for k, role in zip(keys, ["across (x axis)", "up (y axis)", "one row of panels per value"]
                                       + ["held at its first value"] * len(keys))]
    swept.append(["retry policy", ", ".join(policies), "one panel each"])
    held = "".join(f'<p class="note">{html.escape(k)} is held at {html.escape(value_text(k, v))} in the '
                   "figures; the table has every point.</p>" for k, v in where.items())
    parts = [f"<h1>{name}: sweep over {html.escape(', '.join(keys))}</h1>", f'<p class="lead">{html.escape(lead)}</p>',
             _verdict(points, policies), "<h2>What was swept</h2>",
             table_html(["key", "values", "in the figures"], swept), held]
    parts += [f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections]
    parts += [f'<p class="note">{html.escape(note)}</p>' for note in notes]
    headers, rows = points_table(points, keys)
    parts += ["<h2>Every point</h2>", table_html(headers, rows),
              '<p class="note">Means over the replications ± the half-width of their 95 % CI. <b>recovery 99 %</b>: '
              "time from the first event until 99 % of the clients that want to be online are; <b>never</b> where "
              "some replications did not get there by the end. <b>attempts / episode</b>: login attempts per client "
              "that had to log in. <b>metastable</b> to <b>never degrades</b>: the shares of the replications "
              "that ended so (see the phase diagram).</p>"]
    links = [Path("sweep.json"), Path("points.csv")] + written
    parts.append("<h2>Data</h2><p>" + " · ".join(f'<a href="{html.escape(p.name)}">{html.escape(p.name)}</a>'
                                                 for p in links) + "</p>")
    return "\n".join(parts)


def _verdict(points: list[Point], policies: list[str]) -> str:
    """One line per policy: at how many points at least half the replications ended metastable."""
    lines, bad = [], False
    for policy in policies:
        mine = [p for p in points if p["policy"] == policy and isinstance(p.get("metastable_share"), float)]
        if not mine:
            continue
        tipped = sum(p["metastable_share"] >= TIPPING for p in mine)
        bad = bad or tipped > 0
        lines.append(f"{policy}: metastable in at least half of the replications at {tipped} of {len(mine)} points")
    if not lines:
        return ""
    return f'<div class="verdict{" bad" if bad else ""}">' + "<br>".join(html.escape(x) for x in lines) + "</div>"


def points_table(points: list[Point], keys: list[str]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of points.csv's main fields as text (no NaN: undefined is "n/a" or "never")."""
    regimes = regimes_present(points)
    names = {"metastable_share": "metastable", "unrecovered_share": "below at end", "recover_share": "recovers",
             "never_degrade_share": "never degrades"}
    headers = ["point", "policy", *keys, "recovery 99 %", "attempts / episode", "peak offered /s", "wasted work",
               "lowest online", *(names[col] for col, _, _ in regimes)]
    rows = []
    for p in points:
        rows.append([str(p.get("point") or ""), str(p.get("policy") or ""),
                     *(value_text(k, p.get(k)) if p.get(k) is not None else "n/a" for k in keys),
                     _recovery_text(p), _mean_ci(p, "amplification", "{:.3g}"),
                     _mean_ci(p, "peak_offered_rps", "{:,.0f}"), _share(p.get("wasted_work_fraction")),
                     _share(p.get("lowest_online_share")),
                     *(_share(p.get(col)) for col, _, _ in regimes)])
    return headers, rows


def _recovery_text(p: Point) -> str:
    never = never_share(p, "recovery_s.p99")
    value = p.get("recovery_s.p99")
    if not isinstance(value, float):
        return "never" if never >= 1 else f"never in {never:.0%}" if never > 0 else "n/a"
    text = _mean_ci(p, "recovery_s.p99", None)
    return f"{text} (never in {never:.0%})" if never > 0 else text


def _mean_ci(p: Point, field: str, fmt: str | None) -> str:
    value = p.get(field)
    if not isinstance(value, float):
        return "n/a"
    show = (lambda s: format_duration(round(s)) if s >= 60 else f"{s:.3g}s") if fmt is None else fmt.format
    low, high = p.get(f"{field}.ci_low"), p.get(f"{field}.ci_high")
    if isinstance(low, float) and isinstance(high, float):
        if abs((value - low) - (high - value)) > 1e-9 * max(1.0, abs(value)):  # cut at 0 (or 1): not symmetric
            return f"{show(value)} [{show(low)}, {show(high)}]"
        return f"{show(value)} ± {show((high - low) / 2)}"
    return show(value)


def _share(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, float) else "n/a"
