"""Re-runs redo only the days whose inputs changed, and give the tables a full run gives
(real PostgreSQL, the demo's three days)."""

from __future__ import annotations

import os
import time
from datetime import date, timedelta

import pytest
import sqlalchemy as sa

from recon_pipeline.core.day_inputs import inputs_digest, may_skip
from recon_pipeline.core.reconcile import day_bounds
from recon_pipeline.defs import resources as resources_module
from recon_pipeline.defs.resources import ReconciliationSettings
from recon_pipeline.demo_openai_side import APP_PROJECT
from recon_pipeline_tests.runs import AS_OF, SmallDemo
from recon_pipeline_tests.test_slices import table_digests

STEPS = ("openai_requests", "reconciled_usage", "daily_variance_summary")


def _run(demo: SmallDemo, as_of: str = AS_OF, full_rerun: bool = False):
    resources = demo.resources(as_of)
    resources["settings"] = ReconciliationSettings(
        as_of=as_of, openai_project_ids=APP_PROJECT, full_rerun=full_rerun
    )
    result = demo.run(demo.days[0], demo.days[-1], resources=resources)
    assert result.success
    return result


def _unchanged(result, asset: str) -> set[date]:
    """The days the run left alone, by the metadata of their partitions."""
    return {
        date.fromisoformat(m.partition)
        for m in result.asset_materializations_for_node(asset)
        if m.asset_key.path[-1] == asset and "unchanged" in m.metadata
    }


def _mid_day_row(demo: SmallDemo, day: date) -> str:
    """A row with a request id at noon or later of `day`, far from either day's window."""
    start, _ = day_bounds(day)
    return demo.rows(
        "SELECT id::text AS id FROM {s}.token_usage WHERE created_at >= :noon"
        " AND created_at < :evening AND openai_request_id IS NOT NULL ORDER BY id LIMIT 1",
        noon=start + timedelta(hours=12),
        evening=start + timedelta(hours=18),
    )[0].id


def test_an_unchanged_day_is_skipped_and_a_changed_one_redone_as_a_full_run_would(demo) -> None:
    _run(demo)
    first = table_digests(demo)

    again = _run(demo)
    for step in STEPS:
        assert _unchanged(again, step) == set(demo.days), step
    assert table_digests(demo) == first

    # The application updates a column the pipeline reads (not the id, not the estimate).
    changed_day = demo.days[1]
    row = _mid_day_row(demo, changed_day)
    with demo.engine.begin() as conn:
        conn.execute(
            sa.text(
                f'UPDATE "{demo.schema}".token_usage SET output_tokens = output_tokens + 500'
                " WHERE id::text = :id"
            ),
            {"id": row},
        )
    incremental = _run(demo)
    assert _unchanged(incremental, "reconciled_usage") == set(demo.days) - {changed_day}
    assert _unchanged(incremental, "openai_requests") == set(demo.days)
    assert changed_day not in _unchanged(incremental, "daily_variance_summary")
    after_incremental = table_digests(demo)
    assert after_incremental["reconciled_usage"] != first["reconciled_usage"]

    full = _run(demo, full_rerun=True)
    for step in STEPS:
        assert not _unchanged(full, step), step
    assert table_digests(demo) == after_incremental


def test_a_change_to_the_written_columns_files_or_grace_is_never_skipped(demo) -> None:
    _run(demo)
    first = table_digests(demo)
    day = demo.days[2]
    row = _mid_day_row(demo, day)
    # Someone resets a row's verdict: the day is redone and the verdict restored.
    with demo.engine.begin() as conn:
        conn.execute(
            sa.text(
                f"UPDATE \"{demo.schema}\".token_usage SET reconciliation_status = 'pending',"
                " actual_cost_cents = NULL WHERE id::text = :id"
            ),
            {"id": row},
        )
    redone = _run(demo)
    assert _unchanged(redone, "reconciled_usage") == set(demo.days) - {day}
    assert table_digests(demo) == first

    # An export file rewritten (same content, new time): its days' records are read again.
    files = sorted(demo.exports.rglob(f"*{demo.days[0].isoformat()}*.jsonl"))
    assert files
    later = time.time() + 5
    os.utime(files[0], (later, later))
    reread = _run(demo)
    assert demo.days[0] not in _unchanged(reread, "openai_requests")
    assert table_digests(demo) == first

    # Past the grace period the rules differ (pending becomes not_found): nothing skipped.
    past_grace = _run(demo, as_of="2026-11-20T06:00:00+00:00")
    assert not _unchanged(past_grace, "reconciled_usage")


def test_the_digest_rules() -> None:
    assert inputs_digest({"a": 1, "b": [1, 2]}) == inputs_digest({"b": [1, 2], "a": 1})
    assert inputs_digest({"a": 1}) != inputs_digest({"a": 2})
    assert may_skip("x", "x", full_rerun=False)
    assert not may_skip("x", "x", full_rerun=True)
    assert not may_skip(None, "x", full_rerun=False)
    assert not may_skip("x", "y", full_rerun=False)


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("no", False), ("TRUE", True)])
def test_full_rerun_is_read_from_the_environment(monkeypatch, value, expected) -> None:
    monkeypatch.setenv("RECON_FULL_RERUN", value)
    settings = resources_module.resources_from_env()["settings"]
    assert settings.full_rerun is expected


def test_a_bad_full_rerun_value_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("RECON_FULL_RERUN", "maybe")
    with pytest.raises(ValueError, match="RECON_FULL_RERUN"):
        resources_module.resources_from_env()


@pytest.mark.parametrize(
    "change",
    [
        # The write-back leaves the row alone: its version shows the application's write.
        "input_tokens = input_tokens + 7",
        # The write-back writes the row again (its verdict was reset): the write-back's
        # flag remembers that the version it overwrote was the application's.
        "input_tokens = input_tokens + 7, reconciliation_status = 'pending'",
    ],
)
def test_a_row_the_application_changes_while_the_day_runs_is_never_skipped_after(
    demo, monkeypatch, change
) -> None:
    """The application updates a row after the day was read and before its write-back: the
    run cannot have seen the change, so it records nothing and the next run redoes the day."""
    from recon_pipeline.defs import reconcile_slices

    _run(demo)
    day = demo.days[1]
    row = _mid_day_row(demo, day)
    original = reconcile_slices.reconcile_day
    changed: list[str] = []

    def reconcile_then_the_app_writes(logged, openai, on_day, *args, **kwargs):
        if on_day == day and not changed:
            with demo.engine.begin() as app:
                app.execute(
                    sa.text(
                        f'UPDATE "{demo.schema}".token_usage SET {change} WHERE id::text = :id'
                    ),
                    {"id": row},
                )
            changed.append(row)
        return original(logged, openai, on_day, *args, **kwargs)

    monkeypatch.setattr(reconcile_slices, "reconcile_day", reconcile_then_the_app_writes)
    during = _run(demo, full_rerun=True)
    monkeypatch.undo()
    assert changed and not _unchanged(during, "reconciled_usage")

    after = _run(demo)
    assert day not in _unchanged(after, "reconciled_usage")
    settled = table_digests(demo)
    _run(demo, full_rerun=True)
    assert table_digests(demo) == settled
