"""Queueing theory the engine is held against: closed forms and small CTMCs solved with numpy.

Pure functions, no simulator imports, so that a wrong engine cannot leak into its own yardstick.

    >>> round(erlang_c(10, 8.0), 4)
    0.4092
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "erlang_b", "erlang_c", "ctmc_stationary", "birth_death_stationary", "truncated_chain",
    "mmck_blocking", "abandonment_chain", "retrial_chain", "RetrialSolution", "t_quantile",
    "mean_and_se", "drain_time_moments",
]


# --- closed forms -----------------------------------------------------------------------------

def erlang_b(c: int, a: float) -> float:
    """Blocking of M/M/c/c with offered load a = lambda/mu, by the stable recursion."""
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b


def erlang_c(c: int, a: float) -> float:
    """Probability that an M/M/c arrival waits (a = lambda/mu < c), from Erlang B."""
    if a >= c:
        return 1.0
    b = erlang_b(c, a)
    return c * b / (c - a * (1.0 - b))


def drain_time_moments(n0: int, c: int, mu: float, k: int | None = None) -> tuple[float, float]:
    """Mean and sd of the time of the k-th completion (default: the last) when n0 jobs wait at t=0.

    With n jobs left, min(n, c) are in service and the next completion is Exp(min(n, c) mu):
    the k-th completion time is a sum of independent exponentials, exactly.
    """
    k = n0 if k is None else k
    rates = np.array([min(n, c) * mu for n in range(n0, n0 - k, -1)], dtype=float)
    return float(np.sum(1.0 / rates)), float(math.sqrt(np.sum(1.0 / rates**2)))


# --- Markov chains ------------------------------------------------------------------------------

def ctmc_stationary(q: np.ndarray) -> np.ndarray:
    """Stationary distribution pi (pi Q = 0, sum pi = 1) of an irreducible finite generator Q."""
    n = q.shape[0]
    a = q.T.copy()
    a[-1, :] = 1.0                      # replace one balance equation by the normalisation
    rhs = np.zeros(n)
    rhs[-1] = 1.0
    pi = np.linalg.solve(a, rhs)
    return np.clip(pi, 0.0, None) / np.clip(pi, 0.0, None).sum()


def birth_death_stationary(birth: Sequence[float], death: Sequence[float]) -> np.ndarray:
    """Stationary law of a birth-death chain on 0..n by detailed balance (log space).

    birth[i] is the rate i -> i+1 (i = 0..n-1), death[i] the rate i+1 -> i.
    """
    logs = np.concatenate([[0.0], np.cumsum(np.log(birth) - np.log(death))])
    p = np.exp(logs - logs.max())
    return p / p.sum()


def truncated_chain(birth: Callable[[int], float], death: Callable[[int], float],
                    n_max: int) -> np.ndarray:
    """The generator of a birth-death chain on 0..n_max (births stop at n_max)."""
    q = np.zeros((n_max + 1, n_max + 1))
    for n in range(n_max):
        q[n, n + 1] = birth(n)
        q[n + 1, n] = death(n + 1)
    q[np.diag_indices_from(q)] = -q.sum(axis=1)
    return q


def mmck_blocking(c: int, k: int, lam: float, mu: float) -> float:
    """Blocking of M/M/c/K (K = c + waiting places): P(N = K) by PASTA, from the generator."""
    pi = ctmc_stationary(truncated_chain(lambda n: lam, lambda n: min(n, c) * mu, k))
    return float(pi[-1])


def abandonment_chain(c: int, lam: float, mu: float, gamma: float,
                      tail: float = 1e-12) -> dict[str, float]:
    """M/M/c+M, unlimited queue, where every request in the system (waiting OR in service)
    abandons at rate gamma: the client's deadline covers queueing and service.

    State n = live requests: birth lam, death min(n, c) mu + n gamma; the chain is truncated
    where the mass of its top 5 states is below `tail`. (With a finite queue this count would
    not be exact in the engine: expired requests still hold places until they reach the head.)
    Returns abandonment (share of arrivals that time out, E[n gamma] / lam), throughput
    (E[min(n, c)] mu), utilization, mean live requests and the tail mass.
    """
    n_max = 64
    while True:
        pi = ctmc_stationary(truncated_chain(lambda n: lam, lambda n: min(n, c) * mu + n * gamma, n_max))
        if pi[-5:].sum() < tail:
            break
        n_max *= 2
    n = np.arange(n_max + 1)
    served = float(np.sum(pi * np.minimum(n, c) * mu))
    return {
        "abandonment": float(np.sum(pi * n * gamma)) / lam,
        "throughput": served,
        "utilization": served / (c * mu),
        "mean_live": float(np.sum(pi * n)),
        "tail": float(pi[-5:].sum()),
    }


class RetrialSolution(dict):
    """mean_orbit, p_all_busy, mean_busy, attempts_per_login, tail (mass of the last 5 levels)."""


def retrial_chain(c: int, lam: float, mu: float, theta: float, tail: float = 1e-12) -> RetrialSolution:
    """Classical M/M/c retrial queue (no waiting room, each orbit client retries at rate theta).

    State (b, j): b busy servers (0..c), j clients in orbit (0..N). A fresh arrival or a retrial
    that finds a free server starts service; a fresh arrival that finds all busy joins the orbit;
    a retrial that finds all busy goes back to the orbit (no state change). N doubles until the
    mass of the top 5 orbit levels is below `tail`.
    """
    n_orbit = 32
    while True:
        pi = _retrial_pi(c, lam, mu, theta, n_orbit)
        if pi[:, -5:].sum() < tail:
            break
        n_orbit *= 2
    j = np.arange(n_orbit + 1)
    mean_orbit = float(np.sum(pi.sum(axis=0) * j))
    return RetrialSolution(
        mean_orbit=mean_orbit,
        p_all_busy=float(pi[c, :].sum()),
        mean_busy=float(np.sum(pi.sum(axis=1) * np.arange(c + 1))),
        attempts_per_login=1.0 + theta * mean_orbit / lam,   # (lam + theta E[orbit]) / lam
        tail=float(pi[:, -5:].sum()),
        levels=n_orbit,
    )


def _retrial_pi(c: int, lam: float, mu: float, theta: float, n_orbit: int) -> np.ndarray:
    size = (c + 1) * (n_orbit + 1)
    index = lambda b, j: j * (c + 1) + b  # noqa: E731 - level-major: a banded generator
    q = np.zeros((size, size))
    for j in range(n_orbit + 1):
        for b in range(c + 1):
            s = index(b, j)
            if b < c:
                q[s, index(b + 1, j)] += lam                      # fresh arrival served
                if j > 0:
                    q[s, index(b + 1, j - 1)] += j * theta        # successful retrial
            elif j < n_orbit:
                q[s, index(b, j + 1)] += lam                      # blocked: joins the orbit
            if b > 0:
                q[s, index(b - 1, j)] += b * mu                   # service completion
    q[np.diag_indices_from(q)] = -q.sum(axis=1)
    return ctmc_stationary(q).reshape(n_orbit + 1, c + 1).T   # pi[b, j]


# --- statistics ---------------------------------------------------------------------------------

def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean of replication values and its standard error (sample sd / sqrt(R))."""
    x = np.asarray(values, dtype=float)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))


