"""Shapes of the application's table (`app_database.py`) that pass a check of columns and
privileges yet give wrong results or stop a run: the run, recon-migrate and recon-doctor
must judge them alike, before anything is read or written."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from recon_pipeline.io.doctor import main as recon_doctor
from recon_pipeline.io.doctor_writes import written_values
from recon_pipeline.io.migrations import main as recon_migrate
from recon_pipeline.io.usage_types import wrong_usage_types
from recon_pipeline_tests.app_database import AppDatabase, app_database
from recon_pipeline_tests.runs import LAST_DAY

NAIVE = "created_at is timestamp without time zone, the pipeline needs timestamptz"


@pytest.fixture
def app_db(pg_engine, pg_url, tmp_path) -> Iterator[AppDatabase]:
    with app_database(pg_engine, pg_url, tmp_path / "exports") as database:
        yield database


@pytest.fixture
def migrated(app_db: AppDatabase, capsys) -> AppDatabase:
    assert recon_migrate(["--url", app_db.url, "--schema", app_db.app]) == 0
    capsys.readouterr()
    app_db.execute(f"ALTER TABLE {app_db.table} FORCE ROW LEVEL SECURITY")
    return app_db


def _doctor(capsys, db: AppDatabase) -> tuple[int, str]:
    """recon-doctor as the table's owner, checking the pipeline's role."""
    args = ["--url", db.url, "--schema", db.app, "--output-schema", db.output, "--role", db.role]
    code = recon_doctor(args)
    captured = capsys.readouterr()
    assert "failed:" not in captured.err, captured.err
    return code, captured.out


def _output_rows(db: AppDatabase) -> int:
    tables = db.rows("SELECT tablename FROM pg_tables WHERE schemaname = :s", s=db.output)
    return sum(db.rows(f'SELECT count(*) FROM "{db.output}"."{t}"')[0][0] for (t,) in tables)


def test_a_created_at_without_time_zone_is_refused_by_the_run_the_migration_and_the_doctor(
    app_db: AppDatabase, capsys
):
    db = app_db
    db.execute(
        f'DROP VIEW "{db.analytics}".daily_spend; DROP VIEW {db.view("token_usage_with_costs")};'
        f" DROP VIEW {db.view('pending_usage')};"
        f" ALTER TABLE {db.table} ALTER COLUMN created_at TYPE timestamp"
        " USING created_at AT TIME ZONE 'UTC';"
        f" ALTER ROLE \"{db.role}\" SET timezone = 'America/New_York'"
    )
    rows = db.rows(f"SELECT *, xmin::text FROM {db.table} ORDER BY id")

    assert recon_migrate(["--url", db.url, "--schema", db.app]) == 1
    err = capsys.readouterr().err
    assert NAIVE in err and "USING created_at AT TIME ZONE 'UTC'" in err
    assert "nothing was changed" in err
    assert db.rows(f"SELECT *, xmin::text FROM {db.table} ORDER BY id") == rows

    code, out = _doctor(capsys, db)
    assert code == 1
    assert f"fail  {NAIVE}" in out

    result = db.demo.run(
        LAST_DAY, resources=db.demo.resources(url=db.role_url, output_schema=db.output)
    )
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures and all(NAIVE in str(e.step_failure_data.error) for e in failures)
    assert db.rows(f"SELECT *, xmin::text FROM {db.table} ORDER BY id") == rows
    assert _output_rows(db) == 0


@pytest.mark.parametrize(
    ("types", "wrong"),
    [
        ({"created_at": "timestamp with time zone", "reconciled_at": "timestamp(3) with time zone",
          "actual_cost_cents": "integer", "reconciliation_status": "character varying(32)"}, []),
        ({"created_at": "timestamp without time zone"}, ["created_at"]),
        ({"reconciled_at": "timestamp without time zone"}, ["reconciled_at"]),
        ({"actual_cost_cents": "double precision"}, ["actual_cost_cents"]),
        ({"actual_cost_cents": "numeric[]", "reconciliation_status": "text[]"},
         ["actual_cost_cents", "reconciliation_status"]),
        ({"reconciliation_status": "app.recon_status"}, ["reconciliation_status"]),
        ({"actual_cost_cents": "numeric", "reconciliation_status": "character varying"}, []),
        ({"actual_cost_cents": "numeric(20,10)"}, []),
        ({"actual_cost_cents": "numeric(10,2)"}, ["actual_cost_cents"]),
        ({"actual_cost_cents": "numeric(12,10)"}, ["actual_cost_cents"]),
        ({"actual_cost_cents": "numeric(10)"}, ["actual_cost_cents"]),
        ({"reconciliation_status": "character varying(8)"}, ["reconciliation_status"]),
    ],
)  # fmt: skip
def test_the_one_rule_of_column_types(types: dict[str, str], wrong: list[str]) -> None:
    assert [w.column for w in wrong_usage_types(types)] == wrong


def test_recon_doctor_tries_the_applications_checks_on_what_the_write_back_writes(
    migrated: AppDatabase, capsys
):
    db = migrated
    db.execute(
        f"ALTER TABLE {db.table} ADD CONSTRAINT app_status_ck CHECK (reconciliation_status IN"
        " ('pending', 'matched', 'discrepancy', 'not found', 'unverifiable')) NOT VALID;"
        f" ALTER TABLE {db.table} ADD CONSTRAINT app_cost_ck"
        " CHECK (actual_cost_cents > 0) NOT VALID;"
        f" ALTER TABLE {db.table} ADD CONSTRAINT app_matched_ck"
        " CHECK (reconciliation_status <> 'matched' OR actual_cost_cents IS NOT NULL)"
    )

    code, out = _doctor(capsys, db)

    assert code == 1
    assert "fail  CHECK app_status_ck (CHECK ((reconciliation_status = ANY" in out
    assert "rejects what the write-back writes: 'not_found'; the run stops" in out
    assert (
        "fail  CHECK app_cost_ck (CHECK ((actual_cost_cents > (0)::numeric)) NOT VALID) rejects"
        " what the write-back writes: 'matched' with cost 0, 'discrepancy' with cost 0;"
    ) in out
    assert f'fix: ALTER TABLE {db.table} DROP CONSTRAINT "app_status_ck";' in out
    # A check the pipeline's writes satisfy is no problem, nor is the pipeline's own.
    assert "ok    CHECK app_matched_ck accepts every status and cost" in out
    assert "ok    CHECK token_usage_reconciliation_status_check accepts every" in out
    assert "the pipeline cannot run: 2 problem(s) to fix" in out
    assert ("not_found", None) in written_values()

    db.execute(
        f"ALTER TABLE {db.table} DROP CONSTRAINT app_status_ck;"
        f" ALTER TABLE {db.table} DROP CONSTRAINT app_cost_ck"
    )
    code, out = _doctor(capsys, db)
    assert code == 0, out


def test_recon_doctor_warns_of_the_triggers_the_write_back_fires(migrated: AppDatabase, capsys):
    db = migrated
    app = f'"{db.app}"'
    with db.engine.begin() as conn:  # one script: the function's body holds semicolons
        conn.exec_driver_sql(
            f"CREATE TABLE {app}.audit_log (row_id uuid, at timestamptz DEFAULT now());"
            f" CREATE FUNCTION {app}.audit() RETURNS trigger LANGUAGE plpgsql AS"
            f" $$BEGIN INSERT INTO {app}.audit_log (row_id) VALUES (NEW.id); RETURN NEW; END$$;"
            f" CREATE TRIGGER audit AFTER UPDATE ON {db.table}"
            f" FOR EACH ROW EXECUTE FUNCTION {app}.audit();"
            f" CREATE TRIGGER audit_users AFTER UPDATE OF user_id ON {db.table}"
            f" FOR EACH ROW EXECUTE FUNCTION {app}.audit();"
            f" CREATE TRIGGER audit_off AFTER UPDATE ON {db.table}"
            f" FOR EACH ROW EXECUTE FUNCTION {app}.audit();"
            f" ALTER TABLE {db.table} DISABLE TRIGGER audit_off"
        )

    code, out = _doctor(capsys, db)

    assert code == 0, out  # a warning: the pipeline cannot know what the trigger does
    assert (
        f"warn  trigger audit (AFTER UPDATE FOR EACH ROW) runs {db.app}.audit() on the"
        f" write-back's UPDATE, as {db.role}; the pipeline cannot know what it does"
    ) in out
    assert f"fix: make sure {db.role} may do what {db.app}.audit() does" in out
    assert "info  trigger audit_users (AFTER UPDATE FOR EACH ROW)" in out
    assert "on UPDATE OF user_id: not the write-back's" in out
    assert "info  trigger audit_off (AFTER UPDATE FOR EACH ROW)" in out
    assert "it is disabled" in out
