"""Where a measured run's CPU goes: the Python process's own, and each PostgreSQL process's
charged to the statement it was running. On a machine whose cores the job keeps busy, CPU
is what a faster schedule cannot win back, so this is the other half of "where the
remaining difference goes" (issue 19, target 3), beside `timeline`'s wall-clock path.

    python -m benchmarks.cpu_ledger PID OUT_JSON DATABASE_URL

samples every 0.1 s, until SIGTERM, the CPU (utime + stime, /proc/PID/stat) of process PID
and of every process `pg_stat_activity` lists, and charges each PostgreSQL process's CPU
since the last sample to the role of what it was running then (`role`). It then writes
`{"python_s": ..., "roles": {role: seconds}}` to OUT_JSON. `measured()` runs it around a
block. A process first seen after the first sample is charged all its CPU to what it was first
seen running; one that ends between two samples loses at most its last 0.1 s, and one that
lives less than 0.1 s may be missed. The sampler itself costs about 2% of a core.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.bench_database import conninfo

_TICKS = os.sysconf("SC_CLK_TCK")
_UPDATE = re.compile(r"^(?:WITH\s.*?\(\s*)?UPDATE\s+(?:ONLY\s+)?(\S+)", re.IGNORECASE | re.DOTALL)
_COPY_IN = re.compile(r"^COPY\s+(\S+).*\bFROM\s+STDIN\b", re.IGNORECASE | re.DOTALL)
_FROM = re.compile(r"\bFROM\s+(?!\()([^\s,()]+)", re.IGNORECASE)


def _table(name: str) -> str:
    return name.split(".")[-1].strip('"').split("(")[0]


def role(query: str, state: str, backend_type: str) -> str:
    """What a PostgreSQL process's CPU is charged to: an UPDATE or a COPY by its table, the
    reads, ANALYZE, other statements by their first word and first table read, or the
    process's own kind (a parallel worker is charged to its leader's role, `_sample`)."""
    if backend_type != "client backend":
        return backend_type
    if state != "active":
        return "between statements"
    text = query.strip()
    if found := _UPDATE.match(text):
        return f"UPDATE {_table(found.group(1))}"
    if found := _COPY_IN.match(text):
        return f"COPY into {_table(found.group(1))}"
    first = text.split(None, 1)[0].upper() if text else "?"
    if first == "COPY":
        return "COPY out (reads)"
    if first == "ANALYZE":
        return "ANALYZE"
    source = _FROM.search(text)
    return f"{first} from {_table(source.group(1))}" if source else f"other {first} statements"


def _cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _sample(pid: int, out: Path, url: str) -> None:
    stopped: list[int] = []
    ready = out.with_suffix(".ready")
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
    roles: Counter[str] = Counter()
    last: dict[int, tuple[float, str]] = {}
    python_start = _cpu_s(pid) or 0.0
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        own = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        first = True
        while not stopped:
            listed = conn.execute(
                "SELECT pid, coalesce(query, ''), coalesce(state, ''), backend_type, leader_pid"
                " FROM pg_stat_activity WHERE pid <> %s",
                (own,),
            ).fetchall()
            named = {backend: role(q, state, kind) for backend, q, state, kind, _ in listed}
            for backend, _, _, kind, leader in listed:
                now = _cpu_s(backend)
                if now is None:
                    continue
                charged = named[backend]
                if kind == "parallel worker" and leader in named:
                    charged = f"{named[leader]} (parallel workers)"
                if backend not in last and not first:  # started since the first sample
                    last[backend] = (0.0, charged)
                if backend in last and now > last[backend][0]:
                    roles[last[backend][1]] += now - last[backend][0]
                last[backend] = (now, charged)
            if first:
                ready.touch()
                first = False
            time.sleep(0.1)
    python = (_cpu_s(pid) or python_start) - python_start
    out.write_text(json.dumps({"python_s": python, "roles": dict(roles.most_common())}))


@contextmanager
def measured(url: str, work: Path, label: str) -> Iterator[dict[str, Any]]:
    """The CPU ledger of this process and PostgreSQL's while the block runs, filled in the
    yielded dict when the block ends (`_sample`, in a process of its own)."""
    out, ready = work / f"cpu_{label}.json", work / f"cpu_{label}.ready"
    out.unlink(missing_ok=True)
    ready.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.cpu_ledger", str(os.getpid()), str(out), url]
    sampler = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[1])
    ledger: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():  # its first sample taken before the block starts
            if sampler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the CPU sampler did not start")
            time.sleep(0.02)
        yield ledger
        time.sleep(0.2)  # a last sample of what the block's end left running
    finally:
        sampler.send_signal(signal.SIGTERM)
        sampler.wait(timeout=30)
    if sampler.returncode != 0 or not out.exists():
        raise RuntimeError(f"the CPU sampler failed with exit code {sampler.returncode}")
    ledger.update(json.loads(out.read_text()))


if __name__ == "__main__":
    _sample(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
