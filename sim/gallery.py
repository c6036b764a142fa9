"""The gallery (docs/gallery.md): every shipped scenario run at the scale its description states,
one figure each.

    python -m sim.gallery --out docs/gallery          # or: make gallery

Each scenario's description ends with "Runs in under a minute at --scale S"; that S is used
(1 where none is stated). The figures are written from the real runs, with `gallery.json`
holding each run's scale, wall-clock time and headline numbers, so the gallery's table can be
checked against it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from sim.config import load_scenario, shipped_scenarios

__all__ = ["stated_scale", "main"]

_SCALE = re.compile(r"--scale\s+([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)")


def stated_scale(description: str) -> float:
    """The `--scale` a scenario's description says it runs at in under a minute (1 if none)."""
    found = _SCALE.search(description)
    return float(found.group(1)) if found else 1.0


def _one(path: Path, out: Path) -> dict:
    from sim import des
    from sim.plots import gallery_figure, save_figure

    full = load_scenario(path)
    scale = stated_scale(full.description)
    s = load_scenario(path, scale=scale)
    started = time.perf_counter()
    result = des.run(s)
    seconds = time.perf_counter() - started
    save_figure(gallery_figure(result.timeseries, s), out / s.name, svg=False)
    summary = result.summary
    return {"scenario": s.name, "scale": scale, "clients": s.population.clients, "wallclock_s": round(seconds, 1),
            "recovery_s": summary["recovery_s"], "metastable": summary["metastable"],
            "peak_offered_rps": summary["peak_offered_rps"], "capacity_rps": summary["capacity_rps"],
            "figure": f"{s.name}.png"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/gallery"))
    parser.add_argument("--jobs", type=int, default=None, help="scenarios run in parallel (default: one per core)")
    parser.add_argument("names", nargs="*", help="only these scenarios (default: every shipped one)")
    args = parser.parse_args(argv)
    paths = [p for p in shipped_scenarios() if p.stem != "every-key" and (not args.names or p.stem in args.names)]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for row in pool.map(_one, paths, [args.out] * len(paths)):
            print(f"{row['scenario']:<18} scale {row['scale']:<7g} {row['clients']:>9,} clients  "
                  f"{row['wallclock_s']:>6.1f} s  -> {args.out / row['figure']}", file=sys.stderr)
            rows.append(row)
    index = args.out / "gallery.json"
    old = json.loads(index.read_text()) if index.exists() and args.names else []
    merged = {r["scenario"]: r for r in old} | {r["scenario"]: r for r in rows}
    index.write_text(json.dumps(sorted(merged.values(), key=lambda r: r["scenario"]), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
