"""The migration against real PostgreSQL and SQLite: what it changes on the application's
table, and what it must not (rows, the file, dependent views, columns and indexes the
application already has, concurrent writers). Which table and schema it works on, and the
console script, are in test_migration_targets.py."""

from __future__ import annotations

import time
from decimal import Decimal

import psycopg
import pytest
import sqlalchemy as sa

from recon_pipeline.core.schema import STATUSES
from recon_pipeline.io.identifiers import qualified
from recon_pipeline.io.migrations import (
    RECONCILIATION_STATUSES,
    MigrationError,
    apply_migration,
    create_demo_token_usage,
)
from recon_pipeline_tests.migration_tables import (
    APP_ROWS_V1,
    APP_TABLE_V1,
    _make_app_v1_table,
    _pg_state,
    _rows,
    _scalar,
)

VIEW = "token_usage_reconciliation"
VIEW_COLUMNS = [
    "id",
    "user_id",
    "action_type",
    "model_used",
    "input_tokens",
    "output_tokens",
    "calculated_cost_cents",
    "created_at",
    "openai_request_id",
    "openai_created",
    "system_fingerprint",
    "actual_cost_cents",
    "reconciled_at",
    "reconciliation_status",
    "best_cost_cents",
    "variance_cents",
]
APP_COLUMNS = (
    "id, user_id, action_type, model_used, input_tokens, output_tokens,"
    " cached_input_tokens, audio_seconds, calculated_cost_cents, created_at"
)


def _migrated_table(engine: sa.Engine, schema: str) -> str:
    """token_usage as recon-migrate leaves it (the demo's table), by its qualified name."""
    create_demo_token_usage(engine, schema=schema)
    return qualified("token_usage", schema)


def _insert_call(conn: sa.Connection, t: str, route: str, tokens_in: int, tokens_out: int) -> None:
    """One gpt-4o call logged now, in `conn`'s transaction (left open for the caller)."""
    conn.execute(
        sa.text(
            f"INSERT INTO {t} (action_type, model_used, input_tokens, output_tokens, created_at)"
            " VALUES (:route, 'gpt-4o', :i, :o, now())"
        ),
        {"route": route, "i": tokens_in, "o": tokens_out},
    )


def _row_versions(engine: sa.Engine, t: str) -> list[tuple]:
    """Each row's id, xmin and original columns: any UPDATE or rewrite would show here."""
    return _rows(engine, f"SELECT xmin::text, {APP_COLUMNS} FROM {t} ORDER BY id")


def test_statuses_are_the_core_ones() -> None:
    assert RECONCILIATION_STATUSES == STATUSES
    assert set(STATUSES) == {"pending", "matched", "discrepancy", "not_found", "unverifiable"}


def test_populated_table_with_dependent_view(pg_schema) -> None:
    engine, schema = pg_schema
    t = _make_app_v1_table(engine, schema, rows=3000)
    daily_before = _rows(engine, f"SELECT * FROM {qualified('app_daily', schema)} ORDER BY day")
    rows_before = _row_versions(engine, t)
    filenode_before = _pg_state(engine, schema)["filenode"]

    steps = apply_migration(engine, schema=schema)

    assert steps == [
        "added column openai_request_id text",
        "added column openai_created bigint",
        "added column system_fingerprint text",
        "added column actual_cost_cents numeric(20,10)",
        "added column reconciled_at timestamp with time zone",
        "added column reconciliation_status text NOT NULL DEFAULT 'pending'::text",
        "added constraint token_usage_reconciliation_status_check CHECK ((reconciliation_status"
        " = ANY (ARRAY['pending'::text, 'matched'::text, 'discrepancy'::text,"
        " 'not_found'::text, 'unverifiable'::text])))",
        "created index token_usage_created_at_idx",
        "created index token_usage_openai_request_id_idx",
        "created index token_usage_pending_created_at_idx",
        f'created view "{schema}"."token_usage_reconciliation"',
    ]
    # Not rewritten, not updated: same file, same row versions, same values.
    assert _pg_state(engine, schema)["filenode"] == filenode_before
    assert _row_versions(engine, t) == rows_before
    assert _rows(
        engine,
        f"SELECT reconciliation_status, count(*), count(actual_cost_cents), count(reconciled_at)"
        f" FROM {t} GROUP BY 1",
    ) == [("pending", 3000, 0, 0)]
    assert (
        _rows(engine, f"SELECT * FROM {qualified('app_daily', schema)} ORDER BY day")
        == daily_before
    )

    view = qualified("token_usage_reconciliation", schema)
    view_columns = _rows(
        engine,
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = :s AND table_name = 'token_usage_reconciliation'"
        " ORDER BY ordinal_position",
        s=schema,
    )
    assert [c for (c,) in view_columns] == VIEW_COLUMNS
    assert _rows(
        engine,
        f"SELECT count(*), count(variance_cents),"
        f" bool_and(best_cost_cents IS NOT DISTINCT FROM calculated_cost_cents),"
        f" sum(best_cost_cents) = (SELECT sum(calculated_cost_cents) FROM {t})"
        f" FROM {view}",
    ) == [(3000, 0, True, True)]

    indexes = dict(_pg_state(engine, schema)["indexes"])
    assert indexes["token_usage_created_at_idx"].endswith("USING btree (created_at)")
    assert indexes["token_usage_openai_request_id_idx"].endswith(
        "USING btree (openai_request_id) WHERE (openai_request_id IS NOT NULL)"
    )
    assert indexes["token_usage_pending_created_at_idx"].endswith(
        "USING btree (created_at) WHERE (reconciliation_status = 'pending'::text)"
    )
    assert _rows(
        engine,
        "SELECT contype, convalidated FROM pg_constraint"
        " WHERE conrelid = to_regclass(:t) AND conname = 'token_usage_reconciliation_status_check'",
        t=t,
    ) == [("c", True)]


