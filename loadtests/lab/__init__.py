"""The lab auth server (`loginstorm lab`): a real login endpoint to aim load tests at, on this machine.

It serves a scenario's `[server]` table on Starlette + uvicorn (asyncio only, no gevent):
`workers` service slots, a `queue_limit` queue taken by `discipline`, the `rate_limit` token
bucket, `retry_after` on a full queue, `cancel_on_timeout`, and `service_time` as a sleep
(`--mode sleep`) or as the PBKDF2 hash itself (`--mode cpu`), and the injected faults
(`fault_rate`, `fault_when`: 500 at once, or after the service). The adaptive protections of
docs/model.md section 3.3 run on the simulator's own kernels (`sim.protections`): the
concurrency limit (`[server.concurrency]`: early 503s), CoDel with adaptive LIFO
(`[server.codel]`), and the Retry-After computed from the queue (`retry_after_from = "queue"`).
Session resumption (section 3.4) is the OAuth 2.0 refresh-token grant on `POST /oauth/token`,
served with `[server.resume].service_time`, its tokens valid for the scenario's
`client.resume_window`; `POST /admin/purge` revokes a share of them (loopback clients only).
See `admission` for the model, `app` for the endpoints, `users` for the accounts, `metrics`
for /metrics.

Not modelled, by design: `reject_cost` and `overload` (a refusal and the service time do not
depend on the load here), `[server.p2p]` (a scenario with it still runs; its workers are the
dedicated ones), and the scenario's events (those are the load test's job; a `token-purge` the
devices play by dropping their tokens, or `POST /admin/purge` plays on the lab). `drop_expired` is
ignored: a server cannot know a client's deadline, only that it hung up (which is what
`cancel_on_timeout` acts on).

    python -m loadtests.lab quickstart --port 0 --set server.workers=4
"""

from loadtests.lab.server import LabError, LabOptions, ignored, run_lab
from loadtests.lab.users import UsersFileError, generate_users, read_credentials, write_credentials

__all__ = ["LabError", "LabOptions", "ignored", "run_lab", "UsersFileError", "generate_users",
           "read_credentials", "write_credentials"]
