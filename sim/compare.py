"""One scenario under several variants (policies or any overrides), ranked with 95 % CIs.

    >>> variants = build_variants(["exponential", "full-jitter"], [], base="1s", cap="2m")
    >>> comparison = compare("quickstart", variants, replications=3, until=1800.0)
    >>> print(closing_line(comparison.results))
    >>> write_outputs(comparison, Path("out/quickstart-compare"))

Every variant runs the same replication seeds (common random numbers: replication k of each
variant draws from child k of SeedSequence(seed).spawn(R)), so the differences come from the
variants, not from luck, and the numbers do not depend on how the runs are spread over cores.

Ranking: recovery to 99 % online (`recovery_s.p99`, mean over replications) first, then
amplification (attempts per episode). A variant that did not recover in every replication ranks
after all that did, by the share of replications that recovered, then amplification. Two
variants are tied when the 95 % CIs of the key that orders them overlap: recovery, or
amplification between two variants that did not both recover in every run. The CIs are
`sim.runner.combine`'s: Student t, cut at 0 (never below zero for these non-negative keys). With
few replications (R <= FEW_RUNS) a tie whose runs do not overlap at all (every run of one beat
every run of the other) is called out: more replications would likely separate the two.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sim import batch
from sim.batch import Finished, Run
from sim.config import ScenarioError, ScenarioFile, read_scenario
from sim.describe import plural
from sim.overrides import Variant, parse_variant, policy_list
from sim.runner import choose_engine, combine, finite_json, replication_seeds, warm_up
from sim.scenario import Scenario
from sim.units import format_duration

__all__ = ["VariantResult", "Comparison", "build_variants", "compare", "rank", "tied", "runs_apart",
           "closing_line", "table_rows", "to_json", "write_outputs", "CSV_FIELDS", "FEW_RUNS"]

#: how the ranking reads, written into compare.json
RANKING = ("recovery_s.p99 (mean over replications; a variant that did not recover in every replication "
           "ranks last, by the share that did), then amplification; tied = the 95 % CIs of that key overlap")
CSV_FIELDS = (
    "rank", "variant", "tied_with", "replications", "recovered_runs",
    "recovery_p90_s", "recovery_p99_s", "recovery_p99_low", "recovery_p99_high",
    "amplification", "amplification_low", "amplification_high", "attempts", "peak_offered_rps",
    "wasted_work_fraction", "metastable_share", "logins", "gave_up", "login_time_p50_s", "login_time_p99_s",
    "suppressed", "short_circuited", "rejected", "resumptions", "resumed",
)
#: up to this many replications, a tie whose runs do not overlap is called out (t(R - 1) is so
#: large that the CIs overlap even when every run of one variant beat every run of the other)
FEW_RUNS = 5


# --- variants -----------------------------------------------------------------------------

def build_variants(policies: Sequence[str], variant_specs: Sequence[str], base: str | None = None,
                   cap: str | None = None) -> list[Variant]:
    """The variants to run: policies, override variants, or each policy crossed with each variant.

    `policies` holds names, comma-separated lists or "all" (every policy); `variant_specs` holds
    "NAME=KEY=VALUE[,KEY=VALUE...]" (see `parse_variant`). With both, every policy runs under
    every override variant ("full-jitter+lifo"). `base` and `cap` (e.g. "1s", "5m") are set on
    every variant's policy. A ValueError says what is wrong with the request.

        >>> build_variants(["none,full-jitter"], ["lifo=server.discipline=lifo"])[1]
        Variant(name='full-jitter+lifo', sets=('client.policy.name=full-jitter', 'server.discipline=lifo'))
    """
    names = policy_list(policies)
    overrides = [parse_variant(spec) for spec in variant_specs]
    if not names and not overrides:
        raise ValueError("nothing to compare: name policies (--policy, --policies) and/or --variant NAME=KEY=VALUE")
    shared = tuple(f"client.policy.{key}={value}" for key, value in (("base", base), ("cap", cap)) if value)
    by_policy = [Variant(p, (f"client.policy.name={p}",)) for p in names]
    if by_policy and overrides:
        crossed = [Variant(f"{p.name}+{v.name}", p.sets + v.sets) for p in by_policy for v in overrides]
    else:
        crossed = by_policy or overrides
    variants = [Variant(v.name, v.sets + shared) for v in crossed]
    seen = [v.name for v in variants]
    doubled = sorted({n for n in seen if seen.count(n) > 1})
    if doubled:
        raise ValueError(f"variant names must differ; given twice: {', '.join(doubled)}")
    return variants


# --- running ------------------------------------------------------------------------------

@dataclass
class VariantResult:
    """One variant's combined summary (means, `ci95`, `runs`) and mean time series, with its place."""

    variant: Variant
    summary: dict[str, Any]
    timeseries: dict[str, np.ndarray]
    rank: int = 0
    tied_with: list[str] = field(default_factory=list)
    scenario: Scenario | None = None  # the variant's own scenario, overrides applied

    @property
    def name(self) -> str:
        return self.variant.name

    @property
    def replications(self) -> int:
        return self.summary["replications"]

    def recovered_runs(self, level: str = "p99") -> int:
        """Replications that got back to 90 % (`p90`) or 99 % (`p99`) online by the end."""
        return sum(run["recovery_s"][level] is not None for run in self.summary["runs"])

    @property
    def recovered(self) -> bool:
        return self.recovered_runs() == self.replications


