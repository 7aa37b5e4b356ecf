"""The whole job on real PostgreSQL with two estimates of 5 million USD in one group of one
day: each is under the per-row cap, their sum is past int64 pico-dollars. Every asset runs,
and the summary carries the exact sum (a probe found the summary refusing such a day after
token_usage and reconciled_usage were already written)."""

from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa

from recon_pipeline.core.days import day_bounds
from recon_pipeline.core.schema import PICO_PER_CENT
from recon_pipeline.defs.resources import (
    OpenAIAPI,
    OpenAIExportFolder,
    ReconciliationSettings,
    ReconDatabase,
)
from recon_pipeline.demo_data import generate_demo_data
from recon_pipeline.demo_openai_side import APP_PROJECT
from recon_pipeline.io.migrations import create_demo_token_usage
from recon_pipeline.io.write_back import MAX_ESTIMATE_CENTS
from recon_pipeline_tests.runs import (
    AS_OF,
    LAST_DAY,
    PIPELINE_ASSETS,
    SmallDemo,
    checks,
    run_job,
    step_failure,
)

BIG_CENTS = 500_000_000
INT64_MAX = 2**63 - 1


def _two_rows_of_one_group(demo: SmallDemo) -> list[str]:
    """Two rows of the day, with a request id, logged by the same route and model."""
    start, end = day_bounds(LAST_DAY)
    [group] = demo.rows(
        "SELECT action_type, model_used FROM {s}.token_usage WHERE created_at >= :start"
        " AND created_at < :end AND openai_request_id IS NOT NULL"
        " GROUP BY 1, 2 ORDER BY count(*) DESC, 1, 2 LIMIT 1",
        start=start,
        end=end,
    )
    return [
        r.id
        for r in demo.rows(
            "SELECT id FROM {s}.token_usage WHERE created_at >= :start AND created_at < :end"
            " AND openai_request_id IS NOT NULL AND action_type = :route AND model_used = :model"
            " ORDER BY id LIMIT 2",
            start=start,
            end=end,
            route=group.action_type,
            model=group.model_used,
        )
    ]


def test_two_estimates_past_int64_run_every_asset_and_sum_exactly(demo: SmallDemo) -> None:
    assert BIG_CENTS < MAX_ESTIMATE_CENTS and 2 * BIG_CENTS * PICO_PER_CENT > INT64_MAX
    ids = _two_rows_of_one_group(demo)
    table = f'"{demo.schema}".token_usage'
    with demo.engine.begin() as conn:
        # The demo's column is numeric(12,6); the application's own is INTEGER, wider. The
        # pipeline's view reads it, so it is set aside while the type changes.
        [(view,)] = conn.exec_driver_sql(
            "SELECT pg_get_viewdef(to_regclass(%s))",
            (f'"{demo.schema}".token_usage_reconciliation',),
        ).all()
        conn.exec_driver_sql(f'DROP VIEW "{demo.schema}".token_usage_reconciliation')
        conn.exec_driver_sql(f"ALTER TABLE {table} ALTER calculated_cost_cents TYPE numeric(20,6)")
        conn.exec_driver_sql(f'CREATE VIEW "{demo.schema}".token_usage_reconciliation AS {view}')
        conn.exec_driver_sql(
            f"UPDATE {table} SET calculated_cost_cents = {BIG_CENTS}"
            f" WHERE id IN ({', '.join(str(i) for i in ids)})"
        )

    result = demo.run(LAST_DAY)

    assert result.success, step_failure(result)
    stored = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert stored >= PIPELINE_ASSETS
    assert checks(result)["summary_totals_equal_row_sums"]
    start, end = day_bounds(LAST_DAY)
    [(logged,)] = demo.rows(
        "SELECT sum(calculated_cost_cents) FROM {s}.token_usage"
        " WHERE created_at >= :start AND created_at < :end",
        start=start,
        end=end,
    )
    [(rows,)] = demo.rows(
        "SELECT sum(estimated_cost_cents) FROM {s}.reconciled_usage WHERE usage_date = :d",
        d=LAST_DAY,
    )
    summary = demo.rows(
        "SELECT estimated_cost_cents, actual_cost_cents, variance_cents"
        " FROM {s}.daily_variance_summary WHERE usage_date = :d",
        d=LAST_DAY,
    )
    assert sum(r.estimated_cost_cents for r in summary) == rows == Decimal(logged)
    assert max(r.estimated_cost_cents for r in summary) > 2 * BIG_CENTS
    assert min(r.variance_cents for r in summary) < -(2 * BIG_CENTS) + 1
    written = demo.rows(
        "SELECT reconciliation_status, actual_cost_cents FROM {s}.token_usage WHERE id = ANY(:ids)",
        ids=ids,
    )
    assert {r.reconciliation_status for r in written} == {"discrepancy"}
    assert all(r.actual_cost_cents is not None for r in written)
    [(invoice_rows,)] = demo.rows(
        "SELECT count(*) FROM {s}.invoice_check WHERE usage_date = :d", d=LAST_DAY
    )
    assert invoice_rows > 0


def test_on_sqlite_a_day_beyond_what_it_holds_exactly_fails_before_anything_is_written(
    sqlite_engine, tmp_path
) -> None:
    """SQLite's REAL cents give back exact pico amounts up to 2^51 (about 2,251 USD): a day
    whose estimates add up past that is refused before any of its results is stored."""
    create_demo_token_usage(sqlite_engine)
    exports = tmp_path / "exports"
    generate_demo_data(sqlite_engine, exports, last_day=LAST_DAY, days=1)
    start, end = (moment.strftime("%Y-%m-%d %H:%M:%S") for moment in day_bounds(LAST_DAY))
    with sqlite_engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE token_usage SET calculated_cost_cents = 150000 WHERE id IN (SELECT id"
                " FROM token_usage WHERE created_at >= :start AND created_at < :end"
                " ORDER BY id LIMIT 2)"
            ),
            {"start": start, "end": end},
        )
        before = conn.execute(sa.text("SELECT * FROM token_usage ORDER BY id")).all()
    resources = {
        "database": ReconDatabase(url=str(sqlite_engine.url)),
        "openai_exports": OpenAIExportFolder(path=str(exports)),
        "openai_api": OpenAIAPI(),
        "settings": ReconciliationSettings(as_of=AS_OF, openai_project_ids=APP_PROJECT),
    }

    result = run_job(resources, LAST_DAY, LAST_DAY)

    assert not result.success
    step, error = step_failure(result)
    assert step == "reconciled_usage" and "SQLite's REAL cents" in error
    with sqlite_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT * FROM token_usage ORDER BY id")).all() == before
        stored = conn.execute(sa.text("SELECT count(*) FROM reconciled_usage")).scalar_one()
    assert stored == 0
