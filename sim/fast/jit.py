"""How every kernel of the compiled engine is compiled: `kernel`, numba's `njit` with the disk
cache and without reference counting.

numba counts references to the arrays a compiled function holds (an atomic increment and a call
to decrement, each time an array is taken out of a tuple or handed on). In the loop those pairs
ran several times per event and took about a fifth of the run (benchmarks/README.md, the fast
engine's profile). The kernels allocate nothing and keep no array beyond the call that passed
it, so they need no counting: the arrays belong to `Engine`, alive for the whole run. A kernel
that allocates does not compile under this option (numba refuses `np.empty` without reference
counting), so the rule holds by construction: scratch space is an array of `Engine`'s.
"""

from __future__ import annotations

from functools import partial

from numba import njit

kernel = partial(njit, cache=True, _nrt=False)