@dataclass
class Comparison:
    """The variants of one scenario, ranked (best first)."""

    scenario: Scenario  # as given, with the shared overrides: names the comparison
    results: list[VariantResult]
    replications: int
    until: float | None


def compare(path: str | Path, variants: Sequence[Variant], *, sets: Sequence[str] = (), scale: float = 1.0,
            seed: int | None = None, until: float | None = None, replications: int = 1, jobs: int | None = None,
            progress: Callable[[int, int], None] | None = None, engine: str = "auto",
            before_runs: Callable[[Scenario, list[Scenario]], None] | None = None) -> Comparison:
    """Run every variant `replications` times (in `jobs` processes; 1 = here) and rank them.

    Each variant's scenario is loaded first, so a bad override fails before anything runs: a
    ScenarioError whose source names the variant. `progress(done, total)` counts finished runs.
    `engine` is resolved per variant as `simulate` does (`sim.runner.choose_engine`).
    `before_runs(base, scenarios)` is called once every variant is loaded, before any run (the
    CLI's resource and output-folder checks).
    """
    if replications < 1:
        raise ValueError("replications must be >= 1")
    if not variants:
        raise ValueError("nothing to compare: no variants")
    file = read_scenario(path)
    base = file.scenario(sets=sets, scale=scale, seed=seed)
    scenarios = [_load_variant(file, v, sets, scale, seed) for v in variants]
    if before_runs is not None:
        before_runs(base, scenarios)
    engines = [choose_engine(s, engine)[0] for s in scenarios]
    warm_up(engines)  # here, once, not in every worker process at once
    runs = [Run((i, k), s, child, engines[i], until, series=True) for i, s in enumerate(scenarios)
            for k, child in enumerate(replication_seeds(s.seed, replications))]
    done = _run_all(runs, jobs, progress)
    results = []
    for i, variant in enumerate(variants):
        mine = [done[(i, k)] for k in range(replications)]
        summary = combine([f.summary for f in mine])
        series = {key: np.mean([f.timeseries[key] for f in mine], axis=0) for key in mine[0].timeseries}
        results.append(VariantResult(variant, summary, series, scenario=scenarios[i]))
    return Comparison(base, rank(results), replications, until)