def test_second_apply_changes_nothing(pg_schema) -> None:
    engine, schema = pg_schema
    t = _make_app_v1_table(engine, schema, rows=500)
    assert apply_migration(engine, schema=schema)
    state = _pg_state(engine, schema)
    rows = _row_versions(engine, t)

    assert apply_migration(engine, schema=schema) == []
    assert _pg_state(engine, schema) == state
    assert _row_versions(engine, t) == rows


def test_reapply_takes_no_lock_that_blocks_writers(pg_schema) -> None:
    """Deploys may re-run the migration while the application is inserting rows."""
    engine, schema = pg_schema
    t = _migrated_table(engine, schema)
    with engine.connect() as writer:
        _insert_call(writer, t, "/api/viva/chat", 1, 1)
        started = time.monotonic()
        assert apply_migration(engine, schema=schema) == []
        assert time.monotonic() - started < 5
        writer.rollback()


def test_lock_timeout_gives_up_and_leaves_table_untouched(pg_schema) -> None:
    engine, schema = pg_schema
    t = _make_app_v1_table(engine, schema, rows=10)
    state = _pg_state(engine, schema)
    with engine.connect() as writer:
        writer.exec_driver_sql(f"UPDATE {t} SET user_id = user_id WHERE id = 1")
        started = time.monotonic()
        with pytest.raises(sa.exc.OperationalError) as caught:
            apply_migration(engine, schema=schema)
        elapsed = time.monotonic() - started
        writer.rollback()
    assert isinstance(caught.value.orig, psycopg.errors.LockNotAvailable)
    assert 9 <= elapsed < 30
    assert _pg_state(engine, schema) == state


def test_a_relation_on_the_views_name_is_refused_before_any_change(pg_schema) -> None:
    """A table squatting on the pipeline view's name is not the pipeline's: it is never
    replaced, and the migration stops before its first change."""
    engine, schema = pg_schema
    t = _make_app_v1_table(engine, schema, rows=10)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE {qualified('token_usage_reconciliation', schema)} (x int)"
        )
    state = _pg_state(engine, schema)
    with pytest.raises(MigrationError, match="not created by recon-migrate"):
        apply_migration(engine, schema=schema)
    assert _pg_state(engine, schema) == state
    assert _scalar(engine, f"SELECT count(*) FROM {t}") == 10


def test_check_constraint_rejects_unknown_status(pg_schema) -> None:
    engine, schema = pg_schema
    t = _migrated_table(engine, schema)
    with engine.begin() as conn:
        _insert_call(conn, t, "/api/viva/blueprint", 10, 5)
    for status in STATUSES:
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {t} SET reconciliation_status = :s"), {"s": status})

    with pytest.raises(sa.exc.IntegrityError) as caught, engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {t} SET reconciliation_status = 'bogus'")
    assert isinstance(caught.value.orig, psycopg.errors.CheckViolation)
    assert "token_usage_reconciliation_status_check" in str(caught.value)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {t} SET reconciliation_status = NULL")
    assert _scalar(engine, f"SELECT reconciliation_status FROM {t}") == STATUSES[-1]


