"""The lab's counters, served as Prometheus text (`/metrics`) and as JSON (`/metrics.json`).

Both views come from one snapshot: `{"queue_depth": 3, "requests_total": {"/login": 7, ...}, ...}`
(names without the `loginstorm_lab_` prefix; a labelled metric is a dict by label value). A gauge
of a protection the served `[server]` table does not configure (`concurrency_limit` without
`[server.concurrency]`, `codel_overloaded` without `[server.codel]`) is null in the JSON and has
no sample line in the Prometheus text (its HELP and TYPE stay).

    >>> m = LabMetrics()
    >>> m.requests["/basic"] += 1
    >>> 'loginstorm_lab_requests_total{endpoint="/basic"} 1' in prometheus_text(m.snapshot(0, 0, 1))
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["LabMetrics", "METRICS", "PREFIX", "ENDPOINTS", "REASONS", "prometheus_text"]

PREFIX = "loginstorm_lab_"
#: the login endpoints: each request to one goes through the admission model
ENDPOINTS = ("/oauth/token", "/login", "/api/login", "/basic")
#: the `reason` labels of rejected_total: 429 from the rate limit; 503 from a full queue, the
#: adaptive concurrency limit, or a CoDel shed
REASONS = ("rate_limit", "queue_full", "concurrency_limit", "codel")

#: name -> (type, label name or None, help text)
METRICS: dict[str, tuple[str, str | None, str]] = {
    "queue_depth": ("gauge", None, "Login requests waiting for a worker (not counting those in service)."),
    "busy_workers": ("gauge", None, "Workers serving a login now."),
    "busy_workers_max": ("gauge", None, "Most workers ever busy at once (never above workers)."),
    "workers": ("gauge", None, "Login workers (server.workers)."),
    "requests_total": ("counter", "endpoint", "Requests to a login endpoint, rejected and malformed ones included."),
    "invalid_total": ("counter", None, "Login requests answered before admission: malformed (400), no "
                                       "credentials (401) or a failed CSRF check (403)."),
    "concurrency_limit": ("gauge", None, "The adaptive concurrency limit now ([server.concurrency]): at most this "
                                         "many login requests queued or in service; absent without one."),
    "codel_overloaded": ("gauge", None, "1 while CoDel ([server.codel]) judges the queue overloaded (it sheds "
                                        "requests that waited over 2 x target, and serves the newest first with "
                                        "adaptive_lifo), else 0; absent without CoDel."),
    "rejected_total": ("counter", "reason", "Login requests refused: by the rate limit (429), or with 503 by a full "
                                           "queue (queue_full), the concurrency limit (concurrency_limit) or CoDel "
                                           "(codel: shed when a worker took it, without service)."),
    "faults_total": ("counter", "when", "Login requests answered 500 by fault injection (server.fault_rate): at once "
                                       "without a worker (fast), or after their service (after-service)."),
    "completed_total": ("counter", None, "Services that ran to their end, whatever the credential check said."),
    "logins_total": ("counter", "result", "Completed services by answer: the credential check's success or "
                                          "failure, or fault (an after-service fault answered 500)."),
    "wasted_total": ("counter", None, "Services that ended (or were cancelled) after their client had hung up."),
    "wasted_seconds_total": ("counter", None, "Worker seconds spent on wasted services."),
    "cancelled_total": ("counter", None, "Requests dropped because their client hung up (server.cancel_on_timeout): "
                                         "removed from the queue or stopped in service."),
    "busy_seconds_total": ("counter", None, "Worker seconds spent in service (ended services)."),
    "resumptions_total": ("counter", None, "Session resumptions that reached admission: OAuth 2.0 refresh-token "
                                           "grants (POST /oauth/token, grant_type=refresh_token), refused ones "
                                           "included."),
    "resumed_total": ("counter", None, "Resumptions served and answered with new tokens (a valid refresh token)."),
    "purged_total": ("counter", None, "Refresh tokens revoked by POST /admin/purge."),
}


@dataclass
class LabMetrics:
    """Counters kept by the app and the admission model; gauges come from the admission model."""

    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ENDPOINTS, 0))
    invalid: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    faults: dict[str, int] = field(default_factory=lambda: {"fast": 0, "after-service": 0})
    completed: int = 0
    logins: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0, "fault": 0})
    wasted: int = 0
    wasted_seconds: float = 0.0
    cancelled: int = 0
    busy_seconds: float = 0.0
    busy_max: int = 0
    resumptions: int = 0
    resumed: int = 0
    purged: int = 0

    def snapshot(self, queue_depth: int, busy: int, workers: int, limit: float | None = None,
                 overloaded: bool | None = None) -> dict[str, Any]:
        """The counters, with the gauges the admission model gives (`limit`, `overloaded`: None
        when that protection is off)."""
        return {
            "queue_depth": queue_depth, "busy_workers": busy, "busy_workers_max": self.busy_max,
            "workers": workers, "concurrency_limit": limit,
            "codel_overloaded": None if overloaded is None else int(overloaded),
            "requests_total": dict(self.requests), "invalid_total": self.invalid,
            "rejected_total": dict(self.rejected), "faults_total": dict(self.faults),
            "completed_total": self.completed,
            "logins_total": dict(self.logins), "wasted_total": self.wasted,
            "wasted_seconds_total": self.wasted_seconds, "cancelled_total": self.cancelled,
            "busy_seconds_total": self.busy_seconds, "resumptions_total": self.resumptions,
            "resumed_total": self.resumed, "purged_total": self.purged,
        }


def prometheus_text(snapshot: dict[str, Any]) -> str:
    """Prometheus text exposition format 0.0.4, with `# HELP` and `# TYPE` for every metric."""
    lines = []
    for name, (kind, label, text) in METRICS.items():
        full = PREFIX + name
        lines += [f"# HELP {full} {text}", f"# TYPE {full} {kind}"]
        value = snapshot[name]
        if value is None:           # a protection that is off: no sample
            continue
        if label is None:
            lines.append(f"{full} {_number(value)}")
        else:
            lines += [f'{full}{{{label}="{key}"}} {_number(v)}' for key, v in value.items()]
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))
