"""A fingerprint of the simulator's outputs, for redesigns that must not change them.

Runs every shipped scenario briefly (a small scale, a short `--until`) on both engines through the
`loginstorm simulate` command, and hashes each run's `summary.json` (without the fields that
measure the machine: wall clock and compile time) and `timeseries.csv`. Take it before the first
commit of a redesign and after the last: the two lines `all` must be equal.

    .venv/bin/python benchmarks/hash_outputs.py            # one line per run, then `all <sha256>`
    .venv/bin/python benchmarks/hash_outputs.py --out /tmp/h   # keep the runs' folders
    .venv/bin/python benchmarks/hash_outputs.py --without suppressed,short_circuited

`--without` drops summary keys and time-series columns before hashing (the CSV is then hashed
as parsed rows), so that a change which only adds outputs can show that the old ones are equal.

Not a timing: it runs each scenario once, for its outputs.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGINSTORM = Path(sys.executable).with_name("loginstorm")

# scale and --until per shipped scenario: large enough to reach each storm's first event and its
# retries, small enough that the reference engine takes seconds.
RUNS = {
    "quickstart": ("1", "20m"),
    "every-key": ("0.15", "2h"),
    "discord-restart": ("0.005", "30m"),
    "exchange-2014": ("0.002", "3h"),
    "failover-dns": ("0.02", "1h"),
    "failover-ip": ("0.02", "1h"),
    "lync-2014": ("0.004", "2h"),
    "monday-morning": ("0.01", "3h"),
    "roblox-2021": ("0.005", "2h"),
    "skype-2007": ("0.002", "6h"),
    "skype-2010": ("0.0005", "6h"),
}
MACHINE_FIELDS = ("wallclock_s", "compile_s")


def digest(folder: Path, without: tuple[str, ...] = ()) -> str:
    """sha256 over the run's summary (machine fields dropped, keys sorted) and its time series."""
    summary = json.loads((folder / "summary.json").read_text())
    for name in MACHINE_FIELDS + without:
        summary.pop(name, None)
    h = hashlib.sha256(json.dumps(summary, sort_keys=True).encode())
    if not without:
        h.update((folder / "timeseries.csv").read_bytes())
        return h.hexdigest()
    with open(folder / "timeseries.csv", newline="") as f:
        rows = list(csv.reader(f))
    keep = [i for i, name in enumerate(rows[0]) if name not in without]
    for row in rows:
        h.update(",".join(row[i] for i in keep).encode() + b"\n")
    return h.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--without", default="", help="comma-separated summary keys and columns to leave out")
    args = parser.parse_args()
    without = tuple(name for name in args.without.split(",") if name)
    base = args.out or Path(tempfile.mkdtemp(prefix="loginstorm-hash-"))
    total = hashlib.sha256()
    for name, (scale, until) in RUNS.items():
        for engine in ("des", "fast"):
            folder = base / f"{name}-{engine}"
            subprocess.run([str(LOGINSTORM), "simulate", str(ROOT / "scenarios" / f"{name}.toml"), "--scale", scale,
                            "--until", until, "--engine", engine, "--out", str(folder), "--quiet"],
                           check=True)
            line = f"{name:16} {engine:4} {digest(folder, without)}"
            print(line, flush=True)
            total.update(line.encode())
    print(f"all {total.hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
