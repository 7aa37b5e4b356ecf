"""The application's own BEFORE UPDATE trigger on token_usage has the last word on what is
stored. A row it keeps from the write-back is reported, never counted as written back, and
the day is not recorded as done, so a re-run looks again."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pytest

from recon_pipeline.io.migrations import main as recon_migrate
from recon_pipeline_tests.app_database import AppDatabase, app_database
from recon_pipeline_tests.runs import LAST_DAY, checks

AGREES = "token_usage_agrees_with_results"


@pytest.fixture
def app_db(pg_engine, pg_url, tmp_path) -> Iterator[AppDatabase]:
    with app_database(pg_engine, pg_url, tmp_path / "exports") as database:
        yield database


def _agreement(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    [found] = [e for e in result.get_asset_check_evaluations() if e.check_name == AGREES]
    return found


def _disagreeing_by_sql(db: AppDatabase) -> int:
    [(count,)] = db.rows(
        f'SELECT count(*) FROM "{db.output}".reconciled_usage r JOIN {db.table} t'
        " ON t.id = r.usage_id WHERE r.usage_date = :d"
        " AND (t.actual_cost_cents IS DISTINCT FROM r.actual_cost_cents"
        " OR t.reconciliation_status IS DISTINCT FROM r.reconciliation_status)",
        d=LAST_DAY,
    )
    return int(count)


def test_rows_an_app_trigger_keeps_from_the_write_back_fail_the_agreement_check(
    app_db: AppDatabase, capsys
) -> None:
    db, demo = app_db, app_db.demo
    assert recon_migrate(["--url", db.url, "--schema", db.app]) == 0
    capsys.readouterr()
    frozen = demo.day_ids(LAST_DAY)[:3]
    script = (
        f'CREATE FUNCTION "{db.app}".keep_frozen() RETURNS trigger LANGUAGE plpgsql AS'
        f" $$BEGIN IF OLD.id IN ({', '.join(repr(str(i)) for i in frozen)})"
        " THEN RETURN NULL; END IF; RETURN NEW; END$$;"
        f' ALTER FUNCTION "{db.app}".keep_frozen() OWNER TO "{db.owner}";'
        f" CREATE TRIGGER keep_frozen BEFORE UPDATE ON {db.table}"
        f' FOR EACH ROW EXECUTE FUNCTION "{db.app}".keep_frozen()'
    )
    with db.engine.begin() as conn:  # one script: the trigger's body holds semicolons
        conn.execution_options(no_parameters=True).exec_driver_sql(script)
    resources = demo.resources(url=db.role_url, output_schema=db.output)

    first = demo.run(LAST_DAY, resources=resources, raise_on_error=False)

    kept = _disagreeing_by_sql(db)
    assert kept == 3  # each frozen row has a result the trigger kept from token_usage
    assert not checks(first)[AGREES]
    assert _agreement(first).severity == dg.AssetCheckSeverity.ERROR
    assert _agreement(first).metadata["rows_disagreeing"].value == kept

    again = demo.run(LAST_DAY, resources=resources, raise_on_error=False)

    # Not recorded as done: the re-run reconciles the day again and reports the same rows.
    assert _agreement(again).metadata["rows_disagreeing"].value == kept
    assert not checks(again)[AGREES]
