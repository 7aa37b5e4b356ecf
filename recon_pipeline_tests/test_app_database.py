"""recon-migrate, a day's run and a re-run on the application's database as it is
(`app_database.py`), through the least-privilege role with row-level security forced."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
import sqlalchemy as sa

from recon_pipeline.io.doctor import main as recon_doctor
from recon_pipeline.io.migrations import VIEW_MARKER, MigrationError, apply_migration
from recon_pipeline.io.migrations import main as recon_migrate
from recon_pipeline.io.whole_cents import half_even
from recon_pipeline_tests.app_database import VIEWS, AppDatabase, app_database
from recon_pipeline_tests.runs import LAST_DAY, checks

NUMERIC = "numeric(20,10)"


@pytest.fixture
def app_db(pg_engine, pg_url, tmp_path) -> Iterator[AppDatabase]:
    with app_database(pg_engine, pg_url, tmp_path / "exports") as database:
        yield database


def _catalogue(db: AppDatabase) -> dict[str, object]:
    """What recon-migrate could change, read from the catalogue."""
    return {
        "columns": db.rows(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = to_regclass(:t) AND attnum > 0 ORDER BY attnum",
            t=db.table,
        ),
        "indexes": db.rows(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = :s ORDER BY 1",
            s=db.app,
        ),
        "constraints": db.rows(
            "SELECT conname, convalidated FROM pg_constraint WHERE conrelid = to_regclass(:t)"
            " ORDER BY 1",
            t=db.table,
        ),
        "views": db.rows(
            "SELECT schemaname, viewname, definition FROM pg_views"
            " WHERE schemaname IN (:a, :b) ORDER BY 1, 2",
            a=db.app,
            b=db.analytics,
        ),
        "view_catalogue": db.view_catalogue(),
    }


def _run(capsys, *args: str) -> str:
    code = recon_migrate(list(args))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_recon_migrate_adopts_the_table_and_keeps_its_views(app_db: AppDatabase, capsys):
    db = app_db
    rows_before, catalogue_before = db.view_rows(), db.view_catalogue()
    definitions_before = _catalogue(db)["views"]
    indexes_before = _catalogue(db)["indexes"]
    assert db.cost_type(db.view("token_usage_with_costs")) == "integer"

    out = _run(capsys, "--url", db.url, "--schema", db.app)

    assert f"changed column actual_cost_cents from integer to {NUMERIC}" in out
    for name in VIEWS:
        plain = db.view(name).replace('"', "")
        assert f"recreated view {plain} (reads actual_cost_cents)" in out
    # Rows with other statuses are reported with their counts; the CHECK waits NOT VALID.
    assert "'not found': 3" in out and "NOT VALID" in out
    assert "NOT VALID NOT VALID" not in out  # the catalogue's definition says it already
    assert f"UPDATE {db.table} SET reconciliation_status = 'pending'" in out
    assert db.cost_type(db.table) == NUMERIC
    assert db.cost_type(db.view("token_usage_with_costs")) == NUMERIC
    # The same rows, the same definitions, owners, options, grants and comments.
    assert db.view_rows() == rows_before
    assert db.view_catalogue() == catalogue_before
    views_after = _catalogue(db)["views"]
    assert [v for v in views_after if v[1] != "token_usage_reconciliation"] == definitions_before
    assert len(views_after) == len(definitions_before) + 1
    # Its four indexes serve the pipeline's queries: none added.
    assert _catalogue(db)["indexes"] == indexes_before
    assert db.rows(
        "SELECT obj_description(to_regclass(:v), 'pg_class') LIKE :m",
        v=f'"{db.app}".token_usage_reconciliation',
        m=VIEW_MARKER + "%",
    ) == [(True,)]
    assert db.rows(
        "SELECT convalidated FROM pg_constraint WHERE conname = :c AND conrelid = to_regclass(:t)",
        c="token_usage_reconciliation_status_check",
        t=db.table,
    ) == [(False,)]
    with pytest.raises(sa.exc.IntegrityError), db.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {db.table} SET reconciliation_status = 'bogus'"))

    state = _catalogue(db)
    out = _run(capsys, "--url", db.url, "--schema", db.app)
    assert "already up to date" in out and "'not found': 3" in out
    assert _catalogue(db) == state

    db.execute(
        f"UPDATE {db.table} SET reconciliation_status = 'pending'"
        " WHERE reconciliation_status = 'not found'"
    )
    out = _run(capsys, "--url", db.url, "--schema", db.app)
    assert "validated constraint token_usage_reconciliation_status_check" in out
    assert "note:" not in out
    assert "already up to date" in _run(capsys, "--url", db.url, "--schema", db.app)
    # The INSTEAD OF trigger came back with its view.
    db.execute(
        f"INSERT INTO {db.view('pending_usage')} (action_type, model_used) VALUES ('x', 'y')"
    )
    assert db.rows(f"SELECT count(*) FROM {db.table} WHERE action_type = 'x'") == [(1,)]


@pytest.mark.parametrize(
    ("exact", "whole"),
    [("0.5", 0), ("1.5", 2), ("2.5", 2), ("2.4999999999", 2), ("2.5000000001", 3),
     ("-0.5", 0), ("-1.5", -2), ("0.0000000001", 0), (None, None)],
)  # fmt: skip
def test_whole_cents_round_half_to_even(pg_engine, exact, whole) -> None:
    with pg_engine.connect() as conn:
        found = conn.execute(
            sa.text(f"SELECT {half_even('CAST(:x AS numeric(20, 10))')}"), {"x": exact}
        ).scalar()
    assert found == whole
    if exact is not None:
        assert Decimal(exact).quantize(Decimal(1), rounding=ROUND_HALF_EVEN) == whole


def test_dry_run_and_print_sql_change_nothing_and_the_file_does_the_migration(
    app_db: AppDatabase, capsys, tmp_path
):
    db = app_db
    state, rows = _catalogue(db), db.view_rows()

    printed = _run(capsys, "--url", db.url, "--schema", db.app, "--dry-run")
    assert _catalogue(db) == state
    assert f"ALTER TABLE {db.table} ALTER COLUMN actual_cost_cents TYPE numeric(20, 10);" in printed
    # Dependents first: the view on the app's view is dropped before it, created after it.
    drops = [m.group(1) for m in re.finditer(r"DROP VIEW (\S+);", printed)]
    creates = [m.group(1) for m in re.finditer(r"CREATE VIEW (\S+) ", printed)]
    app_view, spend = f"{db.app}.token_usage_with_costs", f"{db.analytics}.daily_spend"
    assert sorted(drops) == sorted(creates) and len(drops) == 3
    assert drops.index(spend) < drops.index(app_view)
    assert creates.index(app_view) < creates.index(spend)

    written = _run(capsys, "--url", db.url, "--schema", db.app, "--print-sql", str(tmp_path))
    [path] = tmp_path.glob("*.sql")
    assert str(path) in written and path.name == "recon_pipeline_token_usage.sql"
    assert _catalogue(db) == state

    def sql_only(text: str) -> str:
        return "\n".join(line for line in text.splitlines() if not line.startswith("--"))

    assert sql_only(path.read_text()).strip() == sql_only(printed).strip()
    assert "-- note: " in path.read_text() and "'not found': 3" in path.read_text()
    url = sa.make_url(db.url)
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", str(path),
         "-h", url.host, "-p", str(url.port or 5432), "-U", url.username, url.database],
        check=True,
        capture_output=True,
    )  # fmt: skip
    assert db.cost_type(db.table) == NUMERIC
    assert db.view_rows() == rows
    assert "already up to date" in _run(capsys, "--url", db.url, "--schema", db.app)


def test_an_object_that_needs_a_view_stops_the_migration_before_anything_changes(
    app_db: AppDatabase,
):
    """A function returning a view's rows cannot outlive its DROP (the last one, after two
    other views were dropped): the migration fails, and its transaction undoes all of it."""
    db = app_db
    pending = db.view("pending_usage")
    db.execute(
        f'CREATE FUNCTION "{db.analytics}".pending() RETURNS SETOF {pending}'
        f" LANGUAGE sql AS 'SELECT * FROM {pending}'"
    )
    state, rows = _catalogue(db), db.view_rows()
    with pytest.raises(sa.exc.InternalError, match="other objects depend on it"):
        apply_migration(db.engine, schema=db.app)
    assert _catalogue(db) == state
    assert db.view_rows() == rows


def test_a_view_of_the_pipelines_name_that_it_did_not_create_is_never_replaced(
    app_db: AppDatabase,
):
    db = app_db
    db.execute(f'CREATE VIEW "{db.app}".token_usage_reconciliation AS SELECT id FROM {db.table}')
    state = _catalogue(db)
    with pytest.raises(MigrationError, match="not created by recon-migrate"):
        apply_migration(db.engine, schema=db.app)
    assert _catalogue(db) == state


def _cost_pairs(db: AppDatabase) -> list[tuple[Decimal | int | None, Decimal | None]]:
    return db.rows(
        f"SELECT t.actual_cost_cents, r.actual_cost_cents FROM {db.table} t"
        f' JOIN "{db.output}".reconciled_usage r ON r.usage_id = t.id'
        " WHERE r.usage_date = :d ORDER BY t.id",
        d=LAST_DAY,
    )


@pytest.mark.parametrize("keep_integer_cents", [False, True], ids=["widened", "integer"])
def test_a_day_reconciles_onto_it_through_the_least_privilege_role(
    app_db: AppDatabase, capsys, keep_integer_cents: bool
):
    db, demo = app_db, app_db.demo
    flags = ["--keep-integer-cents"] if keep_integer_cents else []
    _run(capsys, "--url", db.url, "--schema", db.app, *flags)
    db.execute(f"ALTER TABLE {db.table} FORCE ROW LEVEL SECURITY")
    assert db.cost_type(db.table) == ("integer" if keep_integer_cents else NUMERIC)
    resources = demo.resources(url=db.role_url, output_schema=db.output)

    result = demo.run(LAST_DAY, resources=resources)

    assert result.success
    assert all(checks(result).values()), checks(result)
    pairs = _cost_pairs(db)
    assert len(pairs) == len(demo.day_ids(LAST_DAY, with_request_id=False)) > 100
    exact = [r for _, r in pairs if r is not None]
    assert sum(r != r.to_integral_value() for r in exact) > 50  # pico-dollar precision
    if keep_integer_cents:
        # Whole cents, ties to even; reconciled_usage keeps the exact value.
        assert [t for t, _ in pairs] == [
            None if r is None else int(r.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
            for _, r in pairs
        ]
    else:
        assert [t for t, _ in pairs] == [r for _, r in pairs]
    statuses = dict(
        db.rows(
            f"SELECT reconciliation_status, count(*) FROM {db.table}"
            " WHERE created_at >= :d GROUP BY 1",
            d=LAST_DAY,
        )
    )
    assert statuses.get("matched", 0) > 100 and statuses.get("pending", 0) < len(pairs)
    # The app's view answers with the reconciled costs.
    assert db.rows(
        f"SELECT count(*) FROM {db.view('token_usage_with_costs')} v JOIN {db.table} t USING (id)"
        " WHERE v.actual_cost_dollars IS DISTINCT FROM t.actual_cost_cents / 100.0"
    ) == [(0,)]
    assert db.rows(f"SELECT sum(calls) FROM {db.view('daily_spend')}") == db.rows(
        f"SELECT count(*) FROM {db.table}"
    )

    versions = db.rows(f"SELECT id, xmin::text FROM {db.table} ORDER BY id")
    spend = db.view_rows()["daily_spend"]
    again = demo.run(LAST_DAY, resources=resources)
    assert again.success and all(checks(again).values())
    assert db.rows(f"SELECT id, xmin::text FROM {db.table} ORDER BY id") == versions
    assert db.view_rows()["daily_spend"] == spend


# recon-doctor


def _doctor(capsys, *args: str) -> tuple[int, str]:
    code = recon_doctor(list(args))
    captured = capsys.readouterr()
    assert "failed:" not in captured.err, captured.err
    return code, captured.out


def test_recon_doctor_says_what_stops_the_run_and_how_to_fix_it(app_db: AppDatabase, capsys):
    db = app_db
    db.execute(
        f"INSERT INTO {db.table} (action_type, model_used, openai_request_id, created_at)"
        " SELECT CASE WHEN g % 4 = 0 THEN '/api/stream' ELSE '/api/chat' END, 'gpt-4o',"
        " CASE WHEN g % 4 <> 0 THEN 'chatcmpl-new' || g END, now() - g * interval '1 hour'"
        " FROM generate_series(1, 40) g;"
        f" CREATE INDEX app_created_again ON {db.table} (created_at);"
        f" DROP POLICY recon_pipeline_read ON {db.table}"
    )
    state = _catalogue(db)
    as_role = ["--url", db.role_url, "--schema", db.app, "--output-schema", db.output]

    code, out = _doctor(capsys, *as_role)

    assert code == 1
    assert _catalogue(db) == state  # read-only
    assert f"row-level security on {db.table} does not let role {db.role} read" in out
    assert "fix: run deploy/least_privilege.sql for this role, or CREATE POLICY" in out
    assert "actual_cost_cents: integer" in out and "recreating the 3 views" in out
    assert "the connected role sees no row (row-level security)" in out
    assert "the pipeline cannot run: 1 problem(s) to fix" in out
    # The table's owner sees the rows, and checks the pipeline's role all the same.
    as_admin = ["--url", db.url, "--schema", db.app, "--output-schema", db.output]
    code, out = _doctor(capsys, *as_admin, "--role", db.role)
    assert code == 1
    assert f"row-level security on {db.table} does not let role {db.role} read" in out
    assert "'not found': 3" in out and "2 rows with a NULL status" in out
    assert "a day's rows: app_created_again, idx_token_usage_created_at" in out
    assert "pending rows: idx_token_usage_reconciliation_status" in out
    assert "the write-back's join by id: token_usage_pkey" in out
    assert "app_created_again duplicates idx_token_usage_created_at" in out
    assert f'fix: DROP INDEX "{db.app}"."app_created_again";' in out
    assert f"{db.analytics}.daily_spend (owner " in out
    assert "security_invoker=true" in out
    assert "/api/chat: 100.0% of 30 rows carry a request id" in out
    assert "/api/stream: 0.0% of 10 rows carry a request id" in out
    assert "the pipeline cannot run: 1 problem(s) to fix" in out

    db.execute(
        f'CREATE POLICY recon_pipeline_read ON {db.table} FOR SELECT TO "{db.role}" USING (true)'
    )
    code, out = _doctor(capsys, *as_role)
    assert code == 0, out
    assert f"role {db.role}" not in out.split("access")[0]
    assert "row-level security enabled; " in out
    assert "the pipeline can run" in out
    # An administrator checks the pipeline's role the same way.
    code, admin_out = _doctor(capsys, *as_admin, "--role", db.role)
    assert code == 0
    assert admin_out.split("\n", 1)[1] == out.split("\n", 1)[1]

    _run(capsys, "--url", db.url, "--schema", db.app)
    code, out = _doctor(capsys, *as_role)
    assert code == 0
    assert "actual_cost_cents: numeric(20,10)" in out

    db.execute(f'REVOKE UPDATE (reconciled_at) ON {db.table} FROM "{db.role}"')
    code, out = _doctor(capsys, *as_role)
    assert code == 1
    assert f"fail  {db.role}: UPDATE (reconciled_at) on {db.table}" in out
    assert "GRANT UPDATE (actual_cost_cents, reconciled_at, reconciliation_status) ON" in out

    # Without an index on id the write-back cannot join a part by key: a warning, and the fix.
    db.execute(f"ALTER TABLE {db.table} DROP CONSTRAINT token_usage_pkey")
    code, out = _doctor(capsys, *as_admin)
    assert "no index on id (the table's primary key should be one)" in out
    assert f"fix: ALTER TABLE {db.table} ADD PRIMARY KEY (id);" in out
