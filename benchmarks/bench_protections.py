"""What the adaptive server protections and resumption cost the engines (docs/model.md sections 3.3, 3.4).

    .venv/bin/python benchmarks/bench_protections.py           # quickstart x 40 (200,000 clients), 5 rounds
    .venv/bin/python benchmarks/bench_protections.py 10 3      # quickstart x 10, 3 rounds

The same method as bench_limiters.py (whose `measure` and `report` it uses): quickstart cut at 20 minutes on
the fast engine, and at 1/40 of the scale on des, each variant in turn, round after round;
medians. Three variants run the very same storm as "none", so their ratio is the protection's
own bookkeeping: a concurrency limit too high to bind (a sample at every service end), CoDel with
a target too long to ever shed (a check at every service start), and a resume window with no
token left (quickstart's wave is a reboot, which forgets them: a test per attempt). The others
change the storm (early 503s, sheds), so their figures are indicative.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_limiters import report  # noqa: E402

VARIANTS = {
    "none": [],
    "aimd, never binds": ["server.concurrency.kind=aimd", "server.concurrency.initial=1000000",
                          "server.concurrency.min=1000000", "server.concurrency.max=1000000"],
    "codel, never sheds": ["server.codel.target=1h", "server.codel.interval=2h"],
    "resume, no tokens": ["client.resume_window=inf", "server.resume.service_time=10ms"],
    "aimd": ["server.concurrency.kind=aimd"],
    "gradient": ["server.concurrency.kind=gradient"],
    "codel + adaptive lifo": ["server.codel.target=5ms"],
    "retry-after from queue": ["server.retry_after_from=queue"],
}


def main() -> int:
    return report(VARIANTS, "protection", sys.argv)


if __name__ == "__main__":
    raise SystemExit(main())
