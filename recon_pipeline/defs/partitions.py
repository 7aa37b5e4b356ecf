"""UTC days by `created_at`; the first day comes from RECON_START_DATE."""

import os
from datetime import UTC, date, datetime

import dagster as dg

DEFAULT_START_DATE = "2025-01-01"


def first_day(value: str | None = None) -> date:
    """The first daily partition: RECON_START_DATE (YYYY-MM-DD), checked when the definitions
    load, so that a typo or a day still to come stops the code location with the reason
    rather than leaving the UI with no partition or a thousand empty ones."""
    text = value if value is not None else os.environ.get("RECON_START_DATE", DEFAULT_START_DATE)
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"RECON_START_DATE must be a day as YYYY-MM-DD, not {text!r}") from None
    today = datetime.now(UTC).date()
    if day >= today:
        raise ValueError(
            f"RECON_START_DATE {day} leaves no complete UTC day to reconcile (today is {today})"
        )
    return day


daily_partitions = dg.DailyPartitionsDefinition(
    start_date=first_day().isoformat(),
    timezone="UTC",
    fmt="%Y-%m-%d",
)

# A month's statement rolls up its days; the running month is a partition too (end_offset),
# its days still to come counted as open.
monthly_partitions = dg.MonthlyPartitionsDefinition(
    start_date=first_day().replace(day=1).isoformat(),
    timezone="UTC",
    fmt="%Y-%m-%d",
    end_offset=1,
)

GROUP = "reconciliation"
MONTH_CLOSE_GROUP = "month_close"


def partition_days(context: dg.AssetExecutionContext) -> list[date]:
    """The days of a run, one per partition key of its range."""
    return [date.fromisoformat(key) for key in context.partition_keys]


# A backfill of a year becomes twelve runs of a month, each reconciling day by day.
backfill_policy = dg.BackfillPolicy.multi_run(max_partitions_per_run=31)
