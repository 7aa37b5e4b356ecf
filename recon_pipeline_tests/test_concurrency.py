"""Concurrency on real PostgreSQL: the application writing while the write-back runs, two runs
of the same day at once, and overlapping range runs (a backfill beside the daily run).

Each day's writes take `pg_try_advisory_xact_lock` on (usage table, day); a run that finds
the day taken skips it with a warning, and its partition says `skipped_locked`. The overlap
is forced where the outcome must be exact: the application holds a row the first run's
write-back waits on, so the first run sits inside its day transaction while the second one
runs.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import dagster as dg
import sqlalchemy as sa

from recon_pipeline.core import schema as s
from recon_pipeline.defs import assets, openai_requests, reconcile_slices
from recon_pipeline.defs.resources import ReconciliationSettings
from recon_pipeline.demo_openai_side import APP_PROJECT
from recon_pipeline.io.database import Database
from recon_pipeline_tests.runs import (
    AS_OF,
    InThread,
    SmallDemo,
    advisory_lock_holders,
    checks,
    holds_advisory_lock,
    make_small_demo,
    metadata,
    run_job,
    wait_for_pipeline_backend,
)

WRITE_BACK_WAITING = "wait_event_type = 'Lock' AND query LIKE 'WITH changed AS (UPDATE %'"
DAY_TABLES = ("openai_requests", "reconciled_usage", "unlogged_openai_requests")


def _hold_row(demo: SmallDemo, row_id: int, output_tokens: int) -> sa.Connection:
    """The application, in an open transaction, updating one row (and so locking it)."""
    app = demo.engine.connect()
    app.begin()
    app.execute(
        sa.text(f'UPDATE "{demo.schema}".token_usage SET output_tokens = :n WHERE id = :id'),
        {"n": output_tokens, "id": row_id},
    )
    return app


def _no_duplicates(demo: SmallDemo, day) -> None:
    """Each table holds the day once: no row of it was inserted by two runs."""
    for table, key in (
        ("openai_requests", "request_id"),
        ("reconciled_usage", "usage_id"),
        ("unlogged_openai_requests", "request_id"),
        ("daily_variance_summary", "action_type || '/' || model_used"),
    ):
        [(rows, keys)] = demo.rows(
            f"SELECT count(*), count(DISTINCT {key}) FROM {{s}}.{table} WHERE usage_date = :d",
            d=day,
        )
        # A day may leave no request unlogged now that tags and fingerprints claim records.
        assert rows == keys and (rows > 0 or table == "unlogged_openai_requests"), table
    [(logged,)] = demo.rows(
        "SELECT count(*) FROM {s}.reconciled_usage WHERE usage_date = :d", d=day
    )
    assert logged == len(demo.day_ids(day, with_request_id=False))


def _agrees(demo: SmallDemo, day) -> bool:
    db = demo.db()
    return db.count_disagreeing(day) == 0 and db.summary_matches_rows(day)


def test_application_writes_during_the_write_back_are_kept_and_left_alone(
    demo: SmallDemo,
) -> None:
    day = demo.days[1]
    target = demo.day_ids(day)[0]
    [old_tokens] = [r.output_tokens for r in demo.token_usage() if r.id == target]
    app = _hold_row(demo, target, old_tokens + 7)
    inserted: list[dict[str, object]] = []
    try:
        run = InThread(lambda: demo.run(day))
        wait_for_pipeline_backend(demo, WRITE_BACK_WAITING, lambda: run.alive)
        # While the write-back's transaction is open, the application logs more calls of
        # the same day (streaming chat: no request id), from other connections.
        with demo.engine.begin() as other:
            for n in range(20):
                row = {
                    "user_id": f"late-{n}",
                    "action_type": "chat",
                    "model_used": "gpt-4o-mini",
                    "input_tokens": 100 + n,
                    "output_tokens": 10 + n,
                    "calculated_cost_cents": 0.0021,
                    "created_at": datetime(day.year, day.month, day.day, 12, n, tzinfo=UTC),
                }
                row["id"] = other.execute(
                    sa.text(
                        f'INSERT INTO "{demo.schema}".token_usage ({", ".join(row)})'
                        f" VALUES ({', '.join(':' + c for c in row)}) RETURNING id"
                    ),
                    row,
                ).scalar_one()
                inserted.append(row)
        assert run.alive  # the inserts did not wait for the write-back, nor it for them
        app.commit()
    finally:
        app.close()
    result = run.result()

    assert result.success
    passed = checks(result)
    assert passed.pop("token_usage_agrees_with_results") is False
    # The reconciliation step counts rows without a result after it committed: the same 20.
    assert passed.pop("every_logged_row_reconciled") is False and all(passed.values())
    # The check says what happened: 20 rows logged after the day was read have no result yet.
    [agrees] = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "token_usage_agrees_with_results"
    ]
    assert agrees.severity == dg.AssetCheckSeverity.WARN
    assert agrees.metadata["rows_without_result"].value == 20
    assert agrees.metadata["rows_disagreeing"].value == 0
    by_id = {r.id: r for r in demo.token_usage()}
    for row in inserted:  # every insert is there, as the application wrote it, untouched
        stored = by_id[row["id"]]
        assert stored.user_id == row["user_id"] and stored.input_tokens == row["input_tokens"]
        assert stored.reconciliation_status == s.PENDING
        assert stored.reconciled_at is None and stored.actual_cost_cents is None
    results = {r.usage_id for r in demo.table("reconciled_usage", day)}
    assert not results & {row["id"] for row in inserted}
    # The application's own change to the row the write-back waited on is kept, and the
    # row got its reconciliation too.
    assert by_id[target].output_tokens == old_tokens + 7
    assert by_id[target].reconciliation_status != s.PENDING
    assert _agrees(demo, day)

    # The next run reconciles the rows it had not seen, and the check passes again.
    again = demo.run(day)
    assert again.success and all(checks(again).values())
    ids = {row["id"] for row in inserted}
    statuses = {r.reconciliation_status for r in demo.token_usage() if r.id in ids}
    assert statuses == {s.UNVERIFIABLE}


def test_a_second_run_of_the_same_day_skips_it_while_the_first_holds_it(
    demo: SmallDemo,
) -> None:
    day = demo.days[1]
    target = demo.day_ids(day)[0]
    [old_tokens] = [r.output_tokens for r in demo.token_usage() if r.id == target]
    app = _hold_row(demo, target, old_tokens)
    second_instance = dg.DagsterInstance.ephemeral()
    try:
        first = InThread(lambda: demo.run(day))
        pid = wait_for_pipeline_backend(demo, WRITE_BACK_WAITING, lambda: first.alive)
        assert holds_advisory_lock(demo.engine, pid, demo.db().day_lock_key(day, "token_usage"))
        stored = {name: demo.table(name, day) for name in DAY_TABLES}

        second = demo.run(day, instance=second_instance)

        assert first.alive  # the first run is still inside its write-back
        assert {name: demo.table(name, day) for name in DAY_TABLES} == stored
        app.commit()
    finally:
        app.close()
    first_result = first.result()

    # The second run ended cleanly and left the write-back to the run holding it. Each table of
    # a day has its own lock, so the second run may rewrite the analyst tables one at a time
    # (from the same inputs, to the same rows), but never token_usage while the first does.
    assert second.success
    meta = metadata(second, "token_usage_reconciliation")
    [agrees_check] = [
        e
        for e in second.get_asset_check_evaluations()
        if e.check_name == "token_usage_agrees_with_results"
    ]
    assert agrees_check.metadata["days_skipped_locked"].value == [day.isoformat()]
    # The skipped partition carries no figures at all, rather than zeros nobody measured.
    assert meta["skipped_locked"].startswith("another run held this day's lock")
    assert "dagster/row_count" not in meta and "rows_updated" not in meta
    warnings = [
        entry.user_message
        for entry in second_instance.all_logs(second.run_id)
        if entry.level >= 30 and "another run holds the day's lock" in entry.user_message
    ]
    assert warnings == [
        f"{day}: reconciled_usage skipped: another run holds the day's lock and is"
        " writing it now; nothing was written by this run, and that run's results stand"
    ]

    # The first run wrote the day, once.
    assert first_result.success and all(checks(first_result).values())
    [(reconciled,)] = demo.rows(
        "SELECT count(*) FROM {s}.token_usage WHERE id = ANY(:ids) AND reconciled_at = :at",
        ids=demo.day_ids(day, with_request_id=False),
        at=datetime.fromisoformat(AS_OF),
    )
    assert metadata(first_result, "token_usage_reconciliation")["rows_updated"] == reconciled > 50
    assert "skipped_locked" not in metadata(first_result, "token_usage_reconciliation")
    _no_duplicates(demo, day)
    assert _agrees(demo, day)


def test_the_write_back_lock_is_taken_only_once_the_day_is_reconciled(
    demo: SmallDemo, monkeypatch
) -> None:
    """While the day's first slice is read and reconciled only the results' lock is held;
    token_usage's lock, and its transaction, come when there is something to write back."""
    day = demo.days[1]
    db = demo.db()
    keys = {
        "results": db.day_lock_key(day, "reconciled_usage"),
        "write_back": db.day_lock_key(day, "token_usage"),
    }
    seen: dict[str, dict[str, int]] = {}

    def held(moment: str) -> None:
        if moment not in seen:  # the first slice's
            seen[moment] = {
                name: len(advisory_lock_holders(demo.engine, key)) for name, key in keys.items()
            }

    reconcile_day, write_back_rows = reconcile_slices.reconcile_day, Database.write_back_rows

    def reconciling(*args, **kwargs):
        held("reconciling")
        return reconcile_day(*args, **kwargs)

    def writing_back(self, *args, **kwargs):
        held("writing_back")
        return write_back_rows(self, *args, **kwargs)

    monkeypatch.setattr(reconcile_slices, "reconcile_day", reconciling)
    monkeypatch.setattr(Database, "write_back_rows", writing_back)
    result = demo.run(day)

    assert result.success and all(checks(result).values())
    assert seen == {
        "reconciling": {"results": 1, "write_back": 0},
        "writing_back": {"results": 1, "write_back": 1},
    }


