"""Loading scenarios: TOML -> overrides -> validation -> `--scale`, with errors a person can act on.

    >>> s = load_scenario("scenarios/quickstart.toml", sets=["server.workers=80"], scale=0.5)
    >>> s.server.workers
    40

Every problem becomes one line `FILE: key.path: what was expected, got what`, collected in a
`ScenarioError` (the CLI prints them and exits with status 2).
"""

from __future__ import annotations

import copy
import math
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sim.overrides import apply_sets
from sim.scenario import EVENT_KINDS, Scenario, Target
from sim.suggest import did_you_mean
from sim.units import format_duration

__all__ = [
    "Problem", "ScenarioError", "ScenarioFile", "load_scenario", "read_scenario", "parse_scenario", "parse_target",
    "target_file",
    "scale_scenario",
    "compress_scenario",
    "shipped_scenarios", "resolve_scenario_path", "SECRET_KEYS",
]

#: keys whose values never appear in a message
SECRET_KEYS = ("secret", "password", "token")
LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")


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
    """A path as given, or the name of a shipped scenario (`quickstart` -> scenarios/quickstart.toml)."""
    path = Path(arg)
    if path.exists() or path.suffix == ".toml" or "/" in str(arg):
        return path
    shipped = _scenario_dir() / f"{arg}.toml"
    return shipped if shipped.exists() else path


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
        try:
            return cls(source, tomllib.loads(text))
        except tomllib.TOMLDecodeError as exc:
            raise ScenarioError(source, [Problem("", f"not valid TOML: {exc}")]) from None

    def scenario(self, sets: typing.Sequence[str] = (), scale: float = 1.0, seed: int | None = None) -> Scenario:
        """The file with these overrides, validated and scaled (a ScenarioError lists every problem)."""
        raw = copy.deepcopy(self.raw)
        problems = [Problem(path, message) for path, message in apply_sets(raw, sets)]
        if seed is not None:
            raw["seed"] = seed
        if problems:
            raise ScenarioError(self.source, problems)
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
        scenario = scale_scenario(scenario, scale)
        scenario._source = self.source
        return scenario


def read_scenario(path: str | Path) -> ScenarioFile:
    """Read and parse one scenario file (a path, or the name of a shipped scenario) once."""
    path = resolve_scenario_path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(source, [Problem("", "no such file")]) from None
    except OSError as exc:
        raise ScenarioError(source, [Problem("", f"cannot read: {exc.strerror}")]) from None
    return ScenarioFile.parse(text, source)


def parse_target(text: str, source: str = "<target>") -> Target:
    """A separate target file (a `[target]` table of MODEL.md section 7), with the scenario's messages."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(source, [Problem("", f"not valid TOML: {exc}")]) from None
    return _target_table(raw, source)


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

def _scaled_count(value: float, factor: float) -> float:
    """A count times the factor, rounded; a positive count stays at least 1 (inf stays inf)."""
    if math.isinf(value) or value == 0:
        return value
    return max(1, round(value * factor))


def scale_scenario(s: Scenario, factor: float) -> Scenario:
    """`--scale S`: population and capacity S times the size; shares, times and per-client figures stay.

    clients, login_rate, workers, queue_limit, rate_limit rate and burst are multiplied by S
    (counts rounded to the nearest whole number, a positive count kept >= 1); the overload knee
    by S and its per_request by 1/S, so that the slowdown at the same load per worker is the
    same; p2p follows, being per client.
    """
    if factor == 1.0:
        return s
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
    scaled = s.model_copy(update={"population": pop, "server": s.server.model_copy(update=server_update)})
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
