"""One measured piece of work in a process of its own, so that its peak memory is its own.

    python -m benchmarks.child KIND ARGS_JSON OUT_JSON

KIND is `job` (the Dagster job), `stages` (the finer split), `floor`, or `seed` (a day
seeded, so that the memory seeding takes is gone before anything is measured). The result, plus
import time, RSS after imports and the process's peak RSS (VmHWM), is written to OUT_JSON.
(VmHWM of this process, after exec: it does not include the parent's memory.)
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str]) -> int:
    kind, raw, out = argv
    warnings.filterwarnings("ignore", category=Warning, module="dagster")
    warnings.filterwarnings("ignore", message=".*is currently in (beta|preview).*")
    args = json.loads(raw)
    if kind == "job":
        import dagster as dg

        from benchmarks.job import run_job

        imported = time.perf_counter() - _STARTED
        rss_imported = status_mb("VmRSS")
        instance = dg.DagsterInstance.get() if args.get("persistent_instance") else None
        result = run_job(
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
    elif kind == "stages":
        from benchmarks.stages import run_stages

        imported = time.perf_counter() - _STARTED
        rss_imported = status_mb("VmRSS")
        result = run_stages(
            args["url"],
            args["schema"],
            Path(args["export_dir"]),
            date.fromisoformat(args["day"]),
            args["as_of"],
            slice_rows=args.get("slice_rows"),
        )
    elif kind == "floor":
        from benchmarks.floor import run_floor

        imported = time.perf_counter() - _STARTED
        rss_imported = status_mb("VmRSS")
        result = run_floor(
            args["url"],
            args["schema"],
            date.fromisoformat(args["day"]),
            args["as_of"],
            args["sample"],
            Path(args["export_dir"]),
        )
    elif kind == "seed":
        from benchmarks.seed import seed_days

        imported = time.perf_counter() - _STARTED
        rss_imported = status_mb("VmRSS")
        seeded = seed_days(
            args["url"],
            args["schema"],
            [date.fromisoformat(args["day"])],
            args["rows"],
            Path(args["export_dir"]),
            floor_tables=args["floor_tables"],
        )
        result = {"seconds": seeded.seconds, "counts": seeded.counts}
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    result |= {
        "import_s": imported,
        "rss_after_import_mb": rss_imported,
        "peak_rss_mb": status_mb("VmHWM"),
        "process_s": time.perf_counter() - _STARTED,
    }
    Path(out).write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
