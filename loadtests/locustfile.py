"""Replay a scenario's login storm with Locust: one user per device.

    loginstorm lab --write-credentials users.csv --users 1000 --serve          # one terminal
    locust -f loadtests/locustfile.py --headless --scenario scenarios/quickstart.toml \\
        --scale 0.1 --speed 10 --credentials users.csv --host http://127.0.0.1:8080 -t 60s

Options (besides Locust's own): --scenario, --set KEY=VALUE, --policy, --scale, --speed,
--credentials, --target, --storm-seed, --attempt-log. The shape spawns every device at once and
stops at the end of the story (or at -t); -u and -r are not used. Works headless, with the web
UI and distributed (--processes N, or --master/--worker).
"""

from locust import events  # noqa: F401  (Locust first: gevent monkey-patches at import)

from loadtests.device import DeviceUser
from loadtests.runtime import StormShape  # noqa: F401  (registers the options and listeners too)


class Device(DeviceUser):
    """A device of the scenario (loadtests/device.py)."""
