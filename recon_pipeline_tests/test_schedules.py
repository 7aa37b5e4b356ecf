"""The daily and monthly schedules and the pending-rows sensor, evaluated through Dagster's
contexts."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise

import dagster as dg
import pytest
import sqlalchemy as sa

from recon_pipeline.definitions import defs
from recon_pipeline.defs.partitions import monthly_partitions
from recon_pipeline.defs.resources import ReconciliationSettings, ReconDatabase
from recon_pipeline.defs.schedules import (
    daily_reconciliation,
    daily_reconciliation_schedule,
    monthly_statement_schedule,
    pending_rows_sensor,
    statement_to_request,
)
from recon_pipeline.defs.statement import monthly_statement_job
from recon_pipeline.io.migrations import create_demo_token_usage

SCHEDULE_HOUR = int(os.environ.get("RECON_SCHEDULE_HOUR", "2"))


# -- schedule --------------------------------------------------------------------------------


def test_schedule_runs_daily_at_the_configured_hour_in_utc() -> None:
    schedule = defs.resolve_schedule_def("daily_reconciliation_schedule")
    assert schedule.cron_schedule == f"0 {SCHEDULE_HOUR} * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.job_name == daily_reconciliation.name
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


@pytest.mark.parametrize(
    ("tick", "partition"),
    [
        (datetime(2026, 11, 11, SCHEDULE_HOUR, 0, tzinfo=UTC), "2026-11-10"),
        (datetime(2026, 1, 1, SCHEDULE_HOUR, 0, tzinfo=UTC), "2025-12-31"),
        (datetime(2028, 3, 1, SCHEDULE_HOUR, 0, tzinfo=UTC), "2028-02-29"),
    ],
)
def test_schedule_targets_yesterdays_partition(tick: datetime, partition: str) -> None:
    context = dg.build_schedule_context(scheduled_execution_time=tick)
    data = daily_reconciliation_schedule.evaluate_tick(context)
    [request] = data.run_requests
    assert request.partition_key == partition
    assert request.run_key == partition
    assert request.tags["dagster/partition"] == partition


def test_schedule_hour_comes_from_the_environment() -> None:
    code = (
        "from recon_pipeline.defs.schedules import daily_reconciliation_schedule as s,"
        " monthly_statement_schedule as m;"
        "print(s.cron_schedule, m.cron_schedule, sep='|')"
    )
    env = {**os.environ, "RECON_SCHEDULE_HOUR": "5", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0 5 * * *|0 5 * * *"


# -- monthly statement schedule --------------------------------------------------------------


def _tick(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, SCHEDULE_HOUR, tzinfo=UTC)


def _monthly(day: date, grace_days: int = 3) -> dg.ScheduleExecutionData:
    settings = ReconciliationSettings(grace_days=grace_days)
    with dg.build_schedule_context(
        scheduled_execution_time=_tick(day), resources={"settings": settings}
    ) as context:
        return monthly_statement_schedule.evaluate_tick(context)


def _requested(data: dg.ScheduleExecutionData) -> list[tuple[str, str | None, str]]:
    return [
        (r.partition_key, r.run_key, r.tags["dagster/partition"]) for r in data.run_requests or []
    ]


def test_monthly_schedule_is_registered_daily_at_the_schedule_hour() -> None:
    schedule = defs.resolve_schedule_def("monthly_statement_schedule")
    assert schedule is monthly_statement_schedule
    assert schedule.job_name == monthly_statement_job.name == "monthly_statement_job"
    assert schedule.cron_schedule == f"0 {SCHEDULE_HOUR} * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.required_resource_keys == {"settings"}


@pytest.mark.parametrize("day", [date(2026, 12, 1), date(2026, 12, 3)])
def test_monthly_schedule_skips_inside_the_grace_period(day: date) -> None:
    data = _monthly(day)
    assert data.run_requests == []
    assert data.skip_message is not None
    assert "2026-11" in data.skip_message
    assert "2026-12-04" in data.skip_message


@pytest.mark.parametrize("day", [date(2026, 12, 4), date(2026, 12, 31)])
def test_monthly_schedule_requests_last_month_once_its_grace_is_over(day: date) -> None:
    # From the first tick past the grace period (30 Nov + 3 days + 1) to the month's end, the
    # same run key: Dagster launches the first and dedupes the rest.
    assert _requested(_monthly(day)) == [("2026-11-01", "2026-11-01", "2026-11-01")]


def test_monthly_schedule_in_january_requests_december_of_the_year_before() -> None:
    assert _monthly(date(2027, 1, 3)).run_requests == []
    assert _requested(_monthly(date(2027, 1, 4))) == [("2026-12-01", "2026-12-01", "2026-12-01")]


def test_monthly_schedule_skips_months_before_the_first_partition() -> None:
    first = monthly_partitions.start.date()
    data = _monthly(first + timedelta(days=20))
    assert data.run_requests == []
    before = (first - timedelta(days=1)).replace(day=1)
    assert data.skip_message == f"{before:%Y-%m} is before the first monthly partition"
    # The first month itself is requested once its own grace period is over.
    next_month = (first + timedelta(days=32)).replace(day=1)
    key = first.isoformat()
    assert _requested(_monthly(next_month + timedelta(days=3))) == [(key, key, key)]


def test_monthly_schedule_reads_the_grace_period_from_the_settings() -> None:
    assert _monthly(date(2026, 12, 1), grace_days=0).run_requests
    assert _monthly(date(2026, 12, 4), grace_days=3).run_requests
    assert _monthly(date(2026, 12, 4), grace_days=5).run_requests == []
    assert _monthly(date(2026, 12, 5), grace_days=5).run_requests == []
    assert _requested(_monthly(date(2026, 12, 6), grace_days=5)) == [
        ("2026-11-01", "2026-11-01", "2026-11-01")
    ]


@pytest.mark.parametrize("grace_days", [0, 3, 27, 28, 40])
def test_every_month_is_requested_first_on_its_due_day(grace_days: int) -> None:
    """Ticked every day of two years: the months come in order with none skipped, each first
    on the day after its last day's grace period; with 28 days or more, some months have no
    tick in the month after theirs, and are requested later rather than never."""
    grace = timedelta(days=grace_days)
    first_request: dict[date, date] = {}
    day = date(2026, 1, 1)
    while day < date(2028, 1, 1):
        month = statement_to_request(_tick(day), grace)
        if month is not None:
            first_request.setdefault(month, day)
        day += timedelta(days=1)
    months = list(first_request)
    assert len(months) >= 22
    assert all(b == (a + timedelta(days=32)).replace(day=1) for a, b in pairwise(months))
    for month in months[1:]:
        last_day = (month + timedelta(days=32)).replace(day=1) - timedelta(days=1)
        assert first_request[month] == last_day + timedelta(days=grace_days + 1)


# -- pending-rows sensor ---------------------------------------------------------------------


def _today() -> date:
    return datetime.now(UTC).date()


def _midday(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


def _insert(engine: sa.Engine, schema: str, rows: list[tuple[date, str]]) -> None:
    """One row per (day, status); statuses other than pending are what a run would have set."""
    with engine.begin() as conn:
        for day, status in rows:
            conn.execute(
                sa.text(
                    f'INSERT INTO "{schema}".token_usage (action_type, model_used, input_tokens,'
                    " output_tokens, calculated_cost_cents, created_at, openai_request_id,"
                    " reconciliation_status)"
                    " VALUES ('merge_clarity', 'gpt-4o-mini', 10, 10, 0.1, :at, :rid, :status)"
                ),
                {"at": _midday(day), "rid": f"chatcmpl-{day}-{status}", "status": status},
            )


def _evaluate(
    engine: sa.Engine, url: str, schema: str, grace_days: int = 3
) -> tuple[date, dg.SensorResult]:
    """Evaluate the sensor; retried once if the UTC day turns during the evaluation."""
    for _ in range(2):
        today = _today()
        resources = {
            "database": ReconDatabase(url=url, usage_schema=schema),
            "settings": ReconciliationSettings(grace_days=grace_days),
        }
        with dg.build_sensor_context(resources=resources) as context:
            result = pending_rows_sensor(context)
        if _today() == today:
            return today, result
    raise AssertionError("the day kept turning")


@pytest.fixture
def usage(pg_schema, pg_url) -> tuple[sa.Engine, str, str]:
    engine, schema = pg_schema
    create_demo_token_usage(engine, schema=schema)
    return engine, pg_url, schema


def test_sensor_requests_days_in_grace_that_hold_pending_rows(usage) -> None:
    engine, url, schema = usage
    today = _today()
    ago = {n: today - timedelta(days=n) for n in range(8)}
    _insert(
        engine,
        schema,
        [
            (ago[6], "pending"),  # long past its grace: left to the operator
            (ago[5], "pending"),
            (ago[4], "pending"),  # grace just ended: one last run turns it into not_found
            (ago[4], "matched"),
            (ago[3], "matched"),  # nothing pending
            (ago[3], "unverifiable"),
            (ago[2], "pending"),
            (ago[2], "pending"),
            (ago[1], "pending"),  # yesterday: the schedule's partition, not the sensor's
            (ago[0], "pending"),  # today: not a complete partition yet
        ],
    )
    evaluated_on, result = _evaluate(engine, url, schema)
    assert evaluated_on == today
    requested = [r.partition_key for r in result.run_requests]
    assert requested == [ago[4].isoformat(), ago[2].isoformat()]
    for request in result.run_requests:
        assert request.run_key == f"pending:{request.partition_key}:{today.isoformat()}"
        assert request.tags["recon/trigger"] == "pending_rows"

    # The same evaluation again, within the day: the same run keys, so Dagster dedupes them.
    _, again = _evaluate(engine, url, schema)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in result.run_requests]

    # A shorter grace period narrows the window.
    _, short = _evaluate(engine, url, schema, grace_days=1)
    assert [r.partition_key for r in short.run_requests] == [ago[2].isoformat()]


def test_sensor_requests_nothing_without_pending_rows(usage) -> None:
    engine, url, schema = usage
    today = _today()
    _insert(
        engine,
        schema,
        [(today - timedelta(days=n), status) for n in range(1, 5) for status in ("matched",)],
    )
    _, result = _evaluate(engine, url, schema)
    assert result.run_requests == []


def test_sensor_targets_the_daily_job() -> None:
    sensor = defs.resolve_sensor_def("pending_rows_sensor")
    assert sensor.job_name == daily_reconciliation.name
    assert sensor.minimum_interval_seconds == 3600
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
