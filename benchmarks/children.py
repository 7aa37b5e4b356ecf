"""Child processes of the benchmark: each measured run starts a fresh interpreter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

from benchmarks.bench_database import checkpoint
from benchmarks.child import machine_busy_s
from benchmarks.seed import AS_OF

ROOT = Path(__file__).resolve().parents[1]


def run_child(
    kind: str,
    args: dict[str, Any],
    out_dir: Path,
    label: str,
    env: dict[str, str] | None = None,
    wrap: list[str] | None = None,
    root: Path = ROOT,
) -> dict[str, Any]:
    """Run `benchmarks.child KIND` in a fresh process and add its wall time, and the CPU the
    whole machine was busy meanwhile (`child_machine_cpu_s`: PostgreSQL's backends as much
    as the child, interpreter start included). Peak memory is the child's own VmHWM, read
    inside it: the parent's ru_maxrss from wait4 would not do, since Linux carries the
    parent's RSS at fork into the child's maxrss across exec.
    `root`: the checkout the child runs in, and so whose recon_pipeline it imports."""
    out = out_dir / f"{label}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.child", kind, json.dumps(args), str(out)]
    load_before = os.getloadavg()[0]
    started, busy = time.perf_counter(), machine_busy_s()
    process = subprocess.Popen((wrap or []) + command, cwd=root, env=env)
    process.wait()
    wall, busy = time.perf_counter() - started, machine_busy_s() - busy
    if process.returncode != 0 or not out.exists():
        raise RuntimeError(f"{kind} child failed with exit code {process.returncode}")
    result = json.loads(out.read_text())
    result["child_wall_s"] = wall
    result["child_machine_cpu_s"] = busy
    # Other processes on the machine show here: the load average over the last minute.
    result["loadavg_before"] = load_before
    result["loadavg_after"] = os.getloadavg()[0]
    return result


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RECON_"))}
    return env | extra


def day_args(url: str, schema: str, export_dir: Path, day: date, sample: int) -> dict[str, Any]:
    """What every child of one seeded day is told: where the day is, and when the run is."""
    return {
        "url": url,
        "schema": schema,
        "export_dir": str(export_dir),
        "day": day.isoformat(),
        "first": day.isoformat(),
        "last": day.isoformat(),
        "as_of": AS_OF,
        "sample": sample,
    }


def seed_afresh(
    url: str,
    schema: str,
    day: date,
    rows: int,
    export_dir: Path,
    with_floor: bool,
    work: Path,
    number: int,
    env: dict[str, str],
) -> dict[str, Any]:
    """The day seeded afresh (the same rows and files each time), in a process of its own:
    seeding 10M rows takes 19.7 GB, which this process would otherwise keep (4.8 GB of it,
    measured) while the runs it measures need the page cache."""
    shutil.rmtree(export_dir, ignore_errors=True)
    export_dir.mkdir()
    seeded = run_child(
        "seed",
        {"url": url, "schema": schema, "day": day.isoformat(), "rows": rows}
        | {"export_dir": str(export_dir), "floor_tables": with_floor},
        work,
        f"seed_{rows}_{number}",
        env,
    )
    print(
        f"  seeded in {seeded['seconds']:.1f} s, peak RSS {seeded['peak_rss_mb']:,.0f} MB",
        flush=True,
    )
    # What the seeding (and, before the first repeat of a size, the larger size dropped)
    # left to write goes to disk now, not during the measured runs.
    checkpoint(url)
    os.sync()
    return seeded


def job_run(
    common: dict, work: Path, env: dict, label: str, name: str, root: Path = ROOT
) -> dict[str, Any]:
    """One run of the job as a process of its own (in checkout `root`), then a CHECKPOINT."""
    run = run_child("job", common, work, label, env, root=root)
    if not run["success"]:
        raise RuntimeError(f"job {name} failed:\n{run['failure']}")
    print(
        f"  job {name}: {run['wall_s']:.2f} s inside, {run['child_wall_s']:.2f} s"
        f" as a process, peak RSS {run['peak_rss_mb']:.0f} MB, load"
        f" {run['loadavg_before']:.2f} -> {run['loadavg_after']:.2f}",
        flush=True,
    )
    checkpoint(common["url"])
    return run
