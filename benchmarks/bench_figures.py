"""Drawing time and file size of the run and compare figures against the number of events.

    .venv/bin/python benchmarks/bench_figures.py            # 3, 1,000 and 20,000 events
    .venv/bin/python benchmarks/bench_figures.py 5000

Each scenario is quickstart with 500 clients and N small reboot waves (one of 30 %, an outage
every 500th), written as one inline array; it is simulated once on `des`, then its figures are
drawn and saved (PNG and SVG) and timed apart from the simulation. Beyond 30 marks the figures
aggregate the events (sim/plots: merged bands, a strip counting them, labels for the first and
the largest of each kind), so drawing time and SVG size stay flat.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sim.config import parse_scenario  # noqa: E402
from sim.des import run  # noqa: E402
from sim.plots import compare_figure, figure_images, run_figure  # noqa: E402


def scenario_text(n: int) -> str:
    """quickstart at 500 clients with `n` events instead of its one reboot wave."""
    rng = np.random.default_rng(7)
    base = (ROOT / "scenarios" / "quickstart.toml").read_text().split("[[events]]")[0]
    base = base.replace('name = "quickstart"', f'name = "many{n}"').replace("clients = 5_000", "clients = 500")
    rows = []
    for k, at in enumerate(np.sort(rng.uniform(60, 3500, n))):
        if k % 500 == 499:
            rows.append(f'{{at={at:.1f},kind="outage",duration=20}}')
        else:
            fraction = 0.3 if k == n // 3 else float(rng.uniform(0.001, 0.02))
            rows.append(f'{{at={at:.1f},kind="reboot",fraction={fraction:.3f}}}')
    return base.replace("[population]", "events = [\n" + ",\n".join(rows) + "]\n\n[population]")


def measure(n: int, out: Path) -> str:
    s = parse_scenario(scenario_text(n), f"many{n}")
    t0 = time.perf_counter()
    r = run(s)
    t1 = time.perf_counter()
    _, paths = figure_images(run_figure(r.timeseries, r.scenario), out / f"storm{n}")
    t2 = time.perf_counter()
    figure_images(compare_figure({"a": r.timeseries}, r.scenario), out / f"compare{n}")
    t3 = time.perf_counter()
    svg = next(p for p in paths if p.suffix == ".svg")
    return (f"{n:>6,} events: simulate {t1 - t0:6.2f} s | run figure {t2 - t1:5.2f} s, SVG "
            f"{svg.stat().st_size / 1e6:5.2f} MB | compare figure {t3 - t2:5.2f} s, SVG "
            f"{(out / f'compare{n}.svg').stat().st_size / 1e6:5.2f} MB")


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [3, 1_000, 20_000]
    with tempfile.TemporaryDirectory() as folder:
        for n in sizes:
            print(measure(n, Path(folder)), flush=True)


if __name__ == "__main__":
    main()
