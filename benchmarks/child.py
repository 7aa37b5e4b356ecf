"""One measured piece of work in a process of its own, so that its peak memory is its own.

    python -m benchmarks.child KIND ARGS_JSON OUT_JSON

KIND is `job` (the Dagster job), `stages` (the finer split), `floor`, `floor_outputs` (the
floor with the pipeline's outputs), or `seed` (a day
seeded, so that the memory seeding takes is gone before anything is measured). The result, plus
import time, RSS after imports and the process's peak RSS (VmHWM), is written to OUT_JSON.
(VmHWM of this process, after exec: it does not include the parent's memory.)
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def machine_busy_s() -> float:
    """CPU seconds every process on the machine has spent busy since boot (user, nice,
    system, irq, softirq): PostgreSQL's backends as much as this one."""
    with open("/proc/stat") as handle:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, handle.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _job(args: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    import dagster as dg

    from benchmarks.job import run_job

    def work() -> dict[str, Any]:
        instance = dg.DagsterInstance.get() if args.get("persistent_instance") else None
        return run_job(
            args["url"],
            args["schema"],
            Path(args["export_dir"]),
            date.fromisoformat(args["first"]),
            date.fromisoformat(args["last"]),
            args["as_of"],
            instance=instance,
            slice_rows=args.get("slice_rows"),
            full_rerun=bool(args.get("full_rerun")),
        )

    return work


def _stages(args: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    from benchmarks.stages import run_stages

    return lambda: run_stages(
        args["url"],
        args["schema"],
        Path(args["export_dir"]),
        date.fromisoformat(args["day"]),
        args["as_of"],
        slice_rows=args.get("slice_rows"),
    )


def _floor(args: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    from benchmarks.floor import run_floor

    return lambda: run_floor(
        args["url"],
        args["schema"],
        date.fromisoformat(args["day"]),
        args["as_of"],
        args["sample"],
        Path(args["export_dir"]),
    )


def _floor_outputs(args: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    from benchmarks.floor_outputs import run_floor_outputs

    return lambda: run_floor_outputs(
        args["url"],
        args["schema"],
        date.fromisoformat(args["day"]),
        args["as_of"],
        Path(args["export_dir"]),
    )


def _seed(args: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    from benchmarks.seed import seed_days

    def work() -> dict[str, Any]:
        seeded = seed_days(
            args["url"],
            args["schema"],
            [date.fromisoformat(args["day"])],
            args["rows"],
            Path(args["export_dir"]),
            floor_tables=args["floor_tables"],
        )
        return {"seconds": seeded.seconds, "counts": seeded.counts}

    return work


# Each kind imports what it needs and returns its work, so that import time is its own.
KINDS = {
    "job": _job,
    "stages": _stages,
    "floor": _floor,
    "floor_outputs": _floor_outputs,
    "seed": _seed,
}


def main(argv: list[str]) -> int:
    kind, raw, out = argv
    warnings.filterwarnings("ignore", category=Warning, module="dagster")
    warnings.filterwarnings("ignore", message=".*is currently in (beta|preview).*")
    if kind not in KINDS:
        raise SystemExit(f"unknown kind {kind!r}")
    work = KINDS[kind](json.loads(raw))
    imported = time.perf_counter() - _STARTED
    rss_imported = status_mb("VmRSS")
    result = work() | {
        "import_s": imported,
        "rss_after_import_mb": rss_imported,
        "peak_rss_mb": status_mb("VmHWM"),
        "process_s": time.perf_counter() - _STARTED,
    }
    Path(out).write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