def _load_variant(file: ScenarioFile, variant: Variant, sets: Sequence[str], scale: float,
                  seed: int | None) -> Scenario:
    try:
        return file.scenario(sets=[*sets, *variant.sets], scale=scale, seed=seed)
    except ScenarioError as exc:
        raise ScenarioError(f"{exc.source} (variant {variant.name})", exc.problems) from None


def _run_all(runs: list[Run], jobs: int | None, progress: Callable[[int, int], None] | None) -> dict:
    """Every run, on `jobs` processes (default one per core, never more than there are runs)."""
    done: dict[Any, Finished] = {}

    def record(finished: Finished) -> None:
        done[finished.key] = finished
        if progress is not None:
            progress(len(done), len(runs))

    if progress is not None:
        progress(0, len(runs))
    with batch.executor("process", min(len(runs), jobs or batch.cores())) as run_all:
        run_all(runs, record)
    return done


# --- ranking ------------------------------------------------------------------------------

def rank(results: list[VariantResult]) -> list[VariantResult]:
    """The results sorted best first, with `rank` (1, 2, ...) and `tied_with` filled in."""
    ordered = sorted(results, key=_sort_key)
    for place, result in enumerate(ordered, start=1):
        result.rank = place
        result.tied_with = [other.name for other in ordered if other is not result and tied(result, other)]
    return ordered


def _sort_key(r: VariantResult) -> tuple:
    amplification = _or_inf(r.summary["amplification"])
    if r.recovered:
        return (0, r.summary["recovery_s"]["p99"], amplification)
    return (1, -r.recovered_runs(), amplification)


def tied(a: VariantResult, b: VariantResult) -> bool:
    """The 95 % CIs of the key that orders a and b overlap: no winner between them."""
    if a.recovered != b.recovered:
        return False
    key = _tie_key(a)
    unknown = (-math.inf, math.inf)
    return _overlap(_ci(a, *key) or unknown, _ci(b, *key) or unknown)


def _tie_key(r: VariantResult) -> tuple[str, ...]:
    return ("recovery_s", "p99") if r.recovered else ("amplification",)


def runs_apart(a: VariantResult, b: VariantResult) -> VariantResult | None:
    """Of two tied variants with 2 to FEW_RUNS replications, the one whose every run beat (was
    lower than) every run of the other on the key that ties them; None if their runs overlap.

    At R = 2 that happens by chance one time in three, at R = 5 one time in 126: the CIs are
    too wide to tell, and more replications would likely separate the two.
    """
    if not 2 <= a.replications <= FEW_RUNS or not tied(a, b):
        return None
    ours, theirs = _run_values(a), _run_values(b)
    if ours is None or theirs is None:
        return None
    return a if max(ours) < min(theirs) else b if max(theirs) < min(ours) else None


def _run_values(r: VariantResult) -> list[float] | None:
    """Every replication's value of the tie key; None where a run has none."""
    values = []
    for run in r.summary["runs"]:
        node: Any = run
        for part in _tie_key(r):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return None
        values.append(node)
    return values


def _more_runs(replications: int) -> int:
    """How many replications to suggest to separate a tie whose runs do not overlap."""
    return max(FEW_RUNS, 2 * replications)


def _ci(r: VariantResult, *key: str) -> tuple[float, float] | None:
    """The 95 % CI of a summary field; None where the field is null in some replication."""
    node: Any = r.summary["ci95"]
    for part in key:
        node = node.get(part) if isinstance(node, dict) else None
    return None if node is None else (node[0], node[1])


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _or_inf(value: float | None) -> float:
    return math.inf if value is None else value


# --- saying it ----------------------------------------------------------------------------

