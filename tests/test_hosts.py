"""Load-test hosts and local device failures (issue 18, part 6).

One host check (`loadtests.storm.check_host`) for `loadtest`, `calibrate` and the Locust processes:
each bad host is refused before anything starts, by a message that names where the host came from
(`--host` or `target.host`) and shows it, never a password. A device that fails locally (an
exception inside it, not an HTTP failure) makes `loginstorm loadtest` exit 1 and say so.

Real HTTP on 127.0.0.1 only: the lab (tests/lab_process.py), started and stopped by its PID.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import loadtests.command
from lab_process import running_lab
from loadtests.storm import StormError, check_host, host_error

PASSWORD = "pw-Hosts-7e2b"

# -- the parser ------------------------------------------------------------------------------

GOOD = [
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
    ("HTTP://localhost", "http://localhost"),
    ("https://localhost:1", "https://localhost:1"),
    ("http://localhost:65535", "http://localhost:65535"),
    ("http://[::1]:8080", "http://[::1]:8080"),
    ("http://[::1]", "http://[::1]"),
    ("https://auth.staging.example.com", "https://auth.staging.example.com"),   # on allowed_hosts
]

BAD = [
    ("http://[::1", "--host 'http://[::1': an IPv6 address goes in brackets, whole and well-formed"),
    ("http://[::1]x", "an IPv6 address goes in brackets"),
    ("http://[zz]:80", "an IPv6 address goes in brackets"),
    ("http://::1:8080", "an IPv6 address goes in brackets"),
    ("http://h]x", "an IPv6 address goes in brackets"),
    ("http://127.0.0.1:99999", "--host 'http://127.0.0.1:99999': the port must be a whole number from 1 to 65535, "
                               "got '99999'"),
    ("http://127.0.0.1:0", "from 1 to 65535, got '0'"),
    ("http://127.0.0.1:http", "from 1 to 65535, got 'http'"),
    ("http://127.0.0.1:", "from 1 to 65535, got ''"),
    ("http://", "--host 'http://': no host after http://; give one, such as http://127.0.0.1:8080"),
    ("https://:8080", "no host after https://"),
    ("ftp://127.0.0.1:8080", "--host 'ftp://127.0.0.1:8080': ftp:// is not supported; use http:// or https://"),
    ("ws://localhost", "ws:// is not supported"),
    ("127.0.0.1:8089", "--host '127.0.0.1:8089': give a URL with its scheme, such as http://127.0.0.1:8089"),
    ("localhost:8080", "give a URL with its scheme, such as http://localhost:8080"),
    ("://localhost", "give a URL with its scheme, such as http://localhost"),
    ("", "--host '': give a URL with its scheme"),
    ("http://local host", "a URL holds no spaces"),
    ("http://127.0.0.1:8080/oauth/token", "give the base URL only, with no path, query or fragment, such as "
                                          "http://127.0.0.1:8080"),
    ("http://127.0.0.1:8080?a=1", "no path, query or fragment"),
    ("http://127.0.0.1:8080/#top", "no path, query or fragment"),
    ("http://example.invalid", "--host 'http://example.invalid': example.invalid is not on the target's "
                               "allowed_hosts"),
    ("https://auth.example.com:8443", "auth.example.com is not on the target's allowed_hosts"),
    ("http://0.0.0.0:8080", "not on the scenario's target.allowed_hosts"),
    ("http://alice:hunter2@127.0.0.1:9", "--host 'http://***@127.0.0.1:9': no user:password@"),
    ("alice:hunter2@auth.example.com", "--host '***@auth.example.com': no user:password@"),
    ("http://alice:hun://ter2@127.0.0.1:9", "--host 'http://***@127.0.0.1:9'"),
]


@pytest.mark.parametrize("host, base", GOOD)
def test_a_good_host_gives_its_base_url(host, base):
    assert check_host(host, ["auth.staging.example.com"]) == base
    assert host_error(host, ["auth.staging.example.com"]) is None


@pytest.mark.parametrize("host, says", BAD)
def test_a_bad_host_is_named_shown_and_explained(host, says):
    message = host_error(host, ["auth.staging.example.com"])
    assert message is not None and says in message, message
    assert "hunter2" not in message and "alice" not in message
    with pytest.raises(StormError, match=r"^target\.host '"):
        check_host(host, [], "target.host")


# -- the commands: refused at once, nothing started -------------------------------------------

def invoke(*args: str):
    from sim.cli import app
    start = time.monotonic()
    result = CliRunner().invoke(app, list(args))
    return result, time.monotonic() - start


@pytest.fixture
def no_locust(monkeypatch):
    """Fail the test if the command starts Locust (or any subprocess)."""
    started = []

    def refuse(*args, **kwargs):
        started.append(args)
        raise AssertionError("a process was started")

    monkeypatch.setattr(loadtests.command.subprocess, "Popen", refuse)
    return started


@pytest.mark.parametrize("host, says", [
    ("http://[::1", "--host 'http://[::1': an IPv6 address goes in brackets"),
    ("http://127.0.0.1:99999", "--host 'http://127.0.0.1:99999': the port must be a whole number from 1 to 65535"),
    ("http://", "--host 'http://': no host after http://"),
    ("ftp://127.0.0.1:8080", "--host 'ftp://127.0.0.1:8080': ftp:// is not supported; use http:// or https://"),
])
def test_loadtest_refuses_a_bad_host_before_starting_anything(tmp_path, no_locust, host, says):
    users = tmp_path / "users.csv"
    users.write_text(f"username,password\nalice,{PASSWORD}\n")
    out = tmp_path / "out"
    result, seconds = invoke("loadtest", "quickstart", "--host", host, "--credentials", str(users), "--out", str(out))
    assert result.exit_code == 2, result.output
    assert says in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert no_locust == [] and not out.exists() and seconds < 5


def test_a_bad_target_host_names_the_key(tmp_path, no_locust):
    users = tmp_path / "users.csv"
    users.write_text(f"username,password\nalice,{PASSWORD}\n")
    result, _ = invoke("loadtest", "quickstart", "--set", 'target={host="http://127.0.0.1:99999", flow="json"}',
                       "--credentials", str(users), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "target.host 'http://127.0.0.1:99999': the port must be" in result.stderr
    assert no_locust == []


@pytest.mark.parametrize("host, says", [
    ("http://[::1", "--host 'http://[::1': an IPv6 address goes in brackets"),
    ("ftp://127.0.0.1:8080", "ftp:// is not supported"),
])
def test_calibrate_uses_the_same_check(tmp_path, monkeypatch, host, says):
    import loadtests.calibrate

    monkeypatch.setattr(loadtests.calibrate, "round_trip", lambda *a, **k: pytest.fail("calibrate sent a request"))
    users = tmp_path / "users.csv"
    users.write_text(f"username,password\nalice,{PASSWORD}\n")
    result, seconds = invoke("calibrate", "quickstart", "--host", host, "--credentials", str(users))
    assert result.exit_code == 2 and says in result.stderr and "Traceback" not in result.output
    assert seconds < 5


@pytest.mark.parametrize("args, says", [
    (["--run-time", "soon"], "Invalid value for --run-time"),
    (["--run-time", "0s"], "Invalid value for --run-time: must be > 0"),
    (["--stop-after", "x"], "Invalid value for --stop-after"),
    (["--stop-on-p99", "x"], "Invalid value for --stop-on-p99"),
    (["--credentials", "no/such/users.csv"], "--credentials no/such/users.csv: no such credentials file"),
    (["--target", "no/such/target.toml"], "--target no/such/target.toml: no such file"),
    (["--out", "/proc/no/such/folder"], "--out /proc/no/such/folder: cannot make the folder"),
])
def test_every_option_error_names_its_option(tmp_path, no_locust, args, says):
    users = tmp_path / "users.csv"
    users.write_text(f"username,password\nalice,{PASSWORD}\n")
    result, _ = invoke("loadtest", "quickstart", "--host", "http://127.0.0.1:9", "--credentials", str(users), *args)
    assert result.exit_code == 2, result.output
    assert says in " ".join(result.stderr.replace("│", " ").split()), result.stderr
    assert "internal error" not in result.output and no_locust == []


# -- a device that fails locally --------------------------------------------------------------

LOOP = """
name = "broken"
duration = "30s"
[population]
clients = 3
online_at_start = 0.0
offline = "0s"
session = "inf"
[client]
timeout = "5s"
policy = { name = "constant", base = "0.5s" }
[server]
workers = 4
service_time = "1ms"
[target]
host = "http://127.0.0.1:1"
flow = "json"
path = "/api/login"
"""

# A locustfile whose devices raise after each real attempt (in the activity greenlet, where Locust
# does not look by itself), with the device's password in the message
BROKEN = """
from locust import events  # noqa: F401
from loadtests.device import DeviceUser
from loadtests.runtime import StormShape  # noqa: F401


