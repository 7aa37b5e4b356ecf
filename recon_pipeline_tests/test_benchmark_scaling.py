"""`benchmarks.scaling` charges each measured process the CPU the whole machine was busy
while it ran (PostgreSQL's backends too), and reports that CPU spread over the cores against
the issue's floor: about the least any schedule of the same work on this machine could take."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from benchmarks import scaling
from benchmarks.children import run_child
from benchmarks.seed import DEFAULT_DAY

BOUND_ROW = "that CPU / 2 cores over the floor"
CPU_ROW = "CPU the machine was busy, as processes"


def _run(wall: float, cpu: float | None) -> dict[str, Any]:
    run = {
        "wall_s": wall - 1,
        "child_wall_s": wall,
        "peak_rss_mb": 900.0,
        "steps": {"reconciled_usage": {"wall_s": wall - 2}},
        "loadavg_before": 1.0,
        "loadavg_after": 1.5,
        "machine_cpu_busy_s": (cpu or 0) - 2,
    }
    return run if cpu is None else run | {"child_machine_cpu_s": cpu}


def _floor(wall: float, cpu: float) -> dict[str, Any]:
    return {
        "total_s": wall - 1,
        "child_wall_s": wall,
        "child_machine_cpu_s": cpu,
        "phases": {"update_from": wall / 2},
    }


def _row(rows: list[list[str]], label: str) -> list[str]:
    (found,) = [row[1:] for row in rows if row[0].startswith(label)]
    return found


def test_the_cpu_bound_is_the_median_cpu_over_the_cores_against_the_floor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scaling.os, "cpu_count", lambda: 2)
    runs = [_run(40.0, 60.0), _run(38.0, 50.0), _run(39.0, 64.0)]
    with_floor = {
        "rows": 1_000_000,
        "run1": runs[2],  # the median by wall
        "run1_repeats": runs,
        "run2": _run(3.0, 3.5),
        "floor": [_floor(10.0, 11.0), _floor(12.0, 13.0), _floor(17.0, 30.0)],
        "floor_outputs": [_floor(20.0, 20.0), _floor(22.0, 24.0), _floor(21.0, 31.0)],
    }
    without = {"rows": 10_000_000, "run1": _run(400.0, None), "run2": _run(9.0, None)}
    rows = scaling.summary_rows([with_floor, without])
    # run 1: the median 60 s of CPU of its runs (the median run by wall took 64) / 2 cores /
    # the floor's median 12 s as a process (its mean is 13); the floor with the outputs: its
    # median 24 s of CPU (mean 25), the same way.
    assert _row(rows, BOUND_ROW) == ["2.50; 1.00", "-; -"]
    assert _row(rows, CPU_ROW) == ["60.0; 13.0; 24.0", "-; -; -"]


def test_a_child_is_charged_the_cpu_the_machine_spent_while_it_ran(
    pg_url: str, pg_schema: tuple[sa.Engine, str], tmp_path: Path
) -> None:
    _, schema = pg_schema
    args = {
        "url": pg_url,
        "schema": schema,
        "day": DEFAULT_DAY.isoformat(),
        "rows": 50,
        "export_dir": str(tmp_path / "exports"),
        "floor_tables": False,
    }
    # A wrapper that keeps a core busy for 0.8 s of its own CPU, then runs the child.
    burn = [
        sys.executable,
        "-c",
        "import subprocess, sys, time\n"
        "end = time.process_time() + 0.8\n"
        "while time.process_time() < end: pass\n"
        "sys.exit(subprocess.call(sys.argv[1:]))",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    burning = run_child("seed", args, tmp_path, "burning", wrap=burn)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    # The machine's CPU holds the child's own (the burner's 0.8 s and the seeding's) and the
    # database's, and no more than every core for as long as it ran.
    assert own >= 0.8
    assert own - 0.05 <= burning["child_machine_cpu_s"]
    assert burning["child_machine_cpu_s"] <= os.cpu_count() * burning["child_wall_s"] + 0.05
