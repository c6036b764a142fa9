"""Loading scenarios: TOML -> overrides -> validation -> `--scale`, with errors a person can act on.

    >>> s = load_scenario("scenarios/quickstart.toml", sets=["server.workers=80"], scale=0.5)
    >>> s.server.workers
    40

Every problem becomes one line `FILE: key.path: what was expected, got what`, collected in a
`ScenarioError` (the CLI prints them and exits with status 2). So does a file that is no
scenario at all: a folder, binary, UTF-16, not UTF-8, over 1 MiB, nested too deeply.
"""

from __future__ import annotations

import copy
import math
import os
import tomllib
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sim.overrides import apply_sets
from sim.scenario import EVENT_KINDS, Scenario, Target
from sim.suggest import did_you_mean
from sim.units import format_duration

__all__ = [
    "Problem", "ScenarioError", "ScenarioFile", "load_scenario", "read_scenario", "read_toml_text", "parse_scenario",
    "parse_target", "target_file", "MAX_FILE_BYTES",
    "scale_scenario",
    "compress_scenario",
    "shipped_scenarios", "resolve_scenario_path", "SECRET_KEYS",
]

#: keys whose values never appear in a message
SECRET_KEYS = ("secret", "password", "token")
LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")
#: a scenario or target file larger than this is refused unread (the shipped ones are a few KB)
MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a scenario: where (dotted key path) and what."""

    path: str
    message: str

    def line(self, source: str) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{source}: {where}{self.message}"


class ScenarioError(ValueError):
    """A scenario file that cannot run; `str()` is one line per problem."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(p.line(source) for p in problems))


# --- shipped scenarios --------------------------------------------------------------------

def _scenario_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "scenarios", here / "_scenarios"):  # checkout, then wheel
        if candidate.is_dir():
            return candidate
    return here.parent / "scenarios"


def shipped_scenarios() -> list[Path]:
    """The scenario files that come with loginstorm, sorted by name."""
    return sorted(_scenario_dir().glob("*.toml"))


def resolve_scenario_path(arg: str | Path) -> Path:
    """An existing file as given, else the name of a shipped scenario (`quickstart` -> scenarios/quickstart.toml).

    A bare name (no folder, no `.toml`) that is neither raises a ScenarioError with a did-you-mean;
    a folder never shadows a shipped scenario of the same name.
    """
    path = Path(arg)
    text = str(arg)
    try:
        if path.is_file():
            return path
        if path.suffix == ".toml" or "/" in text or os.sep in text:
            return path
        shipped = _scenario_dir() / f"{text}.toml"
        if shipped.is_file():
            return shipped
        if path.exists():
            return path  # a folder or a device: reading says what it is
    except OSError as exc:  # a name too long, a loop of links
        raise ScenarioError(_shown_path(text), [Problem("", f"not a usable path ({exc.strerror or exc})")]) from None
    raise ScenarioError(text, [Problem("", "no such file, and no shipped scenario of that name"
                                           f"{_shipped_hint(text)} (`loginstorm scenarios` lists them)")])


def _shown_path(text: str) -> str:
    """A path as messages show it: whole, or its ends when it is absurdly long."""
    return text if len(text) <= 200 else f"{text[:90]}...({len(text):,} characters)...{text[-90:]}"


def _shipped_hint(name: str) -> str:
    """"; did you mean 'quickstart'?" when `name` is near the name of a shipped scenario."""
    return did_you_mean(name, [p.stem for p in shipped_scenarios()])


# --- loading ------------------------------------------------------------------------------

def load_scenario(path: str | Path, sets: typing.Sequence[str] = (), scale: float = 1.0,
                  seed: int | None = None) -> Scenario:
    """Read, override (`--set key=value`), validate and scale one scenario file."""
    return read_scenario(path).scenario(sets=sets, scale=scale, seed=seed)


def parse_scenario(text: str, source: str = "<scenario>", sets: typing.Sequence[str] = (),
                   scale: float = 1.0, seed: int | None = None) -> Scenario:
    """Like `load_scenario`, from TOML text; `source` names it in messages."""
    return ScenarioFile.parse(text, source).scenario(sets=sets, scale=scale, seed=seed)