def test_table_that_already_has_openai_columns(pg_schema) -> None:
    """After the application's own migration: its columns and its index are kept as they are."""
    engine, schema = pg_schema
    t = qualified("token_usage", schema)
    with engine.begin() as conn:
        conn.exec_driver_sql(APP_TABLE_V1.format(t=t))
        conn.exec_driver_sql(
            f"ALTER TABLE {t} ADD COLUMN openai_request_id varchar(255),"
            " ADD COLUMN openai_created bigint, ADD COLUMN system_fingerprint text"
        )
        conn.exec_driver_sql(f"CREATE UNIQUE INDEX app_request_id_key ON {t} (openai_request_id)")
        conn.execute(sa.text(APP_ROWS_V1.format(t=t, n=200)))
        conn.execute(
            sa.text(
                f"UPDATE {t} SET openai_request_id = 'chatcmpl-' || id,"
                " openai_created = 1735689600 + id, system_fingerprint = 'fp_' || (id % 3)"
                " WHERE id % 4 <> 0"
            )
        )
    before = _rows(
        engine,
        f"SELECT id, openai_request_id, openai_created, system_fingerprint,"
        f" xmin::text FROM {t} ORDER BY id",
    )

    steps = apply_migration(engine, schema=schema)

    assert [s.split(" ")[2] for s in steps if s.startswith("added column")] == [
        "actual_cost_cents",
        "reconciled_at",
        "reconciliation_status",
    ]
    # The application's full unique index already serves lookups by request id.
    assert "created index token_usage_openai_request_id_idx" not in steps
    assert "created index token_usage_created_at_idx" in steps
    assert "created index token_usage_pending_created_at_idx" in steps
    after = _rows(
        engine,
        f"SELECT id, openai_request_id, openai_created, system_fingerprint,"
        f" xmin::text FROM {t} ORDER BY id",
    )
    assert after == before
    assert (
        _scalar(
            engine,
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = to_regclass(:t) AND attname = 'openai_request_id'",
            t=t,
        )
        == "character varying(255)"
    )
    view = qualified("token_usage_reconciliation", schema)
    assert _scalar(engine, f"SELECT count(openai_request_id) FROM {view}") == 150
    assert apply_migration(engine, schema=schema) == []


def test_existing_pipeline_column_of_wrong_type_is_refused(pg_schema) -> None:
    engine, schema = pg_schema
    t = _make_app_v1_table(engine, schema, rows=5)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {t} ADD COLUMN actual_cost_cents double precision")
    state = _pg_state(engine, schema)
    with pytest.raises(RuntimeError, match="actual_cost_cents"):
        apply_migration(engine, schema=schema)
    assert _pg_state(engine, schema) == state


def test_actual_cost_keeps_ten_decimal_places(pg_schema) -> None:
    engine, schema = pg_schema
    t = _migrated_table(engine, schema)
    values = [Decimal(v) for v in ("0.0000000001", "12345.6789012345", "9999999999.9999999999")]
    with engine.begin() as conn:
        for value in values:
            conn.execute(
                sa.text(
                    f"INSERT INTO {t} (action_type, model_used, input_tokens, output_tokens,"
                    " calculated_cost_cents, created_at, actual_cost_cents)"
                    " VALUES ('/api/viva/blueprint', 'gpt-4o', 1, 1, 0.000001, now(), :v)"
                ),
                {"v": value},
            )
    stored = _rows(engine, f"SELECT actual_cost_cents FROM {t} ORDER BY id")
    assert [v for (v,) in stored] == values
    assert all(isinstance(v, Decimal) for (v,) in stored)
    variances = _rows(
        engine,
        f"SELECT variance_cents FROM {qualified('token_usage_reconciliation', schema)} ORDER BY id",
    )
    assert [v for (v,) in variances] == [v - Decimal("0.000001") for v in values]


# SQLite


def _sqlite_objects(engine: sa.Engine) -> list[tuple]:
    return _rows(engine, "SELECT type, name, sql FROM sqlite_master ORDER BY type, name")


