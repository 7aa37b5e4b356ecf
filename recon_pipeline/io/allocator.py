"""The process's memory allocator. glibc gives each thread that allocates a heap of its own
(an arena, up to eight per core), and memory freed in one arena is not reused by another:
with a day's parts appended and written back on worker threads (`defs.reconcile_slices`),
the 3M-row day peaked at 1,434 MB, against 1,080 MB with two arenas, in the same time
(benchmarks/README.md). Set when the Definitions are built, before any thread of a run
allocates; `MALLOC_ARENA_MAX` in the environment, when set, wins.

And the cyclic garbage collector: once the Definitions are loaded, the objects tracked then
(about 190,000, nearly all Dagster's, pandas' and SQLAlchemy's modules and classes) live as
long as the process, yet every full collection walks them again, and so does the
interpreter's exit (0.6 s of a run's process, benchmarks/README.md).
`freeze_loaded_objects` moves them out of the collector's sight."""

from __future__ import annotations

import ctypes
import gc
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


def freeze_loaded_objects() -> None:
    """Leave every object tracked now out of future collections (`gc.freeze`), in whatever
    process loads the Definitions (a run, a code server, the tests). Objects made later are
    collected as before. What is frozen is never reclaimed: importing leaves a few dozen
    unreachable objects (one collection found 23, in 0.11 s; not worth that at every start),
    and a frozen cycle's `__del__` does not run at exit. Loading the module again in the
    same process (`importlib.reload`) would keep the first load's cycles."""
    gc.freeze()
