"""Where the compiled loop's time goes: cycle counters around its parts, compiled in on request.

With `LOGINSTORM_FAST_PROFILE=1` in the environment when `sim.fast` is first imported, the loop
reads the CPU's cycle counter (`llvm.readcyclecounter`, ~10 ns a read) at the edges of its parts
and adds each part's own cycles (its time minus the parts it called) to `S[S_PF + part]`, and the
number of times it ran to `S[S_PFN + part]`. Without it, `PROFILE` is False, a global numba
folds in: every `enter`/`leave` compiles to nothing and the loop is the one users run.

A profiled build must not land in the cache users load: it is refused unless `NUMBA_CACHE_DIR`
points elsewhere (`benchmarks/profile_fast.py` does both).
"""

from __future__ import annotations

import os

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from sim.fast.jit import kernel
from sim.fast.layout import N_PF, S_PF, S_PF_DONE, S_PFN

PROFILE = os.environ.get("LOGINSTORM_FAST_PROFILE", "") == "1"
if PROFILE and not os.environ.get("NUMBA_CACHE_DIR"):
    raise RuntimeError("LOGINSTORM_FAST_PROFILE=1 needs NUMBA_CACHE_DIR set to a directory of its own: "
                       "a profiled build must not replace the cached engine (see benchmarks/profile_fast.py)")


@intrinsic
def _cycles(typingctx):
    """The CPU's cycle (time-stamp) counter."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])
    return types.int64(), codegen


@kernel
def cycles():
    """The cycle counter, for Python (the time around a call of the loop)."""
    return _cycles()


@kernel(inline="always")
def enter(S):
    """A part begins: (cycles now, cycles attributed so far); (0, 0) unless profiling."""
    if PROFILE:
        return _cycles(), S[S_PF_DONE]
    return 0, 0


@kernel(inline="always")
def leave(S, part, mark):
    """A part ends: its own cycles (minus those of the parts it called) go to `part`."""
    if PROFILE:
        spent = _cycles() - mark[0] - (S[S_PF_DONE] - mark[1])
        S[S_PF + part] += spent
        S[S_PFN + part] += 1
        S[S_PF_DONE] += spent


assert N_PF > 0
