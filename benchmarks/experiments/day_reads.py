"""A day's two large reads, alone: psycopg's COPY to CSV parsed by pyarrow (`pg_copy`, the
reads until 2026-12-07, and a small day's still) against ADBC's binary COPY (`pg_arrow`,
`Database.read_day_parts` for a day of `ARROW_READ_ROWS` or more),
alternated on the same seeded day, each in a REPEATABLE READ transaction as the job's reader.

    uv run python -m benchmarks.experiments.day_reads --rows 1000000 --repeats 4

Seeds one day (`benchmarks.seed`, schema `bench_day_reads`, dropped afterwards), runs the
job once so that `openai_requests` holds the day's records, then times both reads of both
sides into the same parts, wall and this process's CPU, and checks that every part's file
reads back the same both ways.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas.testing as pdt
import sqlalchemy as sa

from benchmarks.bench_database import drop_schema
from benchmarks.children import child_env, day_args, run_child
from benchmarks.seed import DEFAULT_DAY, DEFAULT_URL, seed_days
from recon_pipeline.core.reconcile import ReconciliationPolicy, read_window
from recon_pipeline.io.database import Database
from recon_pipeline.io.pg_arrow import ARROW_READ_ROWS
from recon_pipeline.io.pg_copy import read_part

SCHEMA = "bench_day_reads"
PARTS = 3


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reads(rows: int) -> Callable[[Database, sa.Connection, Path], None]:
    """`Database.read_day_parts` as a day of `rows` rows and records reads."""

    def read(db: Database, conn: sa.Connection, folder: Path) -> None:
        window = read_window(DEFAULT_DAY, ReconciliationPolicy())
        db.read_day_parts(DEFAULT_DAY, window, conn, PARTS, folder, rows)

    return read


def _timed(db: Database, read: Callable, folder: Path) -> tuple[float, float]:
    with db.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            conn.execute(sa.text("SELECT 1"))  # the snapshot is taken
            started, cpu = time.perf_counter(), _cpu()
            read(db, conn, folder)
            return time.perf_counter() - started, _cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--url", default=DEFAULT_URL)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="recon_day_reads_"))
    try:
        seeded = seed_days(
            args.url, SCHEMA, [DEFAULT_DAY], args.rows, work / "exports", floor_tables=False
        )
        common = day_args(args.url, SCHEMA, seeded.export_dir, DEFAULT_DAY, 0)
        run_child("job", common, work, "job", child_env())
        db = Database(sa.create_engine(args.url), usage_schema=SCHEMA, output_schema=SCHEMA)
        reads = {"csv": _reads(0), "adbc": _reads(ARROW_READ_ROWS)}
        for turn in range(args.repeats):
            order = list(reads) if turn % 2 == 0 else list(reads)[::-1]
            for name in order:
                folder = work / f"{name}_{turn}"
                folder.mkdir()
                wall, cpu = _timed(db, reads[name], folder)
                print(f"{name}: {wall:.2f} s, {cpu:.2f} s of this process's CPU", flush=True)
            for path in sorted((work / f"csv_{turn}").iterdir()):
                pdt.assert_frame_equal(
                    read_part(path), read_part(work / f"adbc_{turn}" / path.name)
                )
        print("every part's file read back the same both ways")
        db.engine.dispose()
    finally:
        drop_schema(args.url, SCHEMA)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
