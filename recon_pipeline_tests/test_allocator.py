"""The cap on glibc's arenas that keeps a day's worker threads from raising its peak memory
(`io.allocator`)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from recon_pipeline.io.allocator import limit_malloc_arenas

_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _GLIBC, reason="glibc's mallopt")
def test_the_cap_is_set_on_glibc_unless_the_environment_sets_it(monkeypatch) -> None:
    assert limit_malloc_arenas() is True
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


@pytest.mark.skipif(not _GLIBC, reason="glibc's arenas")
def test_threads_past_the_cap_share_the_existing_arenas() -> None:
    """Eight threads each allocating: glibc's malloc_info lists one heap per arena."""
    script = """
import ctypes, sys, threading
from recon_pipeline.io.allocator import limit_malloc_arenas
if sys.argv[1] == "capped":
    limit_malloc_arenas(2)
def work():
    blocks = [bytearray(64 * 1024) for _ in range(200)]
    del blocks
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(None)
libc.open_memstream.restype = ctypes.c_void_p
buf, size = ctypes.c_char_p(), ctypes.c_size_t()
stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
libc.malloc_info(0, ctypes.c_void_p(stream))
libc.fclose(ctypes.c_void_p(stream))
print(buf.value.decode().count("<heap nr="))
"""
    counts = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", script, mode], capture_output=True, text=True, check=True
            ).stdout
        )
        for mode in ("capped", "free")
    }
    assert counts["capped"] <= 2 < counts["free"]


def test_loading_the_definitions_freezes_what_they_brought_but_not_what_comes_after() -> None:
    """In a fresh process: the loaded code is out of the collector's sight, and a cycle made
    afterwards is still collected."""
    script = """
import gc, weakref
before = gc.get_freeze_count()
import recon_pipeline.definitions
frozen = gc.get_freeze_count()
class Node: pass
a, b = Node(), Node()
a.other, b.other = b, a
ref = weakref.ref(a)
del a, b
gc.collect()
print(before, frozen, ref() is None)
"""
    before, frozen, collected = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(before) == 0
    assert int(frozen) > 100_000  # Dagster, pandas and SQLAlchemy's objects
    assert collected == "True"