def test_sqlite_demo_table(sqlite_engine) -> None:
    create_demo_token_usage(sqlite_engine)
    objects = _sqlite_objects(sqlite_engine)
    assert apply_migration(sqlite_engine) == []
    assert _sqlite_objects(sqlite_engine) == objects
    names = {(kind, name) for kind, name, _ in objects}
    assert {
        ("index", "token_usage_created_at_idx"),
        ("index", "token_usage_openai_request_id_idx"),
        ("index", "token_usage_pending_created_at_idx"),
        ("view", "token_usage_reconciliation"),
    } <= names

    with sqlite_engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO token_usage (action_type, model_used, input_tokens, output_tokens,"
            " calculated_cost_cents, created_at) VALUES"
            " ('/api/viva/blueprint', 'gpt-4o', 10, 5, 1.5, '2025-01-01T00:00:00+00:00')"
        )
    assert _rows(
        sqlite_engine,
        "SELECT reconciliation_status, best_cost_cents, variance_cents"
        " FROM token_usage_reconciliation",
    ) == [("pending", 1.5, None)]
    for status in STATUSES:
        with sqlite_engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE token_usage SET reconciliation_status = :s"), [{"s": status}]
            )
    with (
        pytest.raises(sa.exc.IntegrityError, match="CHECK constraint failed"),
        sqlite_engine.begin() as conn,
    ):
        conn.exec_driver_sql("UPDATE token_usage SET reconciliation_status = 'bogus'")
    view_columns = _rows(sqlite_engine, "SELECT name FROM pragma_table_info(:v)", v=VIEW)
    assert [c for (c,) in view_columns] == VIEW_COLUMNS


def test_sqlite_app_table_with_rows_and_dependent_view(sqlite_engine) -> None:
    with sqlite_engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE token_usage (id INTEGER PRIMARY KEY, user_id TEXT,"
            " action_type TEXT NOT NULL, model_used TEXT NOT NULL, input_tokens INTEGER NOT NULL,"
            " output_tokens INTEGER NOT NULL, calculated_cost_cents NUMERIC,"
            " created_at TEXT NOT NULL)"
        )
        conn.execute(
            sa.text(
                "INSERT INTO token_usage (user_id, action_type, model_used, input_tokens,"
                " output_tokens, calculated_cost_cents, created_at)"
                " VALUES (:u, '/api/viva/chat', 'gpt-4o-mini', :i, :o, :c, :t)"
            ),
            [
                {
                    "u": f"user-{i % 7}",
                    "i": 100 + i,
                    "o": 10 + i,
                    "c": i / 8,
                    "t": f"2025-01-{1 + i % 28:02d}T12:00:00+00:00",
                }
                for i in range(1000)
            ],
        )
        conn.exec_driver_sql(
            "CREATE VIEW app_daily AS SELECT substr(created_at, 1, 10) AS day,"
            " sum(calculated_cost_cents) AS cost FROM token_usage GROUP BY 1"
        )
    daily = _rows(sqlite_engine, "SELECT * FROM app_daily ORDER BY day")

    steps = apply_migration(sqlite_engine)

    assert len([s for s in steps if s.startswith("added column")]) == 6
    assert "created view token_usage_reconciliation" in steps
    assert _rows(sqlite_engine, "SELECT * FROM app_daily ORDER BY day") == daily
    assert _rows(
        sqlite_engine,
        "SELECT reconciliation_status, count(*), count(actual_cost_cents) FROM token_usage"
        " GROUP BY 1",
    ) == [("pending", 1000, 0)]
    assert apply_migration(sqlite_engine) == []


def test_sqlite_failure_midway_rolls_everything_back(sqlite_engine) -> None:
    with sqlite_engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE token_usage (id INTEGER PRIMARY KEY, user_id TEXT, action_type TEXT,"
            " model_used TEXT, input_tokens INTEGER, output_tokens INTEGER,"
            " calculated_cost_cents NUMERIC, created_at TEXT)"
        )
        conn.exec_driver_sql("CREATE TABLE token_usage_reconciliation (x INTEGER)")
    objects = _sqlite_objects(sqlite_engine)
    with pytest.raises(sa.exc.OperationalError):
        apply_migration(sqlite_engine)
    assert _sqlite_objects(sqlite_engine) == objects
