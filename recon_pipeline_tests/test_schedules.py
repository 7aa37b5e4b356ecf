"""The daily schedule and the pending-rows sensor, evaluated through Dagster's contexts."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from recon_pipeline.definitions import defs
from recon_pipeline.defs.resources import ReconciliationSettings, ReconDatabase
from recon_pipeline.defs.schedules import (
    daily_reconciliation,
    daily_reconciliation_schedule,
    pending_rows_sensor,
)
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
        "from recon_pipeline.defs.schedules import daily_reconciliation_schedule as s;"
        "print(s.cron_schedule)"
    )
    env = {**os.environ, "RECON_SCHEDULE_HOUR": "5", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0 5 * * *"


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
