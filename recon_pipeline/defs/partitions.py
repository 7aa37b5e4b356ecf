"""UTC days by `created_at`; the first day comes from RECON_START_DATE."""

import os

import dagster as dg

DEFAULT_START_DATE = "2025-01-01"

daily_partitions = dg.DailyPartitionsDefinition(
    start_date=os.environ.get("RECON_START_DATE", DEFAULT_START_DATE),
    timezone="UTC",
    fmt="%Y-%m-%d",
)

# A backfill of a year becomes twelve runs of a month, each reconciling day by day.
backfill_policy = dg.BackfillPolicy.multi_run(max_partitions_per_run=31)
