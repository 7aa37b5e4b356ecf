"""Where a measured run's CPU goes: the Python process's own, and each PostgreSQL process's
charged to the statement it was running. On a machine whose cores the job keeps busy, CPU
is what a faster schedule cannot win back, so this is the other half of "where the
remaining difference goes" (issue 19, target 3), beside `timeline`'s wall-clock path.

    python -m benchmarks.cpu_ledger PID OUT_JSON DATABASE_URL

samples every 0.1 s, until SIGTERM, the CPU (utime + stime, /proc/PID/stat) of process PID
and of every process `pg_stat_activity` lists for this database (and the server's own
background processes). Each interval's CPU is charged to the role of what the process was
running at the interval's start (`role`), so a statement's first tenth of a second may land
on what ran before it. A process first seen after the first sample is charged all its CPU;
one that ends between two samples loses its last interval, so short-lived parallel workers
are counted from below. It then writes `{"python_s", "machine_s", "roles"}` to OUT_JSON,
`machine_s` being every process's busy CPU over the same samples. `measured()` runs it
around a block. The sampler itself cost 0.09 s of the machine's CPU in 5 s idle.
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
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.bench_database import conninfo
from benchmarks.child import machine_busy_s

_TICKS = os.sysconf("SC_CLK_TCK")
_UPDATE = re.compile(r"^(?:WITH\s.*?\(\s*)?UPDATE\s+(?:ONLY\s+)?(\S+)", re.IGNORECASE | re.DOTALL)
_COPY_IN = re.compile(r"^COPY\s+(\S+).*\bFROM\s+STDIN\b", re.IGNORECASE | re.DOTALL)
# FROM that names no relation: extract(epoch FROM x), IS [NOT] DISTINCT FROM x, substring(x FROM y).
_NOT_A_SOURCE = re.compile(
    r"\bextract\s*\(\s*\w+\s+FROM\b|\bDISTINCT\s+FROM\b|\bSUBSTRING\s*\([^)]*\bFROM\b",
    re.IGNORECASE,
)
_FROM = re.compile(r"\bFROM\s+(?!\()([^\s,()]+)", re.IGNORECASE)
_LISTED = (
    "SELECT pid, backend_start, coalesce(query, ''), coalesce(state, ''), backend_type,"
    " leader_pid FROM pg_stat_activity"
    " WHERE pid <> pg_backend_pid() AND (datname = current_database() OR datname IS NULL)"
)


def _relation(name: str) -> str:
    return name.split(".")[-1].strip('"').split("(")[0]


def role(query: str, state: str, backend_type: str) -> str:
    """What a PostgreSQL process's CPU is charged to: an UPDATE or a COPY by its table, the
    reads, ANALYZE, other statements by their first word and the first table they read, or
    the process's own kind (a parallel worker is charged to its leader's role, `_sample`)."""
    if backend_type != "client backend":
        return backend_type
    if state != "active":
        return "between statements"
    text = query.strip()
    if found := _UPDATE.match(text):
        return f"UPDATE {_relation(found.group(1))}"
    if found := _COPY_IN.match(text):
        return f"COPY into {_relation(found.group(1))}"
    first = text.split(None, 1)[0].upper() if text else "?"
    if first == "COPY":
        return "COPY out (reads)"
    if first == "ANALYZE":
        return "ANALYZE"
    source = _FROM.search(_NOT_A_SOURCE.sub(" ", text))
    return f"{first} from {_relation(source.group(1))}" if source else f"other {first} statements"


def _process_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS


class _Ledger:
    """The running sums: each PostgreSQL process by (pid, start) so that a reused pid starts
    afresh, with the CPU it had and what it ran at the last sample."""

    def __init__(self) -> None:
        self.roles: Counter[str] = Counter()
        self.last: dict[tuple[int, datetime], tuple[float, str]] = {}
        self.first = True

    def sample(self, conn: psycopg.Connection) -> None:
        listed = conn.execute(_LISTED).fetchall()
        named = {pid: role(q, state, kind) for pid, _, q, state, kind, _ in listed}
        for pid, started, _, _, kind, leader in listed:
            now = _process_cpu_s(pid)
            if now is None:
                continue
            charged = named[pid]
            if kind == "parallel worker" and leader in named:
                charged = f"{named[leader]} (parallel workers)"
            key = (pid, started)
            if key not in self.last and not self.first:  # started since the first sample
                self.last[key] = (0.0, charged)
            if key in self.last and now > self.last[key][0]:
                self.roles[self.last[key][1]] += now - self.last[key][0]
            self.last[key] = (now, charged)
        self.first = False


def _sample(pid: int, out: Path, url: str) -> None:
    """Sample until SIGTERM, once more after it, then write the ledger (the module's doc)."""
    stopped: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
    ledger = _Ledger()
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        python, machine = _process_cpu_s(pid) or 0.0, machine_busy_s()
        ledger.sample(conn)
        out.with_suffix(".ready").touch()
        while not stopped:
            time.sleep(0.1)
            ledger.sample(conn)
        python = (_process_cpu_s(pid) or python) - python
        machine = machine_busy_s() - machine
    out.write_text(
        json.dumps(
            {"python_s": python, "machine_s": machine, "roles": dict(ledger.roles.most_common())}
        )
    )


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
    finally:
        sampler.send_signal(signal.SIGTERM)
        try:
            sampler.wait(timeout=30)
        except subprocess.TimeoutExpired:
            sampler.kill()
            sampler.wait()
    if sampler.returncode != 0 or not out.exists():
        raise RuntimeError(f"the CPU sampler failed with exit code {sampler.returncode}")
    ledger.update(json.loads(out.read_text()))


if __name__ == "__main__":
    _sample(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
