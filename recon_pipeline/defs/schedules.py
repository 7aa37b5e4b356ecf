"""When the reconciliation runs without anyone acting.

- `daily_reconciliation_schedule`: yesterday, every day at RECON_SCHEDULE_HOUR UTC.
- `pending_rows_sensor`: once an hour, finds earlier days still holding `pending` rows inside
  the grace period and reconciles each again, at most once per day per calendar day.
"""

import os
from datetime import UTC, datetime, timedelta

import dagster as dg

from recon_pipeline.core.days import day_start
from recon_pipeline.defs.partitions import daily_partitions
from recon_pipeline.defs.resources import ReconciliationSettings, ReconDatabase

daily_reconciliation = dg.define_asset_job(
    "daily_reconciliation",
    selection=dg.AssetSelection.groups("reconciliation"),
    description="Extract, reconcile, write back and summarise the selected days.",
)


@dg.schedule(
    job=daily_reconciliation,
    cron_schedule=f"0 {int(os.environ.get('RECON_SCHEDULE_HOUR', '2'))} * * *",
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
