"""Supernodes and homes (docs/model.md section 3.2): the bookkeeping of a Skype-style peer-to-peer login tier.

Supernodes are ONLINE clients with a role: each adds `slots` login workers and can home up to
`children` online clients. This module holds who is a supernode, who is homed where, and which
supernodes have room, with O(1) updates and a uniform pick among those with room. It has no
SimPy in it: the engine calls it when a client comes online, leaves, is promoted or demoted.

    >>> sn = Supernodes(children=2, uniform=lambda: 0.0)
    >>> sn.promote(7)
    >>> sn.place(1), sn.place(2), sn.place(3)
    (7, 7, None)
    >>> sorted(sn.leave(7))
    [1, 2]
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

__all__ = ["Supernodes", "stochastic_round"]


def stochastic_round(x: float, u: float) -> int:
    """floor(x) plus one with probability frac(x), given a uniform draw `u` in [0, 1)."""
    whole = math.floor(x)
    return int(whole) + (u < x - whole)


class Supernodes:
    """Which clients are supernodes, each one's children, and the supernodes with room.

    `uniform()` returns draws in [0, 1): it makes every pick (a home among the supernodes with
    room) uniform and reproducible from the run's one generator.
    """

    __slots__ = ("capacity", "uniform", "children", "home", "room", "where")

    def __init__(self, children: int, uniform: Callable[[], float]):
        self.capacity = children
        self.uniform = uniform
        self.children: dict[int, set[int]] = {}  # supernode -> the clients homed on it
        self.home: dict[int, int] = {}           # homed client -> its supernode
        self.room: list[int] = []                # supernodes with room, in any order
        self.where: dict[int, int] = {}          # supernode -> its index in `room`

    def __len__(self) -> int:
        return len(self.children)

    def __contains__(self, cid: int) -> bool:
        return cid in self.children

    @property
    def homes(self) -> int:
        """How many clients all supernodes together can home."""
        return len(self.children) * self.capacity

    # --- roles ----------------------------------------------------------------------------

    def promote(self, cid: int) -> None:
        """`cid` becomes a supernode with no children; it leaves its own home first."""
        if cid in self.children:
            raise ValueError(f"client {cid} is already a supernode")
        self.unhome(cid)
        self.children[cid] = set()
        self._open(cid)

    def leave(self, cid: int) -> list[int]:
        """`cid` stops being a supernode; returns its children, who are now unhomed (orphans)."""
        orphans = self.children.pop(cid)
        self._close(cid)
        home = self.home
        for child in orphans:
            del home[child]
        return list(orphans)

    # --- homes ----------------------------------------------------------------------------

    def place(self, cid: int) -> int | None:
        """Home `cid` on a supernode chosen uniformly among those with room; None if none has."""
        room = self.room
        if not room:
            return None
        sn = room[min(len(room) - 1, int(self.uniform() * len(room)))]
        kids = self.children[sn]
        kids.add(cid)
        self.home[cid] = sn
        if len(kids) >= self.capacity:
            self._close(sn)
        return sn

    def place_all(self, cids: Iterable[int]) -> int:
        """Place each client in turn; returns how many found a home."""
        return sum(self.place(cid) is not None for cid in cids)

    def unhome(self, cid: int) -> None:
        """`cid` leaves its home (it went offline or was promoted); a no-op when it has none."""
        sn = self.home.pop(cid, None)
        if sn is None:
            return
        kids = self.children[sn]
        kids.discard(cid)
        if len(kids) < self.capacity and sn not in self.where:
            self._open(sn)

    # --- the room list: swap-remove keeps both operations O(1) ------------------------------

    def _open(self, sn: int) -> None:
        if len(self.children[sn]) < self.capacity:
            self.where[sn] = len(self.room)
            self.room.append(sn)

    def _close(self, sn: int) -> None:
        i = self.where.pop(sn, None)
        if i is None:
            return
        last = self.room.pop()
        if last != sn:
            self.room[i] = last
            self.where[last] = i
