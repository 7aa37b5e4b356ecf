"""Output tables written by the previous release (fb4caf3) are upgraded in place by
`recon-migrate`, once, and a day then runs on them; the bill of a run day is explained."""

from __future__ import annotations

import sqlalchemy as sa

from recon_pipeline.io.migrations import main
from recon_pipeline.io.output_schema import (
    VERSION_TABLE,
    current_revision,
    upgrade_output_schema,
)
from recon_pipeline_tests.runs import LAST_DAY, checks, metadata, step_failure

# The DDL release fb4caf3 ran for the two tables that gained columns (Database.ensure_table).
OLD_DDL = {
    "openai_daily_costs": '"usage_date" {date}, "line_item" {text}, "project_id" {text},'
    ' "amount_cents" {money}, "currency" {text}',
    "invoice_check": '"usage_date" {date}, "model" {text}, "openai_requests" {bigint},'
    ' "openai_input_tokens" {bigint}, "openai_output_tokens" {bigint},'
    ' "logged_requests" {bigint}, "logged_input_tokens" {bigint},'
    ' "logged_output_tokens" {bigint}, "billed_cents" {money},'
    ' "reconciled_actual_cents" {money}, "unlogged_actual_cents" {money},'
    ' "unattributed_cents" {money}, "unattributed_share" {float}, "billed_source" {text}',
}
PG = {"date": "date", "text": "text", "money": "numeric(24,10)", "bigint": "bigint",
      "float": "double precision"}  # fmt: skip
SQLITE = {"date": "TEXT", "text": "TEXT", "money": "NUMERIC", "bigint": "INTEGER", "float": "REAL"}
OLD_DAY = "2026-10-01"


def _create_old_tables(conn: sa.Connection, prefix: str, types: dict[str, str]) -> None:
    for table, columns in OLD_DDL.items():
        conn.execute(sa.text(f"CREATE TABLE {prefix}{table} ({columns.format(**types)})"))
    conn.execute(
        sa.text(
            f"INSERT INTO {prefix}invoice_check (usage_date, model, openai_requests,"
            " openai_input_tokens, openai_output_tokens, logged_requests, logged_input_tokens,"
            " logged_output_tokens, billed_cents, reconciled_actual_cents, unlogged_actual_cents,"
            " unattributed_cents, unattributed_share, billed_source)"
            " VALUES (:d, '(all)', 1, 1, 1, 1, 1, 1, 2.5, 2, 0, 0.5, 0.2, 'costs_api')"
        ),
        {"d": OLD_DAY},
    )


def test_tables_of_the_previous_release_are_upgraded_once_and_a_day_runs_again(demo, capsys):
    with demo.engine.begin() as conn:
        _create_old_tables(conn, f'"{demo.schema}".', PG)

    refused = demo.run(LAST_DAY)
    assert not refused.success
    _, error = step_failure(refused)
    assert "recon-migrate" in error and "lacks quantity" in error

    assert main(["--url", demo.url, "--schema", demo.schema]) == 0
    out = capsys.readouterr().out
    assert "openai_daily_costs: added column quantity" in out
    assert "invoice_check: added column project_id" in out
    assert "output tables at revision 0002_project_scope (were at no revision)" in out
    assert current_revision(demo.engine, demo.schema) == "0002_project_scope"
    [version] = demo.rows(f"SELECT version_num FROM {{s}}.{VERSION_TABLE}")
    assert version.version_num == "0002_project_scope"
    [old] = demo.rows("SELECT project_id, billed_cents FROM {s}.invoice_check")
    assert (old.project_id, float(old.billed_cents)) == ("(all)", 2.5)

    assert main(["--url", demo.url, "--schema", demo.schema]) == 0
    assert "already up to date" in capsys.readouterr().out

    result = demo.run(LAST_DAY)
    assert result.success
    assert checks(result)["invoice_gap_residual_within_bounds"]
    assert "gap_by_cause" in metadata(result, "invoice_gap")
    # The day's causes add up exactly (NUMERIC) to billed - reconciled actual.
    [sums] = demo.rows(
        "SELECT (SELECT sum(amount_cents) FROM {s}.invoice_gap WHERE usage_date = :d"
        "        AND project_id = '(all)') AS causes,"
        " (SELECT sum(amount_cents) FROM {s}.openai_daily_costs WHERE usage_date = :d)"
        " - (SELECT sum(actual_cost_cents) FROM {s}.reconciled_usage WHERE usage_date = :d)"
        " AS gap",
        d=LAST_DAY,
    )
    assert sums.causes == sums.gap and sums.gap > 0
    kept = demo.rows("SELECT usage_date FROM {s}.invoice_check WHERE usage_date = :d", d=OLD_DAY)
    assert len(kept) == 1


def test_sqlite_output_tables_are_upgraded_too_and_a_database_without_them_is_untouched(
    sqlite_engine, tmp_path
):
    fresh = sa.create_engine(f"sqlite:///{tmp_path}/fresh.sqlite")
    try:
        assert upgrade_output_schema(fresh, None) == []
        assert current_revision(fresh, None) is None
        assert sa.inspect(fresh).get_table_names() == []  # not even a version table
    finally:
        fresh.dispose()

    with sqlite_engine.begin() as conn:
        _create_old_tables(conn, "", SQLITE)
    steps = upgrade_output_schema(sqlite_engine, None)
    assert steps[:2] == [
        "openai_daily_costs: added column quantity",
        "invoice_check: added column project_id",
    ]
    assert upgrade_output_schema(sqlite_engine, None) == []
    with sqlite_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT project_id FROM invoice_check")).scalar() == "(all)"
