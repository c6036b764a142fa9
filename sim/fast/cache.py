"""numba's on-disk cache of this package, kept consistent with its sources.

numba reuses a cached function while the file that defines it is unchanged, even when a function
it calls (inlined or linked into it) changed in another file. The kernels here span several
files, so the whole cache goes when any of them (or a module whose values they fold in) changes.
"""

from __future__ import annotations

import hashlib
from itertools import chain
from pathlib import Path

from sim import limiters, policies, protections, record

HERE = Path(__file__).parent
CACHE = HERE / "__pycache__"
STAMP = CACHE / "sources.sha256"


def sources_digest() -> str:
    """A sha256 over the package's sources and those of the modules it compiles or folds in."""
    files = sorted(HERE.glob("*.py")) + [Path(m.__file__) for m in (policies, limiters, protections, record)]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def clear_stale_cache() -> None:
    """Delete the cached compiled code when the sources changed since it was written."""
    digest = sources_digest()
    try:
        if STAMP.read_text() == digest:
            return
    except OSError:
        pass
    for f in chain(CACHE.glob("*.nbi"), CACHE.glob("*.nbc")):
        f.unlink(missing_ok=True)
    try:
        CACHE.mkdir(exist_ok=True)
        STAMP.write_text(digest)
    except OSError:  # a read-only install: numba then caches elsewhere or not at all
        pass
