"""When the reconciliation runs without anyone acting.

- `daily_reconciliation_schedule`: yesterday, every day at RECON_SCHEDULE_HOUR UTC.
- `pending_rows_sensor`: once an hour, finds earlier days still holding `pending` rows inside
  the grace period and reconciles each again, at most once per day per calendar day.
- `monthly_statement_schedule`: last month's statement, at the same hour, on the first day its
  last day's grace period is over.
"""

import os
from datetime import UTC, date, datetime, timedelta

import dagster as dg

from recon_pipeline.core.days import day_start
from recon_pipeline.core.settlement import closes_at
from recon_pipeline.defs.partitions import daily_partitions, monthly_partitions
from recon_pipeline.defs.resources import ReconciliationSettings, ReconDatabase
from recon_pipeline.defs.statement import monthly_statement_job

DAILY_AT_SCHEDULE_HOUR = f"0 {int(os.environ.get('RECON_SCHEDULE_HOUR', '2'))} * * *"

daily_reconciliation = dg.define_asset_job(
    "daily_reconciliation",
    selection=dg.AssetSelection.groups("reconciliation"),
    description="Extract, reconcile, write back and summarise the selected days.",
)


@dg.schedule(
    job=daily_reconciliation,
    cron_schedule=DAILY_AT_SCHEDULE_HOUR,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def daily_reconciliation_schedule(
    context: dg.ScheduleEvaluationContext,
) -> dg.RunRequest | dg.SkipReason:
    """Yesterday's partition, keyed by the day so a tick is never run twice; the tag is the
    resolved partition, so the tick needs no repository to evaluate."""
    tick = context.scheduled_execution_time or datetime.now(UTC)
    yesterday = tick.astimezone(UTC).date() - timedelta(days=1)
    if yesterday < daily_partitions.start.date():
        return dg.SkipReason(f"{yesterday} is before the first partition")
    key = yesterday.isoformat()
    return dg.RunRequest(run_key=key, partition_key=key, tags={"dagster/partition": key})


@dg.sensor(
    job=daily_reconciliation,
    minimum_interval_seconds=3600,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def pending_rows_sensor(
    context: dg.SensorEvaluationContext,
    database: ReconDatabase,
    settings: ReconciliationSettings,
) -> dg.SensorResult:
    """Re-reconcile days whose rows still wait for OpenAI, until their grace period ends."""
    now = settings.now()
    today = day_start(now.date())
    since = today - timedelta(days=settings.grace_days + 1)
    days = database.get().pending_days(since, today - timedelta(days=1))
    first = daily_partitions.start
    requests = [
        dg.RunRequest(
            run_key=f"pending:{day.isoformat()}:{today.date().isoformat()}",
            partition_key=day.isoformat(),
            tags={"recon/trigger": "pending_rows"},
        )
        for day in days
        if day >= first.date()
    ]
    return dg.SensorResult(run_requests=requests)


def _month_before(day: date) -> date:
    return (day.replace(day=1) - timedelta(days=1)).replace(day=1)


def _month_after(month: date) -> date:
    return (month.replace(day=1) + timedelta(days=32)).replace(day=1)


def statement_due(month: date, grace: timedelta) -> datetime:
    """When a month's statement is run: once its last day's grace period is over, so OpenAI's
    late records and the rows they settle are in it."""
    return closes_at(_month_after(month) - timedelta(days=1), grace)


def _latest_due_month(tick: datetime, grace: timedelta) -> date:
    return _month_before((tick - grace).date())


def statement_to_request(tick: datetime, grace: timedelta) -> date | None:
    """The month a tick requests: the latest one due, from its due tick to the end of that
    calendar month; None while last month waits for its grace period. A grace period longer
    than a month so delays each statement but skips none."""
    month = _latest_due_month(tick, grace)
    due = statement_due(month, grace)
    return month if (due.year, due.month) == (tick.year, tick.month) else None


@dg.schedule(
    job=monthly_statement_job,
    cron_schedule=DAILY_AT_SCHEDULE_HOUR,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def monthly_statement_schedule(
    context: dg.ScheduleEvaluationContext,
    settings: ReconciliationSettings,
) -> dg.RunRequest | dg.SkipReason:
    """Last month's statement once its grace period is over, keyed by the month so the ticks
    until the month's end launch it once (Dagster dedupes run keys)."""
    tick = (context.scheduled_execution_time or datetime.now(UTC)).astimezone(UTC)
    grace = timedelta(days=settings.grace_days)
    month = statement_to_request(tick, grace)
    if month is None:
        waiting = _month_after(_latest_due_month(tick, grace))
        return dg.SkipReason(
            f"the statement of {waiting:%Y-%m} waits until"
            f" {statement_due(waiting, grace):%Y-%m-%d}, when its last day's"
            f" {settings.grace_days}-day grace period is over"
        )
    if month < monthly_partitions.start.date():
        return dg.SkipReason(f"{month:%Y-%m} is before the first monthly partition")
    key = month.isoformat()
    return dg.RunRequest(run_key=key, partition_key=key, tags={"dagster/partition": key})