@dataclass(frozen=True)
class ScenarioFile:
    """A scenario file read and parsed once, from which many variants are built (compare, sweep).

        >>> f = read_scenario("scenarios/quickstart.toml")
        >>> [f.scenario(sets=[f"server.workers={w}"]).server.workers for w in (2, 4)]
        [2, 4]
    """

    source: str
    raw: dict[str, Any]

    @classmethod
    def parse(cls, text: str, source: str = "<scenario>") -> ScenarioFile:
        """TOML text (a leading byte-order mark allowed) as a scenario file not yet validated."""
        return cls(source, _toml(text, source))

    def scenario(self, sets: typing.Sequence[str] = (), scale: float = 1.0, seed: int | None = None) -> Scenario:
        """The file with these overrides, validated and scaled (a ScenarioError lists every problem)."""
        with _not_too_deep(self.source):
            raw = copy.deepcopy(self.raw)
        with _not_too_deep(self.source, "--set"):
            problems = [Problem(path, message) for path, message in apply_sets(raw, sets)]
            problems = problems or _out_of_range(raw, " (from --set)")  # the file's own were refused by parse
        if seed is not None:
            raw["seed"] = seed
        if problems:
            raise ScenarioError(self.source, problems)
        with _not_too_deep(self.source):
            try:
                scenario = Scenario.model_validate(raw)
            except ValidationError as exc:
                overridden = {s.partition("=")[0].strip() for s in sets}
                raise ScenarioError(self.source, [_problem(err, overridden) for err in exc.errors()]) from None
        problems = _check_consistency(scenario)
        if problems:
            raise ScenarioError(self.source, problems)
        if not (scale > 0 and math.isfinite(scale)):
            raise ScenarioError(self.source, [Problem("--scale", f"must be a number > 0, got {scale!r}")])
        scenario._source = self.source
        return scale_scenario(scenario, scale)


def read_scenario(path: str | Path) -> ScenarioFile:
    """Read and parse one scenario file (a path, or the name of a shipped scenario) once."""
    path = resolve_scenario_path(path)
    return ScenarioFile.parse(read_toml_text(path), str(path))


def read_toml_text(path: str | Path) -> str:
    """The text of a scenario or target file; a ScenarioError naming it when it is no UTF-8 text file.

    At most MAX_FILE_BYTES + 1 bytes are read; a UTF-8 byte-order mark is dropped.
    """
    path = Path(path)
    source = _shown_path(str(path))
    try:
        if path.is_dir():
            raise ScenarioError(source, [Problem("", "is a folder, not a scenario file")])
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
            size = os.fstat(f.fileno()).st_size  # 0 for a device or a pipe
    except FileNotFoundError:
        hint = _shipped_hint(path.stem) if path.suffix == ".toml" else ""
        raise ScenarioError(source, [Problem("", f"no such file{hint}")]) from None
    except OSError as exc:
        raise ScenarioError(source, [Problem("", f"cannot read: {exc.strerror or exc}")]) from None
    if len(data) > MAX_FILE_BYTES:
        size_shown = f"{size:,} bytes, " if size > MAX_FILE_BYTES else ""
        raise ScenarioError(source, [Problem("", f"is {size_shown}more than the {MAX_FILE_BYTES:,} bytes a scenario "
                                                 f"file may have (the shipped ones are a few KB)")])
    return _decoded(data, source)


