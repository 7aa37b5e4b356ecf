"""Which table and schema the migration works on, against real PostgreSQL: names refused
before any SQL, the search path, long and other table names, a missing table; and the
console script `recon-migrate`, its arguments and environment. What the migration changes on
the table is in test_migration_effects.py."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from recon_pipeline.io.identifiers import InvalidIdentifierError, qualified
from recon_pipeline.io.migrations import apply_migration, create_demo_token_usage, main
from recon_pipeline_tests.migration_tables import (
    _make_app_v1_table,
    _pg_state,
    _rows,
    _scalar,
)


@pytest.mark.parametrize(
    ("table", "schema"),
    [
        ("token_usage; DROP TABLE victim", None),
        ('token_usage" CASCADE; --', None),
        ("token_usage", "public; DROP TABLE victim"),
        ("token_usage", 'x"."y'),
        ("x" * 64, None),
    ],
)
def test_injection_via_names_is_refused_before_any_sql(pg_schema, table, schema) -> None:
    engine, real_schema = pg_schema
    victim = qualified("victim", real_schema)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {victim} (x int)")
    statements: list[str] = []

    def record(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        with pytest.raises(InvalidIdentifierError):
            apply_migration(engine, table=table, schema=schema)
        with pytest.raises(InvalidIdentifierError):
            create_demo_token_usage(engine, table=table, schema=schema)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert statements == []
    assert _scalar(engine, "SELECT to_regclass(:v) IS NOT NULL", v=victim)


def test_default_schema_follows_search_path(pg_schema, pg_url) -> None:
    engine, schema = pg_schema
    _make_app_v1_table(engine, schema, rows=5)
    scoped = sa.create_engine(pg_url, connect_args={"options": f"-c search_path={schema}"})
    try:
        assert (
            apply_migration(scoped)[-1] == f'created view "{schema}"."token_usage_reconciliation"'
        )
        assert apply_migration(scoped) == []
    finally:
        scoped.dispose()
    assert _scalar(engine, "SELECT count(*) FROM pg_views WHERE schemaname = :s", s=schema) == 2


def test_long_table_name_gets_distinct_short_names(pg_schema) -> None:
    engine, schema = pg_schema
    table = "t" * 63
    create_demo_token_usage(engine, table=table, schema=schema)
    indexes = [n for n, _ in _pg_state(engine, schema, table)["indexes"] if n != f"{table}_pkey"]
    assert len(indexes) == 4  # the identity key's index is named by PostgreSQL
    assert all(len(n) <= 63 for n in indexes)
    assert apply_migration(engine, table=table, schema=schema) == []


def test_missing_table_is_a_clear_error(pg_schema) -> None:
    engine, schema = pg_schema
    with pytest.raises(RuntimeError, match="does not exist"):
        apply_migration(engine, schema=schema)


def test_other_table_name_gets_its_own_view(pg_schema) -> None:
    engine, schema = pg_schema
    create_demo_token_usage(engine, table="usage_log", schema=schema)
    names = {
        n for (n,) in _rows(engine, "SELECT viewname FROM pg_views WHERE schemaname = :s", s=schema)
    }
    assert names == {"usage_log_reconciliation"}
    assert apply_migration(engine, table="usage_log", schema=schema) == []


# The console script


def test_main_applies_and_prints_steps(pg_schema, pg_url, capsys) -> None:
    engine, schema = pg_schema
    _make_app_v1_table(engine, schema, rows=20)

    assert main(["--url", pg_url, "--schema", schema]) == 0
    out = capsys.readouterr().out
    assert "added column actual_cost_cents numeric(20,10)" in out
    assert "created index token_usage_pending_created_at_idx" in out

    assert main(["--url", pg_url, "--schema", schema]) == 0
    assert "already up to date" in capsys.readouterr().out


def test_main_reads_env_and_never_prints_password(pg_schema, pg_url, capsys, monkeypatch) -> None:
    engine, schema = pg_schema
    create_demo_token_usage(engine, table="usage_log", schema=schema)
    url = sa.make_url(pg_url).set(password="s3cretpw").render_as_string(hide_password=False)
    assert "s3cretpw" in url
    monkeypatch.setenv("RECON_DATABASE_URL", url)

    assert main(["--schema", schema, "--table", "usage_log"]) == 0
    captured = capsys.readouterr()
    assert "already up to date" in captured.out
    assert "***" in captured.out

    assert main(["--schema", schema]) == 1  # no token_usage in that schema
    captured = capsys.readouterr()
    assert "does not exist" in captured.err
    unreachable = sa.make_url(url).set(port=1).render_as_string(hide_password=False)
    assert main(["--url", unreachable, "--schema", schema]) == 1
    captured2 = capsys.readouterr()
    for text in (captured.out, captured.err, captured2.out, captured2.err):
        assert "s3cretpw" not in text


def test_main_without_url_or_with_bad_name(monkeypatch, capsys, pg_url) -> None:
    monkeypatch.delenv("RECON_DATABASE_URL", raising=False)
    assert main([]) == 2
    assert "RECON_DATABASE_URL" in capsys.readouterr().err
    assert main(["--url", pg_url, "--table", "token_usage; DROP TABLE x"]) == 1
    assert "not a plain SQL identifier" in capsys.readouterr().err


def test_recon_migrate_reads_the_same_schema_and_table_variables_as_the_pipeline(
    pg_schema, pg_url, monkeypatch, capsys
):
    engine, schema = pg_schema
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f'CREATE TABLE "{schema}".app_calls (id bigint PRIMARY KEY, user_id text,'
                " action_type text NOT NULL, model_used text NOT NULL, input_tokens integer,"
                " output_tokens integer, calculated_cost_cents numeric(12,6),"
                " created_at timestamptz NOT NULL)"
            )
        )
    monkeypatch.setenv("RECON_DATABASE_URL", pg_url)
    monkeypatch.setenv("RECON_USAGE_SCHEMA", schema)
    monkeypatch.setenv("RECON_USAGE_TABLE", "app_calls")
    assert main([]) == 0
    with engine.connect() as conn:
        columns = {
            name
            for (name,) in conn.execute(
                sa.text(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = :s AND table_name = 'app_calls'"
                ),
                {"s": schema},
            )
        }
    assert {"actual_cost_cents", "reconciled_at", "reconciliation_status"} <= columns
