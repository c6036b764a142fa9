"""Start the lab: bind the socket, hash the users, announce the address, serve with uvicorn.

    run_lab(scenario.server, users, LabOptions(port=0), announce=print, note=print_to_stderr)

`LabOptions.refresh_ttl` is how long a refresh token stays valid: `loginstorm lab` gives the
scenario's `client.resume_window` (else an hour), so that the lab honours a device's token
exactly as long as the simulated client holds it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
import socket
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import uvicorn

from loadtests.lab.admission import Admission
from loadtests.lab.app import TOKEN_TTL, LabApp, build_app
from loadtests.lab.metrics import LabMetrics
from loadtests.lab.users import UserStore
from sim.scenario import Server, table_of
from sim.streams import DrawStream

__all__ = ["LabOptions", "LabError", "run_lab", "ignored", "listen", "SLEEP_MODE_ITERATIONS"]

#: PBKDF2 iterations in sleep mode, where the service time is the sleep and the hash is cheap
SLEEP_MODE_ITERATIONS = 1000
CLIENT_ENV = ("LOGINSTORM_CLIENT_ID", "LOGINSTORM_CLIENT_SECRET")


class LabError(ValueError):
    """The lab cannot start (address in use, no workers); the message is one line."""


@dataclass(frozen=True)
class LabOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    mode: Literal["sleep", "cpu"] = "sleep"
    hash_iterations: int = 100_000     # cpu mode: the PBKDF2 work of one login
    seed: int = 0
    access_log: bool = False
    refresh_ttl: float = TOKEN_TTL     # seconds a refresh token stays valid (client.resume_window)

    @property
    def iterations(self) -> int:
        return self.hash_iterations if self.mode == "cpu" else SLEEP_MODE_ITERATIONS


def ignored(server: Server) -> list[str]:
    """The keys of a `[server]` table that the lab does not model but this scenario sets."""
    keys = []
    if server.p2p is not None:
        keys.append("[server.p2p]")
    if server.overload is not None:
        keys.append("overload")
    if server.reject_cost > 0:
        keys.append("reject_cost")
    if server.drop_expired:
        keys.append("drop_expired")
    return keys


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise LabError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise LabError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def run_lab(server: Server, users: list[tuple[str, str]], options: LabOptions,
            announce: Callable[[str], None], note: Callable[[str], None],
            environ: Mapping[str, str] = os.environ) -> None:
    """Serve the `[server]` table until interrupted; `announce` gets the address line first."""
    if server.workers < 1:
        raise LabError("server.workers: the lab needs at least 1 worker (it has no [server.p2p] supernodes)")
    sock = listen(options.host, options.port)
    try:
        bound = sock.getsockname()
        if not ipaddress.ip_address(bound[0]).is_loopback:
            note(f"warning: {options.host} is not a loopback address: the lab is reachable from the network")
        if ignored(server):
            note(f"note: the lab serves the [server] table only; ignored: {', '.join(ignored(server))}")
        if options.mode == "cpu" and server.resume is not None:
            note("note: in cpu mode a resumption (refresh-token grant) hashes no password; [server.resume]."
                 "service_time applies in sleep mode only")
        if options.mode == "cpu" and len(users) * options.iterations > 20_000_000:
            note(f"hashing {len(users)} passwords at {options.iterations} PBKDF2 iterations ...")
        app = _build(server, users, options, environ)
        announce(f"loginstorm lab listening on http://{_url_host(options.host)}:{bound[1]} "
                 f"(workers={server.workers}, queue_limit={_count(server.queue_limit)}, "
                 f"discipline={server.discipline}, mode={options.mode}"
                 + (f", fault_rate={server.fault_rate:g} {server.fault_when}" if server.fault_rate > 0 else "")
                 + (f", concurrency={server.concurrency.kind}" if server.concurrency is not None else "")
                 + (", codel" if server.codel is not None else "")
                 + (", retry_after_from=queue" if server.retry_after_from == "queue" else "") + ")")
        config = uvicorn.Config(app, log_level="info" if options.access_log else "warning",
                                access_log=options.access_log, lifespan="off", server_header=False,
                                timeout_graceful_shutdown=2)
        try:
            asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))
        except KeyboardInterrupt:  # Ctrl-C: uvicorn shut down gracefully, then re-raised it
            pass
    finally:
        sock.close()


def _build(server: Server, users: list[tuple[str, str]], options: LabOptions, environ: Mapping[str, str]):
    store = UserStore.from_pairs(users, options.iterations)
    client_id, secret = (environ.get(name) for name in CLIENT_ENV)
    clients = UserStore.from_pairs([(client_id, secret)], options.iterations) if client_id and secret else None
    resume = None
    if options.mode == "cpu":  # the hash is the service: one thread per worker
        pool, draw = ThreadPoolExecutor(server.workers, "lab-worker"), None
    else:
        pool = ThreadPoolExecutor(os.cpu_count() or 1, "lab-check")
        draw = DrawStream(server.service_time, np.random.default_rng(options.seed)).next
        if server.resume is not None:  # the resumptions' own stream, as the faults have theirs
            resume = DrawStream(server.resume.service_time, np.random.default_rng([options.seed, 2])).next
    # the faults' own stream: the service times stay those of the same seed without faults
    faults = np.random.default_rng([options.seed, 1]).random if server.fault_rate > 0 else None
    admission = Admission(server, LabMetrics(), draw, pool, fault_draw=faults, resume_draw=resume)
    config = {"mode": options.mode, "hash_iterations": options.hash_iterations if options.mode == "cpu" else None,
              "refresh_ttl": options.refresh_ttl if math.isfinite(options.refresh_ttl) else "inf",
              "server": table_of(server)}
    return build_app(LabApp(admission, store, clients, config, refresh_ttl=options.refresh_ttl,
                            seed=options.seed))


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _count(value: float) -> str:
    return "inf" if math.isinf(value) else str(int(value))