def _t_cdf(x: float, df: int) -> float:
    """Student t CDF for x >= 0 by Simpson's rule on the density (plenty for quantiles to 1e-6)."""
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    grid = np.linspace(0.0, x, 4001)
    f = np.exp(logc - (df + 1) / 2 * np.log1p(grid**2 / df))
    h = grid[1] - grid[0]
    area = h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
    return 0.5 + float(area)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with df degrees of freedom, by bisection."""
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def _kolmogorov_p(d: float, n_eff: float) -> float:
    """Asymptotic P(D >= d) with Stephens' small-sample correction (Numerical Recipes, section 14.3)."""
    root = math.sqrt(n_eff)
    lam = (root + 0.12 + 0.11 / root) * d
    if lam < 0.2:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, 101))
    return min(1.0, max(0.0, 2.0 * total))


def ks_1samp(x: Sequence[float], cdf: Callable[[np.ndarray], np.ndarray]) -> tuple[float, float]:
    """Kolmogorov-Smirnov statistic and p-value of a sample against a continuous CDF."""
    x = np.sort(np.asarray(x, dtype=float))
    n = len(x)
    f = cdf(x)
    d = max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n))
    return float(d), _kolmogorov_p(float(d), n)


def ks_2samp(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and asymptotic p-value."""
    x, y = np.sort(np.asarray(x, dtype=float)), np.sort(np.asarray(y, dtype=float))
    grid = np.concatenate([x, y])
    d = float(np.max(np.abs(np.searchsorted(x, grid, side="right") / len(x)
                            - np.searchsorted(y, grid, side="right") / len(y))))
    return d, _kolmogorov_p(d, len(x) * len(y) / (len(x) + len(y)))
