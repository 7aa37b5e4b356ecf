"""The application's `token_usage` as it was before the migration, and reads of everything
the migration could change, for test_migration_effects.py and test_migration_targets.py."""

from __future__ import annotations

import sqlalchemy as sa

from recon_pipeline.io.identifiers import qualified

# The application's table before it stored OpenAI's ids.
APP_TABLE_V1 = """
CREATE TABLE {t} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id text,
    action_type text NOT NULL,
    model_used text NOT NULL,
    input_tokens integer NOT NULL,
    output_tokens integer NOT NULL,
    cached_input_tokens integer,
    audio_seconds numeric,
    calculated_cost_cents numeric(12, 6),
    created_at timestamptz NOT NULL
)
"""
APP_ROWS_V1 = """
INSERT INTO {t} (user_id, action_type, model_used, input_tokens, output_tokens,
                 cached_input_tokens, audio_seconds, calculated_cost_cents, created_at)
SELECT 'user-' || (g % 37),
       (ARRAY['/api/viva/blueprint', '/api/viva/chat', '/api/transcribe'])[1 + g % 3],
       CASE WHEN g % 2 = 0 THEN 'gpt-4o' ELSE 'gpt-4o-mini' END,
       100 + g % 900,
       20 + g % 300,
       CASE WHEN g % 5 = 0 THEN g % 100 END,
       CASE WHEN g % 3 = 2 THEN (g % 60)::numeric END,
       CASE WHEN g % 50 <> 0 THEN round((g % 1000) * 0.012345, 6) END,
       timestamptz '2025-01-01 00:00:00+00' + g * interval '17 minutes'
FROM generate_series(1, {n}) AS g
"""
APP_DAILY_VIEW = """
CREATE VIEW {v} AS
SELECT date(created_at) AS day, sum(calculated_cost_cents) AS cost, count(*) AS n
FROM {t} GROUP BY 1
"""


def _scalar(engine: sa.Engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def _rows(engine: sa.Engine, sql: str, **params) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql), params)]


def _make_app_v1_table(engine: sa.Engine, schema: str, rows: int = 3000) -> str:
    """The pre-migration application's table with `rows` rows and a dependent view."""
    t = qualified("token_usage", schema)
    with engine.begin() as conn:
        conn.exec_driver_sql(APP_TABLE_V1.format(t=t))
        conn.execute(sa.text(APP_ROWS_V1.format(t=t, n=rows)))
        conn.exec_driver_sql(APP_DAILY_VIEW.format(t=t, v=qualified("app_daily", schema)))
    return t


def _pg_state(engine: sa.Engine, schema: str, table: str = "token_usage") -> dict:
    """Everything the migration could change, read from the catalogue."""
    return {
        "columns": _rows(
            engine,
            "SELECT table_name, column_name, data_type, numeric_precision, numeric_scale,"
            " is_nullable, column_default FROM information_schema.columns"
            " WHERE table_schema = :s ORDER BY table_name, ordinal_position",
            s=schema,
        ),
        "indexes": _rows(
            engine,
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = :s ORDER BY 1",
            s=schema,
        ),
        "constraints": _rows(
            engine,
            "SELECT conname, pg_get_constraintdef(c.oid), convalidated FROM pg_constraint c"
            " JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = :s ORDER BY 1",
            s=schema,
        ),
        "views": _rows(
            engine,
            "SELECT viewname, definition FROM pg_views WHERE schemaname = :s ORDER BY 1",
            s=schema,
        ),
        "filenode": _scalar(engine, "SELECT pg_relation_filenode(:t)", t=qualified(table, schema)),
    }
