"""Output tables written by the previous release (fb4caf3) are upgraded in place by
`recon-migrate`, once, and a day then runs on them; the bill of a run day is explained."""

from __future__ import annotations

import sqlalchemy as sa

from recon_pipeline.core.output_tables import MONTHLY_STATEMENT
from recon_pipeline.io.migrations import main
from recon_pipeline.io.output_schema import (
    VERSION_TABLE,
    current_revision,
    upgrade_output_schema,
)
from recon_pipeline_tests.runs import LAST_DAY, checks, metadata

# The output tables release fb4caf3 wrote whose columns changed since (its OutputTable specs;
# `Database.ensure_table` turned each into CREATE TABLE with the types below).
STATUS_COUNTS = [
    f"{s}:bigint" for s in ("pending", "matched", "discrepancy", "not_found", "unverifiable")
]
OLD_TABLES = {
    "openai_requests": ["usage_date:date", "request_id:text", "created_at:timestamp",
        "model:text", "service_tier:text", "batch:bool", "input_tokens:bigint",
        "cached_input_tokens:bigint", "output_tokens:bigint", "reasoning_tokens:bigint",
        "input_audio_tokens:bigint", "output_audio_tokens:bigint", "audio_ms:bigint",
        "source:text"],
    "reconciled_usage": ["usage_date:date", "usage_id:usage_id", "user_id:text",
        "action_type:text", "model_used:text", "openai_request_id:text",
        "created_at:timestamp", "openai_model:text", "service_tier:text", "batch:bool",
        "logged_input_tokens:bigint", "logged_output_tokens:bigint",
        "openai_input_tokens:bigint", "openai_cached_input_tokens:bigint",
        "openai_output_tokens:bigint", "openai_reasoning_tokens:bigint",
        "openai_audio_ms:bigint", "estimated_cost:money", "actual_cost:money",
        "variance:money", "variance_pct:float", "variance_class:text",
        "reconciliation_status:text", "model_mismatch:bool", "token_mismatch:bool",
        "price_status:text", "openai_source:text"],
    "daily_variance_summary": ["usage_date:date", "action_type:text", "model_used:text",
        "requests:bigint", *STATUS_COUNTS, "estimated_cost:money", "actual_cost:money",
        "variance:money", "match_rate:float"],
    "openai_daily_costs": ["usage_date:date", "line_item:text", "project_id:text",
        "amount:money", "currency:text"],
    "invoice_check": ["usage_date:date", "model:text", "openai_requests:bigint",
        "openai_input_tokens:bigint", "openai_output_tokens:bigint", "logged_requests:bigint",
        "logged_input_tokens:bigint", "logged_output_tokens:bigint", "billed:money",
        "reconciled_actual:money", "unlogged_actual:money", "unattributed:money",
        "unattributed_share:float", "billed_source:text"],
}  # fmt: skip
PG = {"date": "date", "text": "text", "money": "numeric(24,10)", "bigint": "bigint",
      "float": "double precision", "bool": "boolean", "timestamp": "timestamptz"}  # fmt: skip
SQLITE = {"date": "TEXT", "text": "TEXT", "money": "NUMERIC", "bigint": "INTEGER",
          "float": "REAL", "bool": "INTEGER", "timestamp": "TEXT", "usage_id": "TEXT"}  # fmt: skip
OLD_DAY = "2026-10-01"


def _create_old_tables(conn: sa.Connection, prefix: str, types: dict[str, str]) -> None:
    for table, spec in OLD_TABLES.items():
        columns = []
        for name, kind in (item.split(":") for item in spec):
            stored = f"{name}_cents" if kind == "money" else name
            columns.append(f'"{stored}" {types[kind]}')
        conn.execute(sa.text(f"CREATE TABLE {prefix}{table} ({', '.join(columns)})"))
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
    [(id_type,)] = demo.rows(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = to_regclass(:t) AND attname = 'id'",
        t=f'"{demo.schema}".token_usage',
    )
    with demo.engine.begin() as conn:
        _create_old_tables(conn, f'"{demo.schema}".', {**PG, "usage_id": id_type})

    assert main(["--url", demo.url, "--schema", demo.schema]) == 0
    out = capsys.readouterr().out
    assert "openai_daily_costs: added column quantity" in out
    assert "invoice_check: added column project_id" in out
    assert "reconciled_usage: added column match_method" in out
    assert "daily_variance_summary: added column verified_by_fingerprint" in out
    assert "invoice_check: added column day_status" in out
    assert "monthly_statement: created" in out
    assert "output tables at revision 0005_monthly_statement (were at no revision)" in out
    assert current_revision(demo.engine, demo.schema) == "0005_monthly_statement"
    [version] = demo.rows(f"SELECT version_num FROM {{s}}.{VERSION_TABLE}")
    assert version.version_num == "0005_monthly_statement"
    # The month's table as declared, ready for its first statement.
    columns = demo.rows(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = :s AND table_name = 'monthly_statement' ORDER BY ordinal_position",
        s=demo.schema,
    )
    assert [c.column_name for c in columns] == [
        MONTHLY_STATEMENT.stored_name(c) for c in MONTHLY_STATEMENT.columns
    ]
    assert dict(columns)["amount_cents"] == "numeric"
    [old] = demo.rows("SELECT project_id, billed_cents, day_status FROM {s}.invoice_check")
    assert (old.project_id, float(old.billed_cents), old.day_status) == ("(all)", 2.5, "open")

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
    # The run day is inside its grace period: its rows say it is still open.
    for table in ("invoice_check", "invoice_gap", "daily_variance_summary", "day_settlement"):
        statuses = demo.rows(f"SELECT DISTINCT day_status FROM {{s}}.{table} WHERE usage_date = :d",
                             d=LAST_DAY)  # fmt: skip
        assert [r.day_status for r in statuses] == ["open"], table


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
    assert "reconciled_usage: added column matched_request_id" in steps
    assert "invoice_gap: added column day_status" not in steps  # no such table back then
    assert "daily_variance_summary: added column day_status" in steps
    assert steps[-2] == "monthly_statement: created"
    assert "monthly_statement" in sa.inspect(sqlite_engine).get_table_names()
    assert upgrade_output_schema(sqlite_engine, None) == []
    with sqlite_engine.connect() as conn:
        old = conn.execute(sa.text("SELECT project_id, day_status FROM invoice_check")).one()
    assert tuple(old) == ("(all)", "open")