def closing_line(results: list[VariantResult]) -> str:
    """One sentence: the best variant and by how much, or which variants are tied (no winner)."""
    top = results[0]
    if len(results) == 1:
        return f"only one variant ({top.name}): nothing to compare"
    group = [top] + [r for r in results[1:] if r.name in top.tied_with]
    if len(group) == 1:
        return f"best: {top.name} — {_outcome(top)}; {_gap(top, results[1])}"
    why, hint = _why_tied(top), _apart_hint(top, group[1:])
    if len(group) == len(results):
        single = ("; one replication per variant has no confidence interval: run 3 or more"
                  if top.replications == 1 else "")
        every = "both variants" if len(results) == 2 else f"all {len(results)} variants"
        return f"no winner: {every} are tied ({why}){single}{hint}"
    said = f"no single winner: {_names(group)} are tied ({why}){hint}"
    # Overlap is not transitive: name the first variant that is clearly behind every one of them.
    behind = next((r for r in results if r not in group and not any(tied(r, g) for g in group)), None)
    if behind is None:
        return said
    return f"{said}; {'both' if len(group) == 2 else 'all'} clearly ahead of {behind.name} ({_outcome(behind)})"


def _why_tied(r: VariantResult) -> str:
    if r.recovered:
        return "95 % CIs of the time back to 99 % online overlap"
    return "none of them recovered in every run; 95 % CIs of attempts per episode overlap"


def _apart_hint(top: VariantResult, others: list[VariantResult]) -> str:
    """`; tied at R = 2, but every run of a beat every run of b: run --replications 5 or more to
    separate them`, for the variants tied with `top` whose runs do not overlap with its runs."""
    winners = [(other, runs_apart(top, other)) for other in others]
    beaten = [other for other, winner in winners if winner is top]
    clauses = [f"every run of {top.name} beat every run of {_names(beaten)}"] if beaten else []
    clauses += [f"every run of {other.name} beat every run of {top.name}" for other, winner in winners
                if winner is other]
    if not clauses:
        return ""
    return (f"; tied at R = {top.replications}, but {'; '.join(clauses)}: run --replications "
            f"{_more_runs(top.replications)} or more to separate them")


def _outcome(r: VariantResult) -> str:
    if not r.recovered:
        return f"not back to 99 % online in {r.replications - r.recovered_runs()} of {r.replications} runs"
    p99 = r.summary["recovery_s"]["p99"]
    if p99 == 0:
        return "never fell below 99 % online"
    return f"back to 99 % online {_duration(p99)} after the first event"


def _gap(top: VariantResult, nxt: VariantResult) -> str:
    """How far ahead of the next variant: recovery first, then attempts per episode."""
    if top.recovered and nxt.recovered:
        a, b = top.summary["recovery_s"]["p99"], nxt.summary["recovery_s"]["p99"]
        gap = f"{_times(b / a)} faster than {nxt.name} (next)" if a > 0 else f"{nxt.name} (next) took {_duration(b)}"
    else:
        gap = f"{nxt.name} (next) was {_outcome(nxt)}"
    amp_top, amp_next = top.summary["amplification"], nxt.summary["amplification"]
    if amp_top is not None and amp_next is not None:
        gap += f"; {amp_top:.3g} vs {amp_next:.3g} attempts per episode"
    return gap


def _names(results: list[VariantResult]) -> str:
    names = [r.name for r in results]
    return " and ".join(names) if len(names) <= 2 else ", ".join(names[:-1]) + " and " + names[-1]


def _duration(seconds: float) -> str:
    return format_duration(round(seconds)) if seconds >= 60 else f"{seconds:.3g}s"


def _times(ratio: float) -> str:
    return f"{ratio:.2g}x" if ratio < 100 else f"{ratio:.0f}x"