class Device(DeviceUser):
    def _attempt(self, *args, **kwargs):
        super()._attempt(*args, **kwargs)
        password = self.storm.accounts.for_device(self.row).password.reveal()
        raise RuntimeError(f"broken on purpose after a real attempt, password {password}")
"""


def test_devices_that_raise_make_the_load_test_exit_1_and_say_so(tmp_path, monkeypatch):
    scenario = tmp_path / "broken.toml"
    scenario.write_text(LOOP)
    users = tmp_path / "users.csv"
    users.write_text("username,password\n" + "".join(f"user{i},{PASSWORD}\n" for i in range(3)))
    locustfile = tmp_path / "broken_locustfile.py"
    locustfile.write_text(BROKEN)
    monkeypatch.setattr(loadtests.command, "LOCUSTFILE", locustfile)
    out = tmp_path / "out"
    with running_lab(str(scenario), "--credentials", str(users)) as lab:
        result, _ = invoke("loadtest", str(scenario), "--host", lab.url, "--credentials", str(users), "--out",
                           str(out), "--run-time", "3s", "--capacity", "none", "-q")
        served = lab.metrics()['loginstorm_lab_logins_total{result="success"}']
    assert served >= 3                                                   # the attempts were real
    assert result.exit_code == 1, result.output
    line = next(x for x in result.stderr.splitlines() if "inside the devices" in x)
    assert line.startswith("loginstorm loadtest: 3 exceptions inside the devices"), line
    assert "RuntimeError: broken on purpose after a real attempt, password ***" in line
    texts = [result.output] + [p.read_text(errors="replace") for p in out.iterdir() if p.is_file()]
    assert all(PASSWORD not in text for text in texts)
    with (out / "locust_exceptions.csv").open() as handle:                # Locust's own record of them
        rows = list(csv.DictReader(handle))
    assert sum(int(r["Count"]) for r in rows) == 3 and "_attempt" in rows[0]["Traceback"]
    assert (out / "summary.json").exists()                               # the outputs are written all the same


def test_the_same_storm_without_the_fault_exits_0(tmp_path):
    """The control: the scenario, users and lab of the test above, with the shipped locustfile."""
    scenario = tmp_path / "broken.toml"
    scenario.write_text(LOOP)
    users = tmp_path / "users.csv"
    users.write_text("username,password\n" + "".join(f"user{i},{PASSWORD}\n" for i in range(3)))
    with running_lab(str(scenario), "--credentials", str(users)) as lab:
        result, _ = invoke("loadtest", str(scenario), "--host", lab.url, "--credentials", str(users), "--out",
                           str(tmp_path / "out"), "--run-time", "3s", "--capacity", "none", "-q")
    assert result.exit_code == 0, result.output
    assert "inside the devices" not in result.output
    assert Path(tmp_path / "out" / "summary.json").exists()
