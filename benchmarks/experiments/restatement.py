"""What reading a day's Costs totals again costs a run: unchanged, closing it, restating it.

Each daily run reads again the Costs totals of the last RECON_RESTATEMENT_LOOKBACK_DAYS days
past their grace period (`defs/settlement.py`, `reread_day`). A day whose totals and status
did not change costs its settlement rows; a day that closes or is restated has its Costs
rows, invoice_check, invoice_gap and daily_variance_summary computed again from its stored
results, in one transaction. This seeds one day of `--rows` rows (`benchmarks.seed`, schema
`bench_restatement`, dropped afterwards), runs the real job on it inside the grace period,
then times `reread_day` on the stored day as a later run calls it:

    uv run python -m benchmarks.experiments.restatement --rows 1000000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from benchmarks.bench_database import drop_schema
from benchmarks.job import run_job
from benchmarks.seed import AS_OF, DEFAULT_DAY, DEFAULT_URL, seed_days
from recon_pipeline.core.pricing import PriceCatalogue
from recon_pipeline.core.reconcile import ReconciliationPolicy
from recon_pipeline.defs.settlement import reread_day
from recon_pipeline.io.database import DAY_SETTLEMENT, OPENAI_DAILY_COSTS, Database
from recon_pipeline.io.exports import read_daily_totals

SCHEMA = "bench_restatement"
REPEATS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    args = parser.parse_args()
    day, url = DEFAULT_DAY, args.database_url
    with tempfile.TemporaryDirectory() as folder:
        exports = Path(folder)
        seeded = seed_days(url, SCHEMA, [day], args.rows, exports, floor_tables=False)
        print(f"seeded {seeded.counts['rows']:,} rows in {seeded.seconds:.1f} s", flush=True)
        try:
            ran = run_job(url, SCHEMA, exports, day, day, AS_OF)
            assert ran["success"], ran["failure"]
            print(f"job run inside the grace period: {ran['wall_s']:.2f} s", flush=True)
            engine = sa.create_engine(url)
            db = Database(engine, usage_schema=SCHEMA)
            grace = ReconciliationPolicy().grace
            later = datetime.fromisoformat(AS_OF).astimezone(UTC) + timedelta(days=4)
            started = time.perf_counter()
            costs = read_daily_totals(exports, day - timedelta(days=6), day).costs
            costs = costs.rename(columns={"day": "usage_date"})
            print(f"Costs pages of 7 days read: {time.perf_counter() - started:.3f} s")
            catalogue = PriceCatalogue()

            def timed(what: str, frame: pd.DataFrame, now: datetime) -> None:
                started = time.perf_counter()
                done = reread_day(db, day, frame, now, grace, None, catalogue)
                seconds = time.perf_counter() - started
                assert done is not None
                print(
                    f"{what}: {seconds:.3f} s, {done.settlement.status},"
                    f" rewritten: {', '.join(done.rewritten) or 'nothing'}",
                    flush=True,
                )

            timed("closing the day", costs, later)
            for repeat in range(REPEATS):
                timed(f"read again unchanged ({repeat + 1})", costs, later)
            restated = pd.concat([costs, costs.tail(1)], ignore_index=True)
            timed("restated: figures recomputed", restated, later)
            with engine.connect() as conn:
                rows = {
                    t.name: conn.execute(
                        sa.text(f"SELECT count(*) FROM {db.table(t)}")
                    ).scalar_one()
                    for t in (OPENAI_DAILY_COSTS, DAY_SETTLEMENT)
                }
            print(f"stored rows: {rows}")
            engine.dispose()
        finally:
            drop_schema(url, SCHEMA)


if __name__ == "__main__":
    main()