def test_a_day_whose_write_back_lock_is_taken_after_it_is_reconciled_writes_nothing(
    demo: SmallDemo,
) -> None:
    """The write-back's lock is tried only once the day is reconciled; if another session
    holds it then, the day is skipped whole: the results' transaction has written nothing."""
    day = demo.days[1]
    first = demo.run(day)
    assert first.success
    stored = {name: demo.table(name, day) for name in DAY_TABLES}
    usage = demo.token_usage()
    key = demo.db().day_lock_key(day, "token_usage")
    with demo.engine.connect() as other:
        other.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            second = demo.run(day, as_of="2026-11-20T06:00:00+00:00")
        finally:
            other.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            other.commit()

    assert second.success
    for asset in ("reconciled_usage", "unlogged_openai_requests", "token_usage_reconciliation"):
        assert "skipped_locked" in metadata(second, asset), asset
        assert "dagster/row_count" not in metadata(second, asset), asset
    assert {name: demo.table(name, day) for name in DAY_TABLES} == stored
    assert demo.token_usage() == usage


SCOPES = (
    "openai_requests",
    "reconciled_usage",
    "token_usage",
    "daily_variance_summary",
    "invoice_check",
)


def test_overlapping_range_runs_started_together_finish_without_deadlock(
    pg_schema, pg_url, tmp_path
) -> None:
    """Two backfills of every day, two overlapping shorter ranges and the daily run, all
    started at once and contending for every day. (Without the day lock, this test fails:
    two runs replacing or writing back the same day at once leave doubled rows or rows that
    disagree with the results.)"""
    demo = make_small_demo(pg_schema, pg_url, tmp_path / "exports", days=5)
    days = demo.days
    ranges = [(days[0], days[-1])] * 2 + [(days[2], days[-1])] * 2 + [(days[-1], days[-1])]
    start = threading.Barrier(len(ranges))

    def launch(first, last):
        resources = demo.resources()
        start.wait()
        return run_job(resources, first, last)

    runs = [InThread(lambda f=f, t=t: launch(f, t)) for f, t in ranges]
    results = [run.result(timeout=120) for run in runs]

    for result in results:
        errors = [e for e in result.all_events if e.is_failure]
        assert result.success, errors
        passed = checks(result)
        # The invoice check reads whatever the other runs had stored at that moment; every
        # check of the reconciliation itself is computed inside its day's transaction.
        passed.pop("unattributed_spend_within_bounds")
        assert all(passed.values()), passed
    # Each overlapping day was written by one run or another, never by two at once.
    for day in days:
        _no_duplicates(demo, day)
        assert _agrees(demo, day)
    db = demo.db()
    for day in days:  # transaction-scoped: no lock outlives its day
        for scope in SCOPES:
            assert advisory_lock_holders(demo.engine, db.day_lock_key(day, scope)) == []

    # What they left is exactly the reconciliation: a sequential run, in full
    # (RECON_FULL_RERUN: none of its days is skipped as unchanged), changes nothing.
    usage, results_before = demo.token_usage(), demo.table("reconciled_usage")
    resources = demo.resources()
    resources["settings"] = ReconciliationSettings(
        as_of=AS_OF, openai_project_ids=APP_PROJECT, full_rerun=True
    )
    again = demo.run(days[0], days[-1], resources=resources)
    assert again.success
    updated = [
        event.materialization.metadata["rows_updated"].value
        for event in again.get_asset_materialization_events()
        if event.asset_key == dg.AssetKey("token_usage_reconciliation")
    ]
    assert updated == [0] * len(days)
    assert demo.token_usage() == usage
    assert demo.table("reconciled_usage") == results_before


def test_the_write_back_runs_in_its_dagster_concurrency_pool() -> None:
    assert assets.WRITE_BACK_POOL == "token_usage_write_back"
    # The write-back is part of the reconciled_usage step (see its docstring).
    assert assets.reconciled_usage.op.pool == "token_usage_write_back"
    assert "token_usage_reconciliation" in {k.path[-1] for k in assets.reconciled_usage.keys}
    for other in (assets.daily_variance_summary, openai_requests.openai_requests):
        assert other.op.pool is None
