"""Reading scenario files: any bytes become a scenario or one located `FILE: ...` line, never a traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sim.cli import app
from sim.config import (
    MAX_FILE_BYTES, ScenarioError, ScenarioFile, load_scenario, parse_scenario, parse_target, read_scenario,
    resolve_scenario_path, shipped_scenarios,
)

QUICKSTART = next(p for p in shipped_scenarios() if p.stem == "quickstart")
GOOD = QUICKSTART.read_bytes()
BASE = 'name = "t"\nduration = "1h"\n[server]\nworkers = 4\nservice_time = "50ms"\n'


def _deep_header(depth: int) -> bytes:
    """A table header `[server.a.a...]`: tomllib reads it without recursion, the later steps recurse."""
    return (BASE + "[" + ".".join(["server"] + ["a"] * depth) + "]\n").encode()


#: (file bytes, fragments that the one message about the file must contain)
BAD_BYTES = [
    pytest.param(b"\xe9", ["is not UTF-8 text: byte 0xE9 at line 1, column 1 (byte offset 0); save it as UTF-8"],
                 id="latin-1-byte"),
    pytest.param(b'name = "t"\n# caf\xe9\n', ["is not UTF-8 text: byte 0xE9 at line 2, column 6 (byte offset 16)"],
                 id="latin-1-in-a-comment"),
    pytest.param(bytes(range(128, 256)) * 4, ["is not UTF-8 text: byte 0x80 at line 1, column 1"], id="garbage"),
    pytest.param(b"\x7fELF\x02\x01\x01\x00\x00\x00\x00", ["looks binary (a NUL byte at byte offset 7), "
                                                          "not a TOML text file"], id="binary-with-nul"),
    pytest.param("name = 't'\n".encode("utf-16"), ["is UTF-16 text (byte-order mark FF FE); save it as UTF-8"],
                 id="utf-16-le-bom"),
    pytest.param(b"\xfe\xff" + "name = 't'\n".encode("utf-16-be"), ["is UTF-16 text (byte-order mark FE FF)"],
                 id="utf-16-be-bom"),
    pytest.param("name = 't'\n".encode("utf-16-le"), ["looks like UTF-16 text", "save it as UTF-8"],
                 id="utf-16-no-bom"),
    pytest.param(b"x = " + b"[" * 5000 + b"]" * 5000, ["nested too deeply"], id="deep-arrays"),
    pytest.param(b"x = " + b"{a=" * 5000 + b"1" + b"}" * 5000, ["nested too deeply"], id="deep-inline-tables"),
    pytest.param(_deep_header(3000), ["nested too deeply"], id="deep-table-header"),
    pytest.param(BASE.encode() + b"retry_after = 1" + b"0" * 400 + b"\n",
                 ["server.retry_after: whole number outside TOML's 64-bit range, got a 401-digit number"],
                 id="integer-past-64-bits"),
    pytest.param(b"# " + b"x" * MAX_FILE_BYTES + b"\n",
                 [f"is {MAX_FILE_BYTES + 3:,} bytes, more than the {MAX_FILE_BYTES:,} bytes a scenario file may have"],
                 id="over-1-MiB"),
]


@pytest.mark.parametrize(("data", "fragments"), BAD_BYTES)
def test_bad_bytes_are_one_located_line(tmp_path, data, fragments):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(data)
    with pytest.raises(ScenarioError) as info:
        load_scenario(bad)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"{bad}: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


@pytest.mark.parametrize(("data", "fragments"), BAD_BYTES)
def test_validate_reports_a_bad_file_and_still_the_good_one(tmp_path, data, fragments):
    bad, good = tmp_path / "bad.toml", tmp_path / "good.toml"
    bad.write_bytes(data)
    good.write_bytes(GOOD)
    result = CliRunner().invoke(app, ["validate", str(bad), str(good)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert f"{bad}: {fragments[0]}" in result.stderr, result.stderr
    assert f"{good}: ok  quickstart:" in result.stdout


def test_a_huge_file_is_refused_by_its_size_without_being_read(tmp_path):
    huge = tmp_path / "huge.toml"
    with huge.open("wb") as f:  # sparse: 4 GiB on paper, nothing on disk
        f.truncate(4 << 30)
    with pytest.raises(ScenarioError, match=r"huge.toml: is 4,294,967,296 bytes, more than the 1,048,576 bytes"):
        read_scenario(huge)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    with_bom = tmp_path / "bom.toml"
    with_bom.write_bytes(b"\xef\xbb\xbf" + GOOD)
    assert load_scenario(with_bom).model_dump() == load_scenario(QUICKSTART).model_dump()
    assert ScenarioFile.parse("\ufeff" + BASE).scenario().server.workers == 4
    assert parse_target('\ufeff[target]\nhost = "http://127.0.0.1:8080"\nflow = "basic"').flow == "basic"


def test_a_folder_is_not_a_scenario_file(tmp_path):
    folder = tmp_path / "storms.toml"
    folder.mkdir()
    for path in (tmp_path, folder):
        with pytest.raises(ScenarioError, match=f"^{path}: is a folder, not a scenario file$"):
            read_scenario(path)


def test_a_folder_does_not_shadow_a_shipped_scenario_but_a_file_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart").mkdir()
    assert resolve_scenario_path("quickstart") == QUICKSTART
    assert load_scenario("quickstart").name == "quickstart"
    (tmp_path / "quickstart").rmdir()
    (tmp_path / "quickstart").write_text(BASE)
    assert load_scenario("quickstart").name == "t"


def test_an_unknown_name_suggests_a_shipped_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScenarioError) as info:
        load_scenario("quickstrat")
    assert str(info.value) == ("quickstrat: no such file, and no shipped scenario of that name; did you mean "
                               "'quickstart'? (`loginstorm scenarios` lists them)")
    with pytest.raises(ScenarioError, match=r"^zzz: no such file, and no shipped scenario of that name \(`logins"):
        load_scenario("zzz")
    with pytest.raises(ScenarioError, match=r"^quickstrat.toml: no such file; did you mean 'quickstart'\?$"):
        load_scenario("quickstrat.toml")
    result = CliRunner().invoke(app, ["validate", "quickstrat", "quickstart"])
    assert result.exit_code == 2 and "did you mean 'quickstart'?" in result.stderr
    assert "quickstart: ok" in result.stdout


@pytest.mark.parametrize(("scale", "fragments"), [
    (1e300, ["--scale: makes population.clients 5e+303, larger than a 64-bit count (5000 x 1e+300)",
             "--scale: makes server.workers 2e+300, larger than a 64-bit count"]),
    (1e308, ["--scale: makes population.clients larger than a 64-bit count (5000 x 1e+308)",
             "--scale: makes server.queue_limit larger than a 64-bit count (200 x 1e+308)"]),
])
def test_a_huge_scale_names_the_option_and_the_key(scale, fragments):
    with pytest.raises(ScenarioError) as info:
        load_scenario(QUICKSTART, scale=scale)
    message = str(info.value)
    for fragment in fragments:
        assert f"{QUICKSTART}: {fragment}" in message, message


def test_a_tiny_scale_that_makes_a_figure_infinite_is_refused():
    text = BASE.replace("workers = 4", "workers = 4\noverload = { knee = 10, per_request = 0.5 }")
    with pytest.raises(ScenarioError, match=r"--scale: makes server.overload.per_request infinite \(0.5 / "):
        parse_scenario(text, scale=1e-320)


def test_a_large_scale_that_fits_still_loads():
    assert load_scenario(QUICKSTART, scale=1e9).population.clients == 5_000 * 10**9


@pytest.mark.parametrize(("old", "new"), [
    ('duration = "1h"', "duration = 1e300"),
    ('duration = "1h"', 'duration = "30d"\nresolution = "1ms"'),
    ("[server]", "[population]\nclients = 1000000000000\n[server]"),
])
def test_extreme_but_well_formed_values_load(old, new):
    """Whether they fit in memory or time is for the resource check, not for reading."""
    assert parse_scenario(BASE.replace(old, new)).name == "t"


@pytest.mark.parametrize(("sets", "fragment"), [
    (["duration=1e400"], "duration: must be finite"),
    (["x=" + "[" * 5000 + "]" * 5000], "--set: nested too deeply"),
    ([".".join(["a"] * 3000) + "=1"], "--set: nested too deeply"),
    (["server.workers=1" + "0" * 400], "server.workers: whole number outside TOML's 64-bit range, got a 401-digit "
                                       "number (from --set)"),
])
def test_extreme_overrides_are_located_errors(sets, fragment):
    with pytest.raises(ScenarioError) as info:
        parse_scenario(BASE, "t.toml", sets=sets)
    assert f"t.toml: {fragment}" in str(info.value)