def _decoded(data: bytes, source: str) -> str:
    """UTF-8 bytes as text, or a ScenarioError that says what the bytes look like instead."""
    for bom, encoding in ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                          (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")):
        if data.startswith(bom):
            raise ScenarioError(source, [Problem("", f"is {encoding} text (byte-order mark {bom.hex(' ').upper()}); "
                                                     "save it as UTF-8")])
    if _utf16_without_bom(data[:64]):
        raise ScenarioError(source, [Problem("", "looks like UTF-16 text (every other byte is NUL, no byte-order "
                                                 "mark); save it as UTF-8")])
    if b"\x00" in data:
        at = data.index(b"\x00")
        raise ScenarioError(source, [Problem("", f"looks binary (a NUL byte at byte offset {at:,}), "
                                                 "not a TOML text file")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        column = len(data[start:exc.start].decode("utf-8")) + 1
        raise ScenarioError(source, [Problem("", f"is not UTF-8 text: byte 0x{data[exc.start]:02X} at line {line}, "
                                                 f"column {column} (byte offset {exc.start:,}); save it as UTF-8")]) \
            from None
    return text.removeprefix("\ufeff")


def _utf16_without_bom(head: bytes) -> bool:
    """ASCII text as UTF-16 (a TOML file mostly is): NUL at every odd byte (little-endian) or every even byte."""
    halves = head[0::2], head[1::2]
    return len(head) >= 8 and any(h.count(0) == len(h) and 0 not in other for h, other in zip(halves, halves[::-1]))


def parse_target(text: str, source: str = "<target>") -> Target:
    """A separate target file (a `[target]` table of docs/model.md section 7), with the scenario's messages."""
    return _target_table(_toml(text, source), source)


def _toml(text: str, source: str) -> dict[str, Any]:
    """Parsed TOML (a leading byte-order mark allowed), or a ScenarioError naming `source`."""
    with _not_too_deep(source):
        try:
            raw = tomllib.loads(text.removeprefix("\ufeff"))
        except tomllib.TOMLDecodeError as exc:
            raise ScenarioError(source, [Problem("", f"not valid TOML: {exc}")]) from None
    problems = _out_of_range(raw)
    if problems:
        raise ScenarioError(source, problems)
    return raw


def _out_of_range(raw: dict[str, Any], suffix: str = "") -> list[Problem]:
    """Whole numbers outside TOML's 64-bit range (tomllib reads them; a duration cannot be one)."""
    problems, stack = [], [((), raw)]
    while stack:  # not recursive: the nesting may be as deep as tomllib allows
        loc, node = stack.pop()
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        stack.extend((loc + (key,), child) for key, child in children)
        if isinstance(node, int) and not isinstance(node, bool) and not -2**63 <= node < 2**63:
            problems.append(Problem(".".join(map(str, loc)),
                                    f"whole number outside TOML's 64-bit range, got {_number(node)}{suffix}"))
    return sorted(problems, key=lambda p: p.path)


@contextmanager
def _not_too_deep(source: str, path: str = "") -> Iterator[None]:
    """A RecursionError (arrays or tables nested thousands deep) as a ScenarioError at `path`."""
    try:
        yield
    except RecursionError:
        raise ScenarioError(source, [Problem(path, "nested too deeply (arrays or tables hundreds of levels "
                                                   "inside one another)")]) from None


def target_file(f: ScenarioFile) -> Target | None:
    """The target of a standalone target file (`--target FILE`: a file whose only table is `[target]`),
    checked as a scenario's `[target]` is (allowed hosts included); None for any other file.

        >>> target_file(ScenarioFile.parse('[target]\\nhost = "http://127.0.0.1:8080"\\nflow = "basic"')).flow
        'basic'
    """
    if set(f.raw) != {"target"}:
        return None
    target = _target_table(f.raw, f.source)
    problems = _check_target(target)
    if problems:
        raise ScenarioError(f.source, problems)
    return target


def _target_table(raw: dict[str, Any], source: str) -> Target:
    if not isinstance(raw.get("target"), dict):
        raise ScenarioError(source, [Problem("target", "missing required table [target]")])
    with _not_too_deep(source):
        try:
            return Target.model_validate(raw["target"])
        except ValidationError as exc:
            raise ScenarioError(source, [_problem({**err, "loc": ("target", *err["loc"])}, set())
                                         for err in exc.errors()]) from None


# --- error messages -----------------------------------------------------------------------

def _problem(err: dict[str, Any], overridden: set[str]) -> Problem:
    loc = [part for part in err["loc"]]
    kind = err["type"]
    model_loc = loc
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        message = _event_kind_message(err)
        loc = loc + ["kind"]
    elif kind == "extra_forbidden":
        model_loc = loc[:-1]
        message = _unknown_key_message(str(loc[-1]), _keys_at(model_loc))
    elif kind == "missing":
        message = "missing required key"
    elif kind == "literal_error":
        expected = err["ctx"]["expected"]
        message = f"expected one of {expected}, got {_shown(loc, err['input'])}"
        options = [o.strip(" '") for o in expected.replace(" or ", ",").split(",")]
        message += did_you_mean(str(err["input"]), options)
    elif kind == "value_error":
        message = str(err["ctx"]["error"])
        # a nested parser names its own sub-key first: "median: must be > 0"
        sub, sep, rest = message.partition(": ")
        if sep and sub.isidentifier():
            loc = loc + [sub]
            message = rest
    else:
        message = f"{_expected(err)}, got {_shown(loc, err['input'])}"
    path = ".".join(str(p) for p in _without_tags(loc))
    if any(path == k or path.startswith(k + ".") or k.startswith(path + ".") for k in overridden):
        message += " (from --set)"
    return Problem(path, message)


def _without_tags(loc: list[Any]) -> list[Any]:
    """Pydantic puts the event kind in the location (events.0.reboot.fraction): drop it."""
    out = []
    for i, part in enumerate(loc):
        if part in EVENT_KINDS and i > 0 and isinstance(loc[i - 1], int) and "events" in loc[:i]:
            continue
        out.append(part)
    return out


def _expected(err: dict[str, Any]) -> str:
    ctx = err.get("ctx", {})
    words = {
        "int_type": "expected a whole number", "float_type": "expected a number",
        "bool_type": "expected true or false", "string_type": "expected a string",
        "list_type": "expected a list [...]", "model_type": "expected a table {...}",
        "dict_type": "expected a table {...}", "model_attributes_type": "expected a table {...}",
        "greater_than": f"must be > {ctx.get('gt')}", "greater_than_equal": f"must be >= {ctx.get('ge')}",
        "less_than": f"must be < {ctx.get('lt')}", "less_than_equal": f"must be <= {ctx.get('le')}",
        "too_short": "must not be empty", "string_pattern_mismatch": f"must match {ctx.get('pattern')}",
        "string_too_long": f"must be at most {ctx.get('max_length')} characters",
        "int_from_float": "expected a whole number", "finite_number": "expected a finite number",
    }
    return words.get(err["type"], err["msg"].lower())


def _shown(loc: list[Any], value: Any) -> str:
    if any(word in str(part).lower() for part in loc for word in SECRET_KEYS):
        return "a value that is not shown (secret)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _event_kind_message(err: dict[str, Any]) -> str:
    kinds = list(EVENT_KINDS)
    if err["type"] == "union_tag_not_found":
        return f"missing key 'kind' (one of {', '.join(kinds)})"
    tag = str(err["ctx"]["tag"])
    return f"unknown event kind {tag!r}{did_you_mean(tag, kinds)} (one of {', '.join(kinds)})"


def _unknown_key_message(key: str, valid: list[str]) -> str:
    return f"unknown key {key!r}{did_you_mean(key, valid)}" + (f" (valid keys: {', '.join(valid)})" if valid else "")


def _keys_at(loc: list[Any]) -> list[str]:
    """The valid keys of the table at a location, by walking the models' annotations."""
    model: Any = Scenario
    for part in loc:
        if isinstance(part, int):
            continue
        if part in EVENT_KINDS:
            model = EVENT_KINDS[part]
            continue
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return []
        model = _model_in(fields[part].annotation)
    return list(getattr(model, "model_fields", {}))


def _model_in(annotation: Any) -> Any:
    """The table model inside `X | None`, `list[X]`, `Annotated[X, ...]` (None if there is none)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


# --- checks across keys -------------------------------------------------------------------

def _check_consistency(s: Scenario) -> list[Problem]:
    problems = []
    dur = format_duration(s.duration)
    if not math.isfinite(s.duration):
        problems.append(Problem("duration", "must be finite"))
    if s.warmup is not None and s.warmup >= s.duration:
        problems.append(Problem("warmup",
                                f"must be before the end of the run ({dur}), got {format_duration(s.warmup)}"))
    if s.resolution is not None and s.resolution > s.duration:
        problems.append(Problem("resolution",
                                f"must be at most the duration ({dur}), got {format_duration(s.resolution)}"))
    if s.server.workers == 0 and s.server.p2p is None:
        problems.append(Problem("server.workers",
                                "must be >= 1 (only a [server.p2p] block can carry all capacity), got 0"))
    for i, event in enumerate(s.events):
        if event.at >= s.duration:
            problems.append(Problem(f"events.{i}.at", f"must be before the end of the run ({dur}), "
                                                      f"got {format_duration(event.at)}"))
        if event.kind == "p2p-rules" and s.server.p2p is None:
            problems.append(Problem(f"events.{i}.kind", "a p2p-rules event needs a [server.p2p] block (supernodes)"))
        if getattr(event, "supernode_fraction", None) is not None and s.server.p2p is None:
            problems.append(Problem(f"events.{i}.supernode_fraction", "needs a [server.p2p] block (supernodes)"))
    if s.target is not None:
        problems.extend(_check_target(s.target))
    return problems


def _check_target(target: Target) -> list[Problem]:
    host = target.host.split("://", 1)[1].rsplit(":", 1)[0] if "]" not in target.host else \
        target.host.split("://", 1)[1].split("]")[0] + "]"
    if host in LOOPBACK or host.startswith("127.") or host in target.allowed_hosts:
        return []
    return [Problem("target.host", f"{host!r} is not in target.allowed_hosts "
                                   f"({', '.join(target.allowed_hosts) or 'empty'}); loopback is always allowed")]


# --- scale --------------------------------------------------------------------------------

#: the largest count `--scale` may make (the engines count clients and workers in 64-bit integers)
MAX_COUNT = 2**63 - 1
#: the scaled counts, which must stay within MAX_COUNT (the others need only stay finite)
_COUNTS = ("population.clients", "server.workers", "server.queue_limit")


def _scaled_count(value: float, factor: float) -> float:
    """A count times the factor, rounded; a positive count stays at least 1 (inf stays inf)."""
    if math.isinf(value) or value == 0:
        return value
    return max(1, round(value * factor))


def _scale_problems(s: Scenario, factor: float) -> list[Problem]:
    """`--scale` must leave every scaled figure finite, and every count within MAX_COUNT."""
    figures: dict[str, tuple[float, str]] = {
        "population.clients": (s.population.clients, "x"), "population.login_rate": (s.population.login_rate, "x"),
        "server.workers": (s.server.workers, "x"), "server.queue_limit": (s.server.queue_limit, "x")}
    if s.server.rate_limit is not None:
        figures["server.rate_limit.rate"] = (s.server.rate_limit.rate, "x")
        figures["server.rate_limit.burst"] = (s.server.rate_limit.bucket, "x")
    if s.server.overload is not None:
        figures["server.overload.knee"] = (s.server.overload.knee, "x")
        figures["server.overload.per_request"] = (s.server.overload.per_request, "/")
    problems = []
    for key, (value, op) in figures.items():
        if value == math.inf:  # "inf" (no queue limit) stays inf
            continue
        try:
            scaled = float(value) / factor if op == "/" else float(value) * factor
        except OverflowError:  # a whole number past the largest float
            scaled = math.inf
        if key in _COUNTS and scaled > MAX_COUNT:
            what = ("" if math.isinf(scaled) else f"{scaled:.3g}, ") + "larger than a 64-bit count"
        elif math.isinf(scaled):
            what = "infinite"
        else:
            continue
        problems.append(Problem("--scale", f"makes {key} {what} ({_number(value)} {op} {_number(factor)})"))
    return problems


def _number(x: float) -> str:
    """A number in a message, short: 5000, 1e+300 (a whole number too large for a float by its digits)."""
    try:
        return f"{x:g}"
    except OverflowError:
        return f"a {len(str(x))}-digit number"


def scale_scenario(s: Scenario, factor: float) -> Scenario:
    """`--scale S`: population and capacity S times the size; shares, times and per-client figures stay.

    clients, login_rate, workers, queue_limit, rate_limit rate and burst, a concurrency limit's
    initial/min/max (and its gradient queue_size), and a shared limiter's `groups` are multiplied
    by S (counts rounded to the nearest whole number, a positive count kept
    >= 1; a limiter's `group_size` stays, so its groups follow the clients); the overload knee
    by S and its per_request by 1/S, so that the slowdown at the same load per worker is the
    same; p2p follows, being per client.
    """
    if factor == 1.0:
        return s
    problems = _scale_problems(s, factor)
    if problems:
        raise ScenarioError(s.source or "<scenario>", problems)
    pop = s.population.model_copy(update={
        "clients": int(_scaled_count(s.population.clients, factor)),
        "login_rate": s.population.login_rate * factor,
    })
    server_update: dict[str, Any] = {
        "workers": int(_scaled_count(s.server.workers, factor)),
        "queue_limit": _scaled_count(s.server.queue_limit, factor),
    }
    if s.server.rate_limit is not None:
        rl = s.server.rate_limit
        server_update["rate_limit"] = rl.model_copy(update={
            "rate": rl.rate * factor, "burst": max(1.0, rl.bucket * factor)})
    if s.server.overload is not None:  # the knee counts requests in the system: a count like the queue's
        ov = s.server.overload
        server_update["overload"] = ov.model_copy(update={"knee": ov.knee * factor,
                                                          "per_request": ov.per_request / factor})
    if s.server.concurrency is not None:  # a concurrency limit counts requests, like workers (its bounds,
        c = s.server.concurrency          # and Gradient2's queue_size; AIMD's step of 1 stays: docs/model.md 3.3)
        scaled_keys = {k: max(1.0, float(round(getattr(c, k) * factor))) for k in ("initial", "min", "max")}
        if c.queue_size is not None:
            scaled_keys["queue_size"] = c.queue_size * factor
        server_update["concurrency"] = c.model_copy(update=scaled_keys)
    update: dict[str, Any] = {"population": pop, "server": s.server.model_copy(update=server_update)}
    lim = s.client.limiter
    if lim is not None and lim.groups is not None:  # groups are instances, a count like workers
        update["client"] = s.client.model_copy(update={"limiter": lim.model_copy(update={
            "groups": int(_scaled_count(lim.groups, factor))})})
    scaled = s.model_copy(update=update)
    scaled._scale = s.scale * factor
    scaled._source = s.source
    return scaled


def compress_scenario(s: Scenario, k: float) -> Scenario:
    """`--speed K`: the story K times faster, the clients and the server as they really are.

        >>> s = compress_scenario(load_scenario("quickstart"), 10)
        >>> s.duration, s.events[0].at, s.client.timeout.value, s.server.retry_after
        (360.0, 30.0, 5.0, 5.0)

    Divided by K (as `loadtests.plan` and the device users do in a load test): `duration`,
    `resolution`, `warmup`; `population.session` and `offline`; every event's `at`, `spread`,
    wave offsets, `downtime`, `duration`, `ramp`, `propagation` and `isolate_at` (the
    server-side events too: in a load test they happen K times sooner as well). `login_rate`
    is multiplied by K (surge factors multiply it, so surge rates follow). Unchanged, being real
    behaviour: the whole `[client]` table (timeout, connect_delay, policy, give_up_after,
    relaunch, rtt), the whole `[server]` table (service_time, retry_after, rate limits, p2p
    clocks), a partition's `hang` and an admit gate's `retry_after`.
    """
    if not (k > 0 and math.isfinite(k)):
        raise ValueError(f"speed must be a number > 0, got {k!r}")
    if k == 1.0:
        return s

    def faster(value: Any) -> Any:
        """A time (float) or a time distribution of the same kind, divided by k; None stays."""
        if value is None or isinstance(value, float):
            return value if value is None else value / k
        params = {key: tuple(v / k for v in p) if isinstance(p, tuple) else p / k
                  for key, p in value._params().items()}  # the constructor takes the file's keys
        return type(value)(**params)

    story = ("at", "spread", "downtime", "duration", "ramp", "propagation", "isolate_at")
    events = []
    for e in s.events:
        update = {name: faster(getattr(e, name)) for name in story if name in type(e).model_fields}
        if getattr(e, "waves", None):
            update["waves"] = [w.model_copy(update={"offset": w.offset / k}) for w in e.waves]
        events.append(e.model_copy(update=update))
    pop = s.population.model_copy(update={
        "login_rate": s.population.login_rate * k,
        "session": faster(s.population.session), "offline": faster(s.population.offline)})
    fast = s.model_copy(update={
        "duration": s.duration / k, "resolution": faster(s.resolution), "warmup": faster(s.warmup),
        "population": pop, "events": events})
    fast._scale = s.scale
    fast._source = s.source
    return fast
