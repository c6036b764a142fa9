"""The scenario's events (docs/model.md section 3.1) as the compiled engine acts them, in Python.

Server-wide events (outage, capacity, admit, partition, failover, token-purge) act between two
stretches of the loop, at their `at` and at their ends, in the order `sim.des.Model.fire` fires
them; a capacity ramp's steps are heap entries of the loop. A fraction event picks its clients
and draws their times here (`sim.waves`); the hits join the loop as a sorted stream.
"""

from __future__ import annotations

import numpy as np

from sim.fast.heap import push_many
from sim.fast.layout import (CT_DISPATCH, CT_LOSE, CT_WORKERS, H_DISCONNECT, H_LOGIN, H_REBOOT, INF, K_WORKERS,
                             OFFLINE, ONLINE, OUT_BLACKHOLE, OUT_NONE, OUT_REFUSE, P_ADMIT, P_ADMIT_RA, PR_TOK,
                             Q_ABASE, Q_DEDICATED, Q_RESUME, S_ARR, S_HIT, S_HN, S_NPART, S_OUTAGE, S_RAMP)
from sim.waves import pick, wave_times


class EventActions:
    """`Engine`'s part that acts the scenario's events (`fire` at each event's `at`)."""

    def fire(self, e) -> None:
        self.now = e.at
        getattr(self, "_" + e.kind.replace("-", "_"))(e)

    def _at(self, t: float, act, arg=None) -> None:
        """An action at `t` (an event's end); it never happens at or after the end of the run."""
        def acting(_):
            self.now = t
            act(arg)
        self.later(t, acting, None)

    def _reboot(self, e) -> None:
        self.hit_clients(e)

    _disconnect = _login = _reboot

    def _p2p_rules(self, e) -> None:
        """A `p2p-rules` event: the tick's parameters change from now (the block's others stay)."""
        self.set_rules(self.rules.model_copy(update=e.changes()))

    def _surge(self, e) -> None:
        """Read by the arrival times (`arrival_times`)."""

    def _admit(self, e) -> None:
        self.P[P_ADMIT], self.P[P_ADMIT_RA] = e.fraction, e.retry_after

    def _outage(self, e) -> None:
        mode = OUT_REFUSE if e.mode == "refuse" else OUT_BLACKHOLE
        self.outages.append(mode)  # overlapping outages: the tier is down until the last ends
        self.S[S_OUTAGE] = mode
        self.control(CT_LOSE, int(mode == OUT_REFUSE))
        if e.drop_sessions:
            self.drop_all_sessions()
        self._at(e.at + e.duration, self._outage_end, mode)

    def _outage_end(self, mode: int) -> None:
        self.outages.remove(mode)
        self.S[S_OUTAGE] = self.outages[-1] if self.outages else OUT_NONE
        if not self.outages:
            self.control(CT_DISPATCH, 0)

    def _capacity(self, e) -> None:
        """Workers become factor x configured, linearly over `ramp` (steps as heap entries);
        a newer event replaces a ramp."""
        self.S[S_RAMP] += 1
        start, target = int(self.Q[Q_DEDICATED]), int(round(self.configured * e.factor))
        if e.ramp <= 0 or start == target:
            self.control(CT_WORKERS, target)
            return
        step = 1 if target > start else -1
        ws = np.arange(start + step, target + step, step)
        times = e.at + e.ramp * (ws - start) / (target - start)
        self.grow_heap(int(self.S[S_HN]) + len(ws) + 64)
        push_many(self.queue_arrays(), self.S, self.P, times, K_WORKERS, ws.astype(np.int64), int(self.S[S_RAMP]))

    def _partition(self, e) -> None:
        entry = (float(self.rng.random()), e.fraction, e.failure, e.hang,
                 INF if e.isolate_at is None else e.isolate_at)
        self.partitions.append(entry)
        self._partitions_changed()
        self._at(e.at + e.duration, self._partition_end, entry)

    def _partition_end(self, entry) -> None:
        self.partitions.remove(entry)
        self._partitions_changed()

    def _partitions_changed(self) -> None:
        self.S[S_NPART] = len(self.partitions)
        for i, entry in enumerate(self.partitions):
            self.PT[i] = entry

    def _token_purge(self, e) -> None:
        """The tokens of `fraction` of the clients that exist now are revoked (`Model.fire`): their
        next logins are full ones. Without tokens (resume_window 0) there is nothing to revoke."""
        if not self.Q[Q_RESUME]:
            return
        existing = int(self.Q[Q_ABASE] + self.S[S_ARR])  # arrivals still to come hold none
        self.pr[PR_TOK][pick(self.rng, np.arange(existing), e.fraction)] = -INF

    def _failover(self, e) -> None:
        """The primary dies: in-flight requests fail, sessions drop, clients find the standby late.
        Every client draws its propagation now (des draws those of later arrivals when they come)."""
        m = len(self.st)
        self.learned[:m] = e.at + np.broadcast_to(np.asarray(e.propagation.sample(self.rng, m), dtype=float), (m,))
        existing = int(self.Q[Q_ABASE] + self.S[S_ARR])
        if existing:
            self.records.last_event_end = max(self.records.last_event_end, float(self.learned[:existing].max()))
        self.control(CT_LOSE, 1)
        self.drop_all_sessions()
        self.control(CT_WORKERS, int(round(int(self.Q[Q_DEDICATED]) * e.factor)))

    def drop_all_sessions(self) -> None:
        """Every ONLINE client loses its session now (hits before anything else at this instant)."""
        ids = np.flatnonzero(self.st == ONLINE)
        self._merge_hits(np.full(len(ids), self.now), ids, H_DISCONNECT, np.zeros(len(ids)))

    def hit_clients(self, e) -> None:
        """A fraction event at its `at`: pick the clients now, draw their times, merge the hits."""
        st = self.st
        if e.kind == "login":
            ids = pick(self.rng, np.flatnonzero((st == OFFLINE) & (self.rebooting == 0)), e.fraction)
        elif self.s.server.p2p is not None and e.supernode_fraction is not None:
            role = self.pp[0] >= 0
            ids = np.concatenate([pick(self.rng, np.flatnonzero((st == ONLINE) & ~role), e.fraction),
                                  pick(self.rng, np.flatnonzero((st == ONLINE) & role), e.supernode_fraction)])
        else:
            ids = pick(self.rng, np.flatnonzero(st == ONLINE), e.fraction)
        times = wave_times(self.rng, e.at, len(ids), e.spread, e.wave_table())
        downtimes = (np.asarray(e.downtime.sample(self.rng, len(ids)), dtype=float) if e.kind == "reboot"
                     else np.zeros(len(ids)))
        if len(ids):
            self.records.last_event_end = max(self.records.last_event_end, float((times + downtimes).max()))
        kind = {"reboot": H_REBOOT, "disconnect": H_DISCONNECT, "login": H_LOGIN}[e.kind]
        self._merge_hits(times, ids, kind, downtimes)

    def _merge_hits(self, times: np.ndarray, ids: np.ndarray, kind: int, downtimes: np.ndarray) -> None:
        keep = times < self.end
        at = int(self.S[S_HIT])
        old_t, old_c, old_k, old_d = (a[at:] for a in self.hits)
        t = np.concatenate([old_t, times[keep]])
        order = np.argsort(t, kind="stable")
        self.hits = (t[order], np.concatenate([old_c, ids[keep].astype(np.int64)])[order],
                     np.concatenate([old_k, np.full(int(keep.sum()), kind, dtype=np.int64)])[order],
                     np.concatenate([old_d, downtimes[keep]])[order])
        self.S[S_HIT] = 0
