"""The process's memory allocator. glibc gives each thread that allocates a heap of its own
(an arena, up to eight per core), and memory freed in one arena is not reused by another:
with a day's parts appended and written back on worker threads (`defs.reconcile_slices`),
the 3M-row day peaked at 1,434 MB, against 1,080 MB with two arenas, in the same time
(benchmarks/README.md). Set when the Definitions are built, before any thread of a run
allocates; `MALLOC_ARENA_MAX` in the environment, when set, wins."""

from __future__ import annotations

import ctypes
import os

_M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's arenas for the rest of the process; threads past the cap share the
    existing ones. False where the environment sets the cap or the C library is not glibc."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_ARENA_MAX, arenas))
