"""Faults in the middle of a run, on real PostgreSQL: the pipeline's connection killed inside
the write-back's transaction and inside the replacement of an analyst table, and a failing
OpenAI side. Each leaves what was stored before exactly as it was, and a re-run completes.

The kill is timed, not hoped for: the test holds a lock that the pipeline's statement waits
on, finds the pipeline's backend by its `application_name` in `pg_stat_activity`, checks it
holds the day's advisory lock (so it is inside the day's transaction), and terminates it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from recon_pipeline.core import schema as s
from recon_pipeline.defs.resources import OpenAIAPI, ReconciliationSettings
from recon_pipeline_tests.runs import (
    AS_OF,
    InThread,
    SmallDemo,
    checks,
    holds_advisory_lock,
    step_failure,
    wait_for_pipeline_backend,
)

LATER = "2026-11-11T07:00:00+00:00"
HOLD = (7071, 1)  # the test's own advisory lock (two-int form: never one of the pipeline's)
ANALYST_TABLES = ("openai_requests", "reconciled_usage", "unlogged_openai_requests")


def _terminate(engine: sa.Engine, pid: int) -> None:
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()


def _insert_app_row(demo: SmallDemo, created_at: datetime, **values: object) -> int:
    row = {
        "user_id": "user-late",
        "action_type": "chat",
        "model_used": "gpt-4o-mini",
        "input_tokens": 10,
        "output_tokens": 5,
        "calculated_cost_cents": 0.001,
        "created_at": created_at,
        "openai_request_id": None,
        **values,
    }
    columns = ", ".join(row)
    with demo.engine.begin() as conn:
        return conn.execute(
            sa.text(
                f'INSERT INTO "{demo.schema}".token_usage ({columns})'
                f" VALUES ({', '.join(':' + c for c in row)}) RETURNING id"
            ),
            row,
        ).scalar_one()


def _day_agrees(demo: SmallDemo, day) -> None:
    """Every row of the day carries exactly the stored result: status, cost, reconciled_at."""
    rows = demo.rows(
        "SELECT t.reconciliation_status AS st, r.reconciliation_status AS want,"
        " t.actual_cost_cents AS cost, r.actual_cost_cents AS want_cost, t.reconciled_at"
        " FROM {s}.token_usage t JOIN {s}.reconciled_usage r ON r.usage_id = t.id"
        " WHERE r.usage_date = :day",
        day=day,
    )
    assert len(rows) == len(demo.day_ids(day, with_request_id=False)) > 50
    assert all(r.st == r.want and r.cost == r.want_cost for r in rows)
    at = datetime.fromisoformat(AS_OF)
    assert all((r.reconciled_at == at) == (r.st != s.PENDING) for r in rows)


def test_connection_killed_inside_the_write_back_leaves_token_usage_as_it_was(
    demo: SmallDemo,
) -> None:
    day = demo.days[1]
    before = demo.token_usage()
    target = demo.day_ids(day)[0]
    # The application holds one of the day's rows: the write-back's UPDATE waits on it,
    # inside its transaction, after it has taken the day's lock.
    app = demo.engine.connect()
    app.begin()
    app.execute(
        sa.text(f'SELECT 1 FROM "{demo.schema}".token_usage WHERE id = :id FOR UPDATE'),
        {"id": target},
    )
    try:
        run = InThread(lambda: demo.run(day))
        pid = wait_for_pipeline_backend(
            demo,
            "wait_event_type = 'Lock' AND query LIKE 'WITH changed AS (UPDATE %'",
            lambda: run.alive,
        )
        assert holds_advisory_lock(demo.engine, pid, demo.db().day_lock_key(day, "token_usage"))
        _terminate(demo.engine, pid)
    finally:
        app.rollback()
        app.close()
    result = run.result()

    assert not result.success
    step, message = step_failure(result)
    assert step == "reconciled_usage"
    assert "terminat" in message
    assert demo.token_usage() == before  # every column of every row, in id order

    again = demo.run(day)
    assert again.success
    assert all(checks(again).values())
    _day_agrees(demo, day)
    old = {r.id: r for r in before}
    changed = {r.id for r in demo.token_usage() if r != old[r.id]}
    assert target in changed and changed <= set(demo.day_ids(day, with_request_id=False))


@pytest.mark.parametrize("table", ["reconciled_usage", "daily_variance_summary"])
def test_connection_killed_while_replacing_an_analyst_table_keeps_the_previous_day(
    demo: SmallDemo, table: str
) -> None:
    day = demo.days[1]
    assert demo.run(day).success
    # The application logs one more row that day, so a re-run would change every table.
    added = _insert_app_row(demo, datetime(day.year, day.month, day.day, 15, tzinfo=UTC))
    stored = {name: demo.table(name, day) for name in (*ANALYST_TABLES, "daily_variance_summary")}
    before = demo.token_usage()

    # A trigger makes the INSERT of the new rows (after the DELETE of the old ones, inside
    # the day's transaction) wait on a lock this test holds.
    with demo.engine.begin() as conn:
        conn.execute(
            sa.text(
                f'CREATE FUNCTION "{demo.schema}".hold() RETURNS trigger LANGUAGE plpgsql AS'
                f" $$ BEGIN PERFORM pg_advisory_xact_lock_shared({HOLD[0]}, {HOLD[1]});"
                " RETURN NULL; END $$"
            )
        )
        conn.execute(
            sa.text(
                f'CREATE TRIGGER hold BEFORE INSERT ON "{demo.schema}".{table}'
                f' FOR EACH STATEMENT EXECUTE FUNCTION "{demo.schema}".hold()'
            )
        )
    holder = demo.engine.connect()
    holder.execute(sa.text("SELECT pg_advisory_lock(:a, :b)"), {"a": HOLD[0], "b": HOLD[1]})
    try:
        run = InThread(lambda: demo.run(day, as_of=LATER))
        pid = wait_for_pipeline_backend(
            demo,
            "wait_event_type = 'Lock' AND wait_event = 'advisory'",
            lambda: run.alive,
        )
        assert holds_advisory_lock(demo.engine, pid, demo.db().day_lock_key(day, table))
        _terminate(demo.engine, pid)
    finally:
        holder.execute(sa.text("SELECT pg_advisory_unlock(:a, :b)"), {"a": HOLD[0], "b": HOLD[1]})
        holder.commit()
        holder.close()
    result = run.result()

    assert not result.success
    step, message = step_failure(result)
    # Killed mid-COPY, psycopg reports the lost connection on top of the termination.
    assert step == table and ("terminat" in message or "connection is lost" in message)
    # The day as the first run stored it, in this table and in the one written with it.
    assert demo.table(table, day) == stored[table]
    if table == "reconciled_usage":
        assert demo.table("unlogged_openai_requests", day) == stored["unlogged_openai_requests"]
        assert demo.token_usage() == before  # the write-back never ran
    assert len(stored[table]) > 0

    with demo.engine.begin() as conn:
        conn.execute(sa.text(f'DROP TRIGGER hold ON "{demo.schema}".{table}'))
    again = demo.run(day, as_of=LATER)
    assert again.success
    assert all(checks(again).values())
    assert added in {r.usage_id for r in demo.table("reconciled_usage", day)}
    [(requests,)] = demo.rows(
        "SELECT sum(requests) FROM {s}.daily_variance_summary WHERE usage_date = :day", day=day
    )
    assert requests == len(demo.day_ids(day, with_request_id=False))
    [(status,)] = demo.rows(
        "SELECT reconciliation_status FROM {s}.token_usage WHERE id = :id", id=added
    )
    assert status == s.UNVERIFIABLE


def test_a_malformed_export_line_after_a_good_run_changes_nothing(demo: SmallDemo) -> None:
    day = demo.days[-1]
    assert demo.run(day).success
    _insert_app_row(demo, datetime(day.year, day.month, day.day, 9, tzinfo=UTC))
    stored = {name: demo.table(name, day) for name in (*ANALYST_TABLES, "daily_variance_summary")}
    before = demo.token_usage()
    broken = demo.exports / f"openai-requests-{day.isoformat()}.jsonl"
    good = broken.read_text(encoding="utf-8")
    lines = good.count("\n")
    broken.write_text(good + '{"request_id": "chatcmpl-x", "created": 1762750000,\n')

    result = demo.run(day, as_of=LATER)

    assert not result.success
    step, message = step_failure(result)
    assert step == "openai_requests"
    assert f"{broken.name}:{lines + 1}: not valid JSON" in message
    assert demo.token_usage() == before
    for name, rows in stored.items():
        assert demo.table(name, day) == rows, name

    broken.write_text(good)
    again = demo.run(day, as_of=LATER)
    assert again.success and all(checks(again).values())
    assert demo.token_usage() != before  # the added row is reconciled now


def test_a_failing_openai_api_writes_nothing(demo: SmallDemo) -> None:
    day = demo.days[-1]
    assert demo.run(day).success
    stored = {name: demo.table(name, day) for name in (*ANALYST_TABLES, "daily_variance_summary")}
    before = demo.token_usage()
    resources = demo.resources(as_of=LATER)
    resources["openai_api"] = OpenAIAPI(
        base_url="http://127.0.0.1:9/v1", api_key="sk-test-unused", max_total_wait_seconds=0.5
    )
    resources["settings"] = ReconciliationSettings(as_of=LATER, openai_source="both")

    result = demo.run(day, resources=resources)

    assert not result.success
    step, message = step_failure(result)
    assert step == "openai_requests"
    assert "OpenAIAPIError" in message and "GET /chat/completions" in message
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert not materialized & {*ANALYST_TABLES, "token_usage_reconciliation"}
    assert demo.token_usage() == before
    assert all(stored.values())  # each table held rows of the day, and still holds them
    for name, rows in stored.items():
        assert demo.table(name, day) == rows, name