def table_rows(results: list[VariantResult]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the ranked table as text, for the terminal and the HTML page."""
    headers = ["rank", "variant", "recovery 99 %", "recovery 90 %", "attempts / episode",
               "peak offered /s", "wasted work", "metastable", "tied with"]
    # a column for what limiters kept from the tier, when one bound (docs/model.md section 4.7)
    limited = any(r.summary.get("suppressed") or r.summary.get("short_circuited") for r in results)
    if limited:
        headers.insert(7, "retries denied / calls refused locally")
    rows = []
    for r in results:
        s = r.summary
        wasted = s["wasted_work_fraction"]
        row = [
            str(r.rank), r.name, _recovery_cell(r, "p99"), _recovery_cell(r, "p90"),
            _with_ci(s["amplification"], _ci(r, "amplification"), "{:.3g}"),
            f"{s['peak_offered_rps']:,.0f}", "n/a" if wasted is None else f"{wasted:.0%}",
            f"{s['metastable_share']:.0%}", _tied_cell(r, results),
        ]
        if limited:
            row.insert(7, f"{s.get('suppressed') or 0:,.0f} / {s.get('short_circuited') or 0:,.0f}")
        rows.append(row)
    return headers, rows


def _tied_cell(r: VariantResult, results: list[VariantResult]) -> str:
    """`a, b (runs apart from b: --replications 5 would likely separate them)`, or `-`."""
    if not r.tied_with:
        return "-"
    apart = [o.name for o in results if o.name in r.tied_with and runs_apart(r, o) is not None]
    if not apart:
        return ", ".join(r.tied_with)
    whom = "all of them" if len(apart) == len(r.tied_with) > 1 else ", ".join(apart)
    return (f"{', '.join(r.tied_with)} (runs apart from {whom}: --replications {_more_runs(r.replications)} "
            "would likely separate them)")


def _recovery_cell(r: VariantResult, level: str) -> str:
    missing = r.replications - r.recovered_runs(level)
    if missing:
        return f"never in {missing}/{r.replications} runs"
    return _with_ci(r.summary["recovery_s"][level], _ci(r, "recovery_s", level), None)


def _with_ci(value: float | None, ci: tuple[float, float] | None, fmt: str | None) -> str:
    """`1m51s ± 0.3s`: the mean and the half-width of its 95 % CI (none with one replication);
    `28m25s [0s, 1h26m35s]` where the CI was cut at 0 and is no longer centred on the mean."""
    if value is None:
        return "n/a"
    show = _duration if fmt is None else fmt.format
    if ci is None or not all(math.isfinite(x) for x in ci):
        return show(value)
    low, high = ci
    if not math.isclose(high - value, value - low, rel_tol=1e-9, abs_tol=1e-12):
        return f"{show(value)} [{show(low)}, {show(high)}]"
    return f"{show(value)} ± {show((high - low) / 2)}"


# --- writing ------------------------------------------------------------------------------

def write_outputs(comparison: Comparison, out_dir: Path) -> list[Path]:
    """compare.json, compare.csv, the overlay figure (PNG, SVG) and compare.html in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [_write_json(comparison, out_dir / "compare.json"), _write_csv(comparison, out_dir / "compare.csv")]
    return paths + _write_report(comparison, out_dir, paths)


def to_json(comparison: Comparison) -> dict[str, Any]:
    """What compare.json holds: the ranking, the closing line and each variant's combined summary."""
    s = comparison.scenario
    return finite_json({
        "scenario": s.name, "description": s.description, "source": s.source,
        "replications": comparison.replications, "until_s": comparison.until, "ranking": RANKING,
        "closing": closing_line(comparison.results),
        "variants": [{"name": r.name, "sets": list(r.variant.sets), "rank": r.rank, "tied_with": r.tied_with,
                      "recovered_runs": r.recovered_runs(), "summary": r.summary} for r in comparison.results],
    })


def _write_json(comparison: Comparison, path: Path) -> Path:
    path.write_text(json.dumps(to_json(comparison), indent=2) + "\n")
    return path


def _write_csv(comparison: Comparison, path: Path) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_FIELDS)
        for r in comparison.results:
            writer.writerow([_csv_cell(v) for v in _csv_row(r)])
    return path


