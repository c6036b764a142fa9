"""Sweep figures and sweep.html from synthetic sweep outputs written in sim/sweep.py's format."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from sim.plots import heatmap_figure, phase_figure
from sim.sweep_analysis import (MAIN_FIELDS, is_geometric, phase_boundary, phase_crossings, read_sweep,
                                share_crossings)
from sim.sweep_report import write_sweep_report

POLICIES = ["none", "full-jitter"]
WORKERS, FRACTIONS = [200.0, 400.0, 800.0], [0.1, 0.2, 0.4]
#: metastable share of policy "none" by (fraction, workers): rows are fractions, columns workers
TIPPED = {0.1: [0.5, 0.0, 0.0], 0.2: [1.0, 2 / 3, 0.0], 0.4: [1.0, 1.0, 1 / 3]}


def _row(point: str, policy: str, grid: dict[str, float], metastable: float, load: float, reps: int = 3) -> dict:
    """One row of points.csv: worse with `load`; metastable replications never recover."""
    recover = min(1.0 - metastable, 0.6 * (1 - metastable) + 0.4 * min(load, 1.0))
    row = {"point": point, "policy": policy, **grid, "replications": reps}
    fields = {"recovery_s.p90": 60 + 300 * load, "recovery_s.p99": 90 + 600 * load, "amplification": 1 + 8 * load,
              "peak_offered_rps": 40 * 10 ** (3 * load), "wasted_work_fraction": min(0.9, 0.3 * load),
              "lowest_online_share": max(0.1, 1 - 0.4 * load), "attempts": 1e5 * (1 + 8 * load),
              "logins": 9e4, "gave_up": 500 * load}
    for name, value in fields.items():
        if name.startswith("recovery_s") and metastable >= 1:
            value = None  # no replication recovered: no mean
        row[name] = value
        row[f"{name}.ci_low"] = None if value is None else value * 0.9
        row[f"{name}.ci_high"] = None if value is None else value * 1.1
    row["recovery_s.p99.never"] = metastable
    row["recovery_s.p90.never"] = metastable
    row.update(metastable_share=metastable, recover_share=recover, never_degrade_share=1 - metastable - recover)
    return row


def _write(out: Path, grid: dict[str, list[float]], rows: list[dict], reps: int = 3) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    meta = {"scenario": "synthetic-storm", "grid": grid, "policies": POLICIES, "replications": reps,
            "engine": "des", "seed": 7, "points": int(np.prod([len(v) for v in grid.values()]))}
    (out / "sweep.json").write_text(json.dumps(meta, indent=2))
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (out / "points.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else (f"{v:.6g}" if isinstance(v := row[k], float) else v)
                             for k in columns})
    return out


def two_keys(out: Path) -> Path:
    rows, n = [], 0
    for policy in POLICIES:
        for f in FRACTIONS:
            for i, w in enumerate(WORKERS):
                load = f * 400 / w
                metastable = TIPPED[f][i] if policy == "none" else (1 / 3 if load >= 0.8 else 0.0)
                rows.append(_row(f"p{n % 9}", policy, {"server.workers": w, "events.0.fraction": f}, metastable, load))
                n += 1
    return _write(out, {"server.workers": WORKERS, "events.0.fraction": FRACTIONS}, rows)


def one_key(out: Path) -> Path:
    rows = []
    for policy in POLICIES:
        for k, w in enumerate(WORKERS + [1600.0]):
            # none: 1.0, 1.0, 0.0, 0.0 -> crosses between 400 and 800; full-jitter: 0.75, 0.25 -> between 200 and 400
            metastable = ([1.0, 1.0, 0.0, 0.0] if policy == "none" else [0.75, 0.25, 0.0, 0.0])[k]
            rows.append(_row(f"p{k}", policy, {"server.workers": w}, metastable, 200 / w))
    return _write(out, {"server.workers": WORKERS + [1600.0]}, rows)


def three_keys(out: Path) -> Path:
    rows, n = [], 0
    ats = [300.0, 900.0]
    for policy in POLICIES:
        for at in ats:
            for f in FRACTIONS:
                for w in WORKERS:
                    load = f * 400 / w * (1.5 if at == 900.0 else 1.0)
                    metastable = min(1.0, max(0.0, round(3 * (load - 0.3)) / 3))
                    grid = {"server.workers": w, "events.0.fraction": f, "events.0.at": at}
                    rows.append(_row(f"p{n % 18}", policy, grid, metastable, load))
                    n += 1
    return _write(out, {"server.workers": WORKERS, "events.0.fraction": FRACTIONS, "events.0.at": ats}, rows)


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> dict[str, tuple[Path, list[Path]]]:
    """Each synthetic sweep with the paths write_sweep_report returned."""
    out = {}
    for name, build in (("two", two_keys), ("one", one_key), ("three", three_keys)):
        folder = build(tmp_path_factory.mktemp(name))
        out[name] = (folder, write_sweep_report(folder))
    return out


EXPECTED = ["phase.png", "phase.svg"] + [f"heatmap-{f}.{ext}" for f in ("recovery_s.p99", "amplification",
                                                                       "peak_offered_rps") for ext in ("png", "svg")]


@pytest.mark.parametrize("name", ["two", "one", "three"])
def test_the_report_writes_every_figure_and_page(swept, name):
    folder, paths = swept[name]
    assert sorted(p.name for p in paths) == sorted(EXPECTED + ["sweep.html"])
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths)


@pytest.mark.parametrize("name", ["two", "one", "three"])
def test_the_page_embeds_figures_and_the_table_without_nan(swept, name):
    folder, _ = swept[name]
    page = (folder / "sweep.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4
    assert page.index("Phase diagram") < page.index("heatmap") if "heatmap" in page else True
    assert page.index("<h2>Phase diagram") < page.index("<h2>Recovery, amplification")
    assert "<h2>Every point</h2>" in page and "server.workers" in page
    rows = re.findall(r"<tr>", page.split("<h2>Every point</h2>")[1].split("</table>")[0])
    assert len(rows) == 1 + len(read_sweep(folder)[1])  # the header and one row per (point, policy)
    text = re.sub(r'src="data:[^"]*"', "", page)
    assert not re.search(r"\bnan\b|\binf\b", text, re.IGNORECASE)
    assert not re.search(r"\bNone\b", text)  # the policy "none" is fine
    assert "http://" not in text and "https://" not in text  # nothing to fetch: readable offline


def test_never_recovered_points_are_said_in_the_table(swept):
    page = (swept["two"][0] / "sweep.html").read_text()
    assert ">never<" in page  # all three replications metastable: no recovery time at all
    assert "(never in 33%)" in page or "never in 33%" in page


def test_the_boundary_lies_where_the_metastable_share_crosses_one_half(swept):
    _, points = read_sweep(swept["two"][0])
    segments = phase_boundary(points, "server.workers", "events.0.fraction", "none")
    # Tipped (>= 1/2 metastable): column 0 everywhere, column 1 from the second row up; column 2 never.
    expected = {((0.5, -0.5), (0.5, 0.5)), ((1.5, 0.5), (1.5, 1.5)), ((1.5, 1.5), (1.5, 2.5)),
                ((0.5, 0.5), (1.5, 0.5))}
    assert set(segments) == expected and len(segments) == len(expected)
    # full-jitter: 1/3 at most, below one half everywhere: no boundary to draw.
    assert phase_boundary(points, "server.workers", "events.0.fraction", "full-jitter") == []


def test_the_phase_figure_draws_that_boundary(swept):
    _, points = read_sweep(swept["two"][0])
    fig = phase_figure(points, "server.workers", "events.0.fraction", POLICIES)
    drawn = [line for line in fig.axes[0].get_lines() if line.get_gid() == "boundary"]
    assert len(drawn) == 4
    assert not [line for line in fig.axes[1].get_lines() if line.get_gid() == "boundary"]


def test_one_key_crossings_are_interpolated_where_the_share_passes_one_half(swept):
    _, points = read_sweep(swept["one"][0])
    # none: 1.0 at 400, 0.0 at 800; geometric workers -> interpolated in log: sqrt(400 * 800)
    assert phase_crossings(points, "server.workers", "none") == pytest.approx([np.sqrt(400 * 800)])
    # full-jitter: 0.75 at 200, 0.25 at 400 -> halfway in log
    assert phase_crossings(points, "server.workers", "full-jitter") == pytest.approx([np.sqrt(200 * 400)])
    assert share_crossings([1.0, 2.0, 3.0], [0.0, 0.25, 1.0]) == pytest.approx([2 + 1 / 3])
    assert share_crossings([1.0, 2.0], [0.2, 0.4]) == []


def test_panels_share_one_colour_scale(swept):
    _, points = read_sweep(swept["two"][0])
    fig = heatmap_figure(points, "server.workers", "events.0.fraction", "amplification", POLICIES)
    images = [ax.get_images()[0] for ax in fig.axes if ax.get_images()]
    assert len(images) == 2
    a, b = (im.norm for im in images)
    assert a is b or (a.vmin, a.vmax, type(a)) == (b.vmin, b.vmax, type(b))
    values = [p["amplification"] for p in points]
    assert (a.vmin, a.vmax) == pytest.approx((min(values), max(values)))
    # peak offered load spans more than two decades: one logarithmic scale for both panels
    fig = heatmap_figure(points, "server.workers", "events.0.fraction", "peak_offered_rps", POLICIES)
    norms = [ax.get_images()[0].norm for ax in fig.axes if ax.get_images()]
    assert type(norms[0]).__name__ == "LogNorm" and norms[0] is norms[1]


def test_a_third_key_gives_a_row_of_panels_per_value(swept):
    _, points = read_sweep(swept["three"][0])
    fig = heatmap_figure(points, "server.workers", "events.0.fraction", "recovery_s.p99", POLICIES,
                         facet="events.0.at")
    assert len([ax for ax in fig.axes if ax.get_images()]) == 4
    titles = [ax.get_title() for ax in fig.axes if ax.get_images()]
    assert "full-jitter — events.0.at = 15m" in titles
    with pytest.raises(ValueError, match="facet"):
        heatmap_figure(points, "server.workers", "events.0.fraction", "recovery_s.p99", POLICIES)


def test_missing_optional_columns_leave_out_that_figure_with_a_note(tmp_path):
    folder = two_keys(tmp_path / "sweep")
    with (folder / "points.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    keep = [k for k in rows[0] if not k.startswith("peak_offered_rps") and not k.endswith("_share")]
    with (folder / "points.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, keep, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    names = {p.name for p in write_sweep_report(folder)}
    assert "phase.png" not in names and "heatmap-peak_offered_rps.png" not in names
    assert "heatmap-amplification.png" in names
    page = (folder / "sweep.html").read_text()
    assert "No phase diagram" in page and "No figure of peak_offered_rps" in page


def test_geometric_values_are_told_from_even_steps():
    assert is_geometric([200.0, 400.0, 800.0]) and is_geometric([10.0, 100.0, 1000.0])
    assert not is_geometric([0.1, 0.2, 0.3]) and not is_geometric([200.0, 400.0])
    assert set(MAIN_FIELDS) >= {"recovery_s.p99", "amplification", "peak_offered_rps"}


def test_sim_sweep_spelling_is_read_too(tmp_path):
    """sim/sweep.py writes `F.low` / `F.high`, four `regime.NAME` shares and `recovered_runs`."""
    folder = two_keys(tmp_path / "sweep")
    with (folder / "points.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    renamed = []
    for row in rows:
        out = {k.replace(".ci_low", ".low").replace(".ci_high", ".high"): v for k, v in row.items()
               if not k.endswith(".never") and k not in ("recover_share", "never_degrade_share")}
        metastable, recover = float(row["metastable_share"]), float(row["recover_share"])
        out.update({"regime.metastable": row["metastable_share"], "regime.unrecovered": "0.1" if recover > 0.3 else "0",
                    "regime.recovered": str(recover - 0.1 if recover > 0.3 else recover),
                    "regime.undisturbed": row["never_degrade_share"], "regime": "recovered",
                    "recovered_runs": str(round(3 * (1 - metastable)))})
        if metastable > 0:
            out["recovery_s.p99"] = out["recovery_s.p99.low"] = out["recovery_s.p99.high"] = ""  # combine(): null
        renamed.append(out)
    with (folder / "points.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(renamed[0]))
        writer.writeheader()
        writer.writerows(renamed)
    _, points = read_sweep(folder)
    assert points[1]["amplification.ci_low"] == points[1]["amplification.low"]
    assert points[0]["recovery_s.p99.never"] == pytest.approx(0.0 if TIPPED[0.1][0] == 0 else 1 / 3)
    names = {p.name for p in write_sweep_report(folder)}
    assert {"phase.png", "heatmap-recovery_s.p99.png", "sweep.html"} <= names
    page = (folder / "sweep.html").read_text()
    assert "below at end" in page and "Purple" in page
    assert phase_boundary(points, "server.workers", "events.0.fraction", "none") == \
        phase_boundary(read_sweep(two_keys(tmp_path / "again"))[1], "server.workers", "events.0.fraction", "none")
