"""Time and peak memory of the `openai_requests` step alone, in a process of its own, on a
seeded day read from its export files (issue 19: the step that parses, dedupes and stores a
day's OpenAI records), with RECON_FULL_RERUN so that every run reads and writes the day.

    uv run python -m benchmarks.experiments.openai_requests_step seed --rows 1000000
    uv run python -m benchmarks.experiments.openai_requests_step run --rows 1000000

`run` prints one JSON line: wall seconds of the step, rows stored, RSS after imports and the
process's peak RSS (VmHWM). To measure older code, run this file from a checkout of it (its
own `uv sync`), with `--results` pointing at the seeded files. `drop` removes the schema and
files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from benchmarks.child import status_mb
from benchmarks.seed import AS_OF, DEFAULT_DAY, DEFAULT_URL

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _names(rows: int, results: Path = RESULTS) -> tuple[str, Path]:
    schema = f"bench_step_{rows}"
    return schema, results / f"exports_{schema}"


def seed(url: str, rows: int) -> None:
    from benchmarks.seed import seed_days

    schema, folder = _names(rows)
    shutil.rmtree(folder, ignore_errors=True)
    seeded = seed_days(url, schema, [DEFAULT_DAY], rows, folder, floor_tables=False)
    print(json.dumps({**seeded.counts, "seconds": round(seeded.seconds, 1)}))


def run(url: str, rows: int, slice_rows: int | None, results: Path) -> None:
    import dagster as dg

    from benchmarks.job import QUIET, resources
    from recon_pipeline.defs.openai_requests import openai_requests
    from recon_pipeline.defs.resources import ReconciliationSettings

    imported_mb = status_mb("VmRSS")
    schema, folder = _names(rows, results)
    chosen = resources(url, schema, folder, AS_OF, slice_rows)
    sliced = {"slice_rows": slice_rows} if slice_rows else {}
    chosen["settings"] = ReconciliationSettings(
        as_of=AS_OF, openai_source="exports", full_rerun=True, **sliced
    )
    started = time.perf_counter()
    result = dg.materialize(
        [openai_requests], partition_key=DEFAULT_DAY.isoformat(), resources=chosen, run_config=QUIET
    )
    seconds = time.perf_counter() - started
    [event] = result.get_asset_materialization_events()
    stored = event.materialization.metadata["dagster/row_count"].value
    print(
        json.dumps(
            {
                "rows": rows,
                "slice_rows": slice_rows,
                "stored": stored,
                "seconds": round(seconds, 2),
                "rss_after_imports_mb": round(imported_mb),
                "peak_rss_mb": round(status_mb("VmHWM")),
            }
        )
    )


def drop(url: str, rows: int) -> None:
    from benchmarks.bench_database import drop_schema

    schema, folder = _names(rows)
    drop_schema(url, schema)
    shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["seed", "run", "drop"])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--slice-rows", type=int, default=None, help="RECON_SLICE_ROWS")
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the files are")
    args = parser.parse_args()
    if args.action == "seed":
        seed(args.database_url, args.rows)
    elif args.action == "run":
        run(args.database_url, args.rows, args.slice_rows, args.results)
    else:
        drop(args.database_url, args.rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
