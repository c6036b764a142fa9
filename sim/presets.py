"""Named SDK presets: real client libraries' retry behaviour, each read in the library's source.

A preset is a backoff formula with its parameters, the attempts it allows, a total deadline
where the library has one, and the limiter the library ships enabled (docs/model.md section
4.3). Pure data, used where a scenario is read (`sim.scenario` expands `policy = "aws-sdk-standard"`
into these keys) and by `loginstorm policies`::

    >>> PRESETS["aws-sdk-standard"].policy
    {'name': 'full-jitter', 'base': 1.0, 'cap': 20.0, 'multiplier': 2.0}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Preset", "PRESETS", "preset_names"]


@dataclass(frozen=True)
class Preset:
    name: str
    library: str                       # who ships it
    policy: dict[str, Any]             # a `[client.policy]` table: a formula of sim.policies
    max_attempts: int                  # counting the first (0: unlimited)
    give_up_after: float | None = None  # the library's total deadline, s (None: none)
    limiter: dict[str, Any] | None = None  # a `[client.limiter]` table
    sources: tuple[str, ...] = ()      # repository@commit path: where each value was read
    notes: str = ""                    # what the model leaves out, if anything

    def client_keys(self) -> dict[str, Any]:
        """The `[client]` keys this preset sets (policy, max_attempts, give_up_after, limiter)."""
        keys: dict[str, Any] = {"policy": dict(self.policy), "max_attempts": self.max_attempts}
        if self.give_up_after is not None:
            keys["give_up_after"] = self.give_up_after
        if self.limiter is not None:
            keys["limiter"] = dict(self.limiter)
        return keys


_BOTOCORE = "boto/botocore"

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        "aws-sdk-standard", "AWS SDKs, standard retry mode (botocore)",
        {"name": "full-jitter", "base": 1.0, "cap": 20.0, "multiplier": 2.0}, 3,
        limiter={"kind": "quota", "capacity": 500.0, "cost": 5.0, "timeout_cost": 10.0, "increment": 1.0},
        sources=(f"{_BOTOCORE}@0719e79583bba4ce33d41f430ab6ca9658ed35a5 botocore/retries/standard.py",
                 f"{_BOTOCORE}@40454eaac38ce390fc7755ac1a05dd3425aeb5f9 botocore/retries/quota.py"),
        notes="the quota lives in one client object: per device unless the application shares the client"),
    Preset(
        "aws-sdk-legacy", "AWS SDK for Python, legacy retry mode (botocore's default)",
        {"name": "full-jitter", "base": 1.0, "multiplier": 2.0}, 5,
        sources=(f"{_BOTOCORE}@09925656dcdb3b56cd9bcf09a72d4207803ca53d botocore/retryhandler.py",
                 f"{_BOTOCORE}@1521276d74f22677143cb8877f50709c8dbe32e7 botocore/data/_retry.json"),
        notes="rand x 2^(n-1) with no cap and no quota (DynamoDB's own 10 attempts at 50 ms are not modelled)"),
    Preset(
        "grpc-retry", "gRPC retry policy with retry throttling (gRFC A6's example values)",
        {"name": "full-jitter", "base": 0.1, "cap": 1.0, "multiplier": 2.0}, 4,
        limiter={"kind": "throttle", "max_tokens": 10.0, "token_ratio": 0.1},
        sources=("grpc/proposal@0070717fd63d2aea8c3dcd608e989507c3fdc373 A6-client-retries.md",
                 "grpc/grpc-go@e26457d0c976a5669aea35e3f97889c576324983 stream.go",
                 "grpc/grpc-go@5878d965b2234619fe67d256d0cd582553e7fff1 clientconn.go"),
        notes="retryPolicy has no defaults: these are the proposal's example service config; "
              "grpc-go draws the retry delay uniformly below the envelope (full jitter)"),
    Preset(
        "google-api-core", "Google API client libraries for Python (google-api-core Retry)",
        {"name": "full-jitter", "base": 1.0, "cap": 60.0, "multiplier": 2.0}, 0, give_up_after=120.0,
        sources=("googleapis/python-api-core@07db4c260525092b64c68e8937bd172f508ba1a8 "
                 "google/api_core/retry/retry_base.py",),
        notes="the 120 s timeout is the whole call's (give_up_after here)"),
    Preset(
        "polly", "Polly v8 (.NET): retry strategy and circuit breaker defaults",
        {"name": "constant", "base": 2.0}, 4,
        limiter={"kind": "breaker", "window_type": "time", "window": 30.0, "threshold": 0.1, "min_calls": 100.0,
                 "open_for": 5.0, "half_open_calls": 1.0},
        sources=("App-vNext/Polly@243b0443e4ff16924002278e0e6ea8d038d4b5d9 src/Polly.Core/Retry/RetryConstants.cs",
                 "App-vNext/Polly@38a75c43047b73c426f18f0d4d8428f2dc7ada08 "
                 "src/Polly.Core/CircuitBreaker/CircuitBreakerConstants.cs",
                 "App-vNext/Polly@07e20014791a48344c4bc77627663fd0ff6db1c8 "
                 "src/Polly.Core/CircuitBreaker/Controller/CircuitStateController.cs"),
        notes="3 retries 2 s apart, no jitter; the breaker inside the retry, as Polly's docs order them"),
    Preset(
        "resilience4j", "resilience4j (Java): Retry and CircuitBreaker defaults",
        {"name": "constant", "base": 0.5}, 3,
        limiter={"kind": "breaker", "window_type": "count", "window": 100.0, "threshold": 0.5, "min_calls": 100.0,
                 "open_for": 60.0, "half_open_calls": 10.0},
        sources=("resilience4j/resilience4j@19c02ceb85e1e0d55c221b0a407054898805092d "
                 "resilience4j-retry/src/main/java/io/github/resilience4j/retry/RetryConfig.java",
                 "resilience4j/resilience4j@335f5ebd5bc680d612958d08b2bd08578a00486a "
                 "resilience4j-circuitbreaker/src/main/java/io/github/resilience4j/circuitbreaker/CircuitBreakerConfig.java"),
        notes="slow-call thresholds are not modelled; half-open waits at most open_for for its probes "
              "(resilience4j's default waits for ever)"),
)}


def preset_names() -> list[str]:
    return list(PRESETS)