def _csv_row(r: VariantResult) -> list[Any]:
    s = r.summary
    p99_ci = _ci(r, "recovery_s", "p99") or (None, None)
    amp_ci = _ci(r, "amplification") or (None, None)
    return [r.rank, r.name, " ".join(r.tied_with), r.replications, r.recovered_runs(),
            s["recovery_s"]["p90"], s["recovery_s"]["p99"], *p99_ci, s["amplification"], *amp_ci,
            s["attempts"], s["peak_offered_rps"], s["wasted_work_fraction"], s["metastable_share"],
            s["logins"], s["gave_up"], s["login_time_s"]["p50"], s["login_time_s"]["p99"],
            s.get("suppressed"), s.get("short_circuited"), s.get("rejected"), s.get("resumptions"), s.get("resumed")]


def _csv_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _run_line(comparison: Comparison) -> str:
    s, r = comparison.scenario, comparison.replications
    seeds = "the same seeds for every variant (common random numbers)" if r > 1 else f"seed {s.seed}"
    until = f", each stopped at {format_duration(comparison.until)}" if comparison.until is not None else ""
    return (f"{plural(s.population.clients, 'client')}, {plural(s.server.workers, 'worker')}, "
            f"{format_duration(s.duration)} "
            f"simulated{until}; {r} replication{'s' if r > 1 else ''} per variant with {seeds}.")


def _write_report(comparison: Comparison, out_dir: Path, data: list[Path]) -> list[Path]:
    # Imported here: the worker processes import this module and need no matplotlib.
    from sim.plots import compare_figure, figure_images
    from sim.report import figure_html, html_page, table_html, write_html

    s = comparison.scenario
    fig = compare_figure({r.name: r.timeseries for r in comparison.results}, s,
                         scenarios={r.name: r.scenario for r in comparison.results if r.scenario is not None})
    r = comparison.replications
    png, figures = figure_images(fig, out_dir / "compare")
    figure = figure_html(png, "Online share and offered load of every variant"
                              + (f", each the mean over its {r} replications" if r > 1 else "")
                              + ". Lines that coincide hide each other; the table has every variant's numbers.")
    headers, rows = table_rows(comparison.results)
    links = " · ".join(f'<a href="{escape(p.name)}">{escape(p.name)}</a>' for p in data + figures)
    overrides = [[r.name, " ".join(r.variant.sets) or "(as written)"] for r in comparison.results]
    body = "\n".join([
        f"<h1>{escape(s.name)}: {len(comparison.results)} variants compared</h1>",
        f'<p class="lead">{escape(s.description)}</p>',
        f'<div class="verdict">{escape(closing_line(comparison.results))}</div>',
        "<h2>Ranking</h2>",
        f"<p>{escape(_run_line(comparison))}</p>",
        "<p>Best first, by the time until 99 % of the clients that want to be online are back online "
        "(mean over the replications); a variant that never got there in some replication ranks after "
        "all that always did. Equal times are ordered by attempts per episode. Variants whose 95 % "
        "confidence intervals overlap are marked as tied: the runs cannot tell them apart.</p>",
        table_html(headers, rows),
        '<p class="note">Columns: <b>recovery 99 % / 90 %</b>: time from the first event until that share '
        "of clients is online again; <b>attempts / episode</b>: login attempts per client that had to log in "
        "(1 = no retries); <b>peak offered /s</b>: the busiest bin's attempts per second; <b>wasted work</b>: "
        "share of the workers' busy time spent on requests that finished after their client's timeout; "
        "<b>metastable</b>: share of "
        "replications where the storm sustained itself after its trigger ended. "
        "Values are means ± the half-width of their 95 % CI, or a mean and its CI [low, high] where the CI "
        "was cut at 0 (none of these quantities can be negative).</p>",
        "<h2>Side by side</h2>", figure,
        "<h2>Variants</h2>", table_html(["variant", "overrides"], overrides),
        f"<h2>Data</h2><p>{links}</p>",
    ])
    page = write_html(out_dir / "compare.html", html_page(f"{s.name}: compare", body))
    return figures + [page]
