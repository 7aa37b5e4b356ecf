"""Hostile configuration and least privilege, on real PostgreSQL.

- Table and schema names are validated identifiers: an injection through them is refused
  before the pipeline opens a connection, through the resource and through the environment
  that `recon_pipeline.definitions` reads.
- `deploy/least_privilege.sql` makes a role that runs the whole pipeline and can write
  nothing of `token_usage` but its three reconciliation columns.
- Database passwords and OpenAI keys appear in no error, log line, metadata value, run tag
  or run config, even when the server is unreachable, the URL does not parse, or OpenAI's
  error message echoes the key.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import psycopg
import pytest
import sqlalchemy as sa
from dagster._serdes import serialize_value
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from recon_pipeline.core import schema as s
from recon_pipeline.definitions import build_definitions
from recon_pipeline.defs import resources as resources_module
from recon_pipeline.defs.resources import ReconDatabase, resources_from_env
from recon_pipeline.demo_data import generate_demo_data
from recon_pipeline.io.database import Database, DatabaseConnectionError, connect_engine
from recon_pipeline.io.identifiers import InvalidIdentifierError
from recon_pipeline.io.migrations import create_demo_token_usage
from recon_pipeline.io.migrations import main as recon_migrate
from recon_pipeline.io.secrets import masked_url
from recon_pipeline_tests.runs import (
    LAST_DAY,
    QUIET,
    SmallDemo,
    checks,
    load_code_location,
    step_failure,
)

SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "least_privilege.sql"
WRITTEN = ("actual_cost_cents", "reconciled_at", "reconciliation_status")
PASSWORD = "Pw-9f3Kq-SECRET"
API_KEY = "sk-proj-SECRETapikey1234567890"
ADMIN_KEY = "sk-admin-SECRETadminkey0987654321"
RECON_ENV = (
    "RECON_DATABASE_URL",
    "RECON_USAGE_TABLE",
    "RECON_USAGE_SCHEMA",
    "RECON_OUTPUT_SCHEMA",
    "RECON_USAGE_EXPORT_DIR",
    "RECON_OPENAI_SOURCE",
    "OPENAI_API_KEY",
    "OPENAI_ADMIN_KEY",
    "OPENAI_BASE_URL",
)


@pytest.fixture
def clean_env(monkeypatch) -> pytest.MonkeyPatch:
    for name in RECON_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# -- hostile names ---------------------------------------------------------------------------


def _hostile(schema: str) -> dict[str, str]:
    return {
        "usage_table": f'token_usage; DROP TABLE "{schema}".sentinel; --',
        "usage_schema": f'{schema}"; DROP TABLE "{schema}".sentinel; --',
        "output_schema": f'{schema}".sentinel; DROP TABLE "{schema}".sentinel',
    }


@pytest.mark.parametrize("field", ["usage_table", "usage_schema", "output_schema"])
def test_an_injection_through_a_configured_name_is_refused_before_any_connection(
    demo: SmallDemo, monkeypatch, field: str
) -> None:
    with demo.engine.begin() as conn:
        conn.execute(sa.text(f'CREATE TABLE "{demo.schema}".sentinel (n int)'))
    tables_before = demo.rows(
        "SELECT tablename FROM pg_tables WHERE schemaname = :s ORDER BY 1", s=demo.schema
    )
    usage_before = demo.token_usage()
    opened: list[str] = []
    real = resources_module.connect_engine
    monkeypatch.setattr(
        resources_module,
        "connect_engine",
        lambda *args, **kwargs: opened.append("engine") or real(*args, **kwargs),
    )

    result = demo.run(LAST_DAY, resources=demo.resources(**{field: _hostile(demo.schema)[field]}))

    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures
    for failure in failures:
        error = failure.step_failure_data.error
        text = error.message + (error.cause.message if error.cause else "")
        assert "InvalidIdentifierError" in text and "is not a plain SQL identifier" in text
    assert opened == []  # refused before an engine existed, so before any SQL
    assert (
        demo.rows("SELECT tablename FROM pg_tables WHERE schemaname = :s ORDER BY 1", s=demo.schema)
        == tables_before
    )
    assert demo.token_usage() == usage_before


@pytest.mark.parametrize(
    "variable", ["RECON_USAGE_TABLE", "RECON_USAGE_SCHEMA", "RECON_OUTPUT_SCHEMA"]
)
def test_an_injection_through_the_environment_stops_the_definitions_loading(
    clean_env, variable: str
) -> None:
    clean_env.setenv(variable, "token_usage; DROP TABLE x")
    with pytest.raises(InvalidIdentifierError, match=variable):
        resources_from_env()
    clean_env.setenv(variable, "token_usage_2")  # a plain name is fine
    assert resources_from_env()["database"]


def test_the_code_location_refuses_to_load_with_a_hostile_table_name(clean_env) -> None:
    """What `dagster dev -w workspace.yaml` imports: the module fails, naming the variable."""
    done = load_code_location(RECON_USAGE_TABLE='token_usage"; DROP TABLE x; --')
    assert done.returncode != 0
    assert "InvalidIdentifierError: RECON_USAGE_TABLE: table name" in done.stderr


# -- least privilege -------------------------------------------------------------------------


def psql_statements(path: Path, variables: dict[str, str]) -> list[str]:
    """A psql script's statements with its :"name" variables substituted as psql does."""
    lines = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith(("--", "\\"))
    ]

    def identifier(match: re.Match) -> str:
        return '"' + variables[match.group(1)].replace('"', '""') + '"'

    body = re.sub(r':"(\w+)"', identifier, "\n".join(lines))
    assert not re.search(r":['\"]?\w", body), "a variable was left unsubstituted"
    return [statement.strip() for statement in body.split(";") if statement.strip()]


@dataclass
class Restricted:
    role: str
    url: str
    app: str
    output: str
    demo: SmallDemo


@pytest.fixture
def restricted(pg_engine, pg_url, tmp_path) -> Iterator[Restricted]:
    suffix = uuid.uuid4().hex[:10]
    role, app, output = f"recon_lp_{suffix}", f"t_app_{suffix}", f"t_out_{suffix}"
    database = sa.make_url(pg_url).database
    with pg_engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{app}"'))
        # Something else in the application's schema the role must not reach.
        conn.execute(sa.text(f'CREATE TABLE "{app}".billing_secrets (card text)'))
    try:
        create_demo_token_usage(pg_engine, schema=app)
        summary = generate_demo_data(
            pg_engine, tmp_path / "exports", last_day=LAST_DAY, days=2, schema=app
        )
        statements = psql_statements(
            SCRIPT,
            {
                "role": role,
                "database": database,
                "usage_schema": app,
                "usage_table": "token_usage",
                "output_schema": output,
            },
        )
        with pg_engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
            # As Supabase advises for every exposed table; forced, so even an owner is bound.
            conn.execute(
                sa.text(
                    f'ALTER TABLE "{app}".token_usage ENABLE ROW LEVEL SECURITY,'
                    " FORCE ROW LEVEL SECURITY"
                )
            )
        url = sa.make_url(pg_url).set(username=role, password=None)
        demo = SmallDemo(pg_engine, pg_url, app, tmp_path / "exports", summary)
        yield Restricted(role, url.render_as_string(hide_password=False), app, output, demo)
    finally:
        with pg_engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{output}" CASCADE'))
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{app}" CASCADE'))
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}
            ).first()
            if exists:
                conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
                conn.execute(sa.text(f'DROP ROLE "{role}"'))


def test_the_least_privilege_role_runs_the_whole_pipeline(restricted: Restricted) -> None:
    demo, days = restricted.demo, restricted.demo.days
    [(superuser, createdb, createrole)] = demo.rows(
        "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = :r",
        r=restricted.role,
    )
    assert not (superuser or createdb or createrole)
    before = demo.token_usage()

    resources = demo.resources(url=restricted.url, output_schema=restricted.output)
    result = demo.run(days[0], days[-1], resources=resources)

    assert result.success
    assert all(checks(result).values())
    # The analyst tables are the role's, in the output schema; nothing new beside token_usage.
    owners = demo.rows(
        "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = :s", s=restricted.output
    )
    assert {r.tablename for r in owners} >= {"reconciled_usage", "daily_variance_summary"}
    assert {r.tableowner for r in owners} == {restricted.role}
    app_tables = demo.rows("SELECT tablename FROM pg_tables WHERE schemaname = :s", s=demo.schema)
    assert sorted(r.tablename for r in app_tables) == ["billing_secrets", "token_usage"]
    # Written back: the three columns, and nothing else of any row.
    after = demo.token_usage()
    assert len(after) == len(before) == demo.summary.rows_logged
    assert sum(r.reconciliation_status != s.PENDING for r in after) > 100
    keep = [c for c in before[0]._fields if c not in WRITTEN]
    assert [tuple(getattr(r, c) for c in keep) for r in after] == [
        tuple(getattr(r, c) for c in keep) for r in before
    ]
    as_admin = Database(demo.engine, usage_schema=demo.schema, output_schema=restricted.output)
    assert all(as_admin.count_disagreeing(day) == 0 for day in days)


def test_row_level_security_without_the_policies_fails_the_run(restricted: Restricted) -> None:
    """Without the script's policies RLS would show the role no row: the run fails, naming
    the table, the role and the fix, instead of reporting an empty day."""
    demo = restricted.demo
    with demo.engine.begin() as conn:
        for policy in ("recon_pipeline_read", "recon_pipeline_write"):
            conn.execute(sa.text(f'DROP POLICY {policy} ON "{demo.schema}".token_usage'))
    before = demo.token_usage()
    resources = demo.resources(url=restricted.url, output_schema=restricted.output)

    result = demo.run(demo.days[-1], resources=resources)

    assert not result.success
    _, text = step_failure(result)
    assert "RowSecurityError" in text
    assert f'"{demo.schema}"."token_usage"' in text
    assert f"role {restricted.role}" in text
    assert "deploy/least_privilege.sql" in text and "CREATE POLICY recon_pipeline_read" in text
    assert demo.token_usage() == before
    # With only the read policy, every row would stay pending: refused all the same.
    with demo.engine.begin() as conn:
        conn.execute(
            sa.text(
                f'CREATE POLICY recon_pipeline_read ON "{demo.schema}".token_usage'
                f' FOR SELECT TO "{restricted.role}" USING (true)'
            )
        )
    result = demo.run(demo.days[-1], resources=resources)
    assert not result.success
    assert "does not let role" in step_failure(result)[1]
    assert "update every row" in step_failure(result)[1]
    assert demo.token_usage() == before


def test_the_least_privilege_role_cannot_write_anything_else(restricted: Restricted) -> None:
    demo = restricted.demo
    table = f'"{demo.schema}".token_usage'
    columns = [c for c in demo.token_usage()[0]._fields]
    others = [c for c in columns if c not in WRITTEN]
    assert len(others) >= 12
    [(row_id,)] = demo.rows("SELECT min(id) FROM {s}.token_usage")
    before = demo.token_usage()
    refused = [
        f"UPDATE {table} SET {c} = {'DEFAULT' if c == 'id' else c} WHERE id = {row_id}"
        for c in others
    ]
    refused += [
        f"UPDATE {table} SET input_tokens = 1, reconciliation_status = 'matched'",
        f"INSERT INTO {table} (action_type, model_used, input_tokens, output_tokens,"
        " created_at) VALUES ('x', 'y', 1, 1, now())",
        f"DELETE FROM {table} WHERE id = {row_id}",
        f"TRUNCATE {table}",
        f"ALTER TABLE {table} ADD COLUMN evil text",
        f'CREATE TABLE "{demo.schema}".evil (n int)',
        f'SELECT * FROM "{demo.schema}".billing_secrets',
        f'CREATE SCHEMA "evil_{restricted.role}"',
    ]
    engine = sa.create_engine(restricted.url)
    try:
        for statement in refused:
            with engine.connect() as conn:
                with pytest.raises(sa.exc.ProgrammingError) as caught:
                    conn.execute(sa.text(statement))
                assert isinstance(caught.value.orig, psycopg.errors.InsufficientPrivilege), (
                    statement
                )
        # The three columns are exactly what it may write.
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    f"UPDATE {table} SET actual_cost_cents = actual_cost_cents,"
                    " reconciled_at = reconciled_at,"
                    f" reconciliation_status = reconciliation_status WHERE id = {row_id}"
                )
            )
    finally:
        engine.dispose()
    assert demo.token_usage() == before


# -- secrets ---------------------------------------------------------------------------------


def _everything_recorded(
    instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult, captured: str
) -> str:
    """All a run leaves behind: every event-log entry (messages, metadata, errors and their
    stacks), the run record with its tags and config, and what was printed."""
    run = instance.get_run_by_id(result.run_id)
    parts = [serialize_value(entry) for entry in instance.all_logs(result.run_id)]
    parts += [serialize_value(run), json.dumps(run.tags), json.dumps(run.run_config), captured]
    for event in result.all_events:
        parts.append(serialize_value(event))
    return "\n".join(parts)


def _run_from_env(instance: dg.DagsterInstance, day) -> dg.ExecuteInProcessResult:
    job = build_definitions(resources_from_env()).resolve_job_def("daily_reconciliation")
    return job.execute_in_process(
        partition_key=day.isoformat(), run_config=QUIET, raise_on_error=False, instance=instance
    )


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    texts = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            error = event.step_failure_data.error
            while error is not None:
                texts.append(error.message)
                error = error.cause
    return "\n".join(texts)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql+psycopg://recon:{PASSWORD}@127.0.0.1:1/test",
            "cannot connect to postgresql+psycopg://recon:***@127.0.0.1:1/test",
        ),
        (
            f"postgresql+psycopg://recon:{quote(PASSWORD + '@/:')}@127.0.0.1:1/test",
            "cannot connect to postgresql+psycopg://recon:***@127.0.0.1:1/test",
        ),
        (
            f"postgresql+psycopg://recon:{PASSWORD}@127.0.0.1:notaport/test",
            "the database URL is not a valid SQLAlchemy URL (its value is not shown)",
        ),
    ],
    ids=["unreachable", "url-encoded", "unparseable"],
)
def test_a_failed_connection_never_shows_the_password(
    clean_env, capfd, tmp_path, url: str, shown: str
) -> None:
    clean_env.setenv("RECON_DATABASE_URL", url)
    clean_env.setenv("RECON_USAGE_EXPORT_DIR", str(tmp_path))
    with dg.DagsterInstance.ephemeral() as instance:
        result = _run_from_env(instance, LAST_DAY)
        assert not result.success
        assert shown in _failure_text(result)
        recorded = _everything_recorded(instance, result, "".join(capfd.readouterr()))
    assert shown in recorded  # the error is recorded, with the URL masked...
    for secret in (PASSWORD, quote(PASSWORD), quote(PASSWORD + "@/:")):
        assert secret not in recorded  # ...and nothing carries the password


def test_keys_and_password_stay_out_of_a_run_even_when_openai_echoes_them(
    demo: SmallDemo, clean_env, capfd
) -> None:
    """A successful run (metadata, logs) with a password in the URL, then one against an
    OpenAI that answers 401 quoting the key it was sent."""
    url = sa.make_url(demo.url).set(password=PASSWORD).render_as_string(hide_password=False)
    clean_env.setenv("RECON_DATABASE_URL", url)  # trust auth: the server ignores it
    clean_env.setenv("RECON_USAGE_SCHEMA", demo.schema)
    clean_env.setenv("RECON_USAGE_EXPORT_DIR", str(demo.exports))
    with dg.DagsterInstance.ephemeral() as instance:
        result = _run_from_env(instance, LAST_DAY)
        assert result.success
        assert result.get_asset_materialization_events()
        recorded = _everything_recorded(instance, result, "".join(capfd.readouterr()))
    assert "dagster/row_count" in recorded and PASSWORD not in recorded

    def echo(request: Request) -> Response:
        sent = request.headers.get("Authorization", "")
        body = {"error": {"message": f"Incorrect API key provided: {sent}", "type": "auth"}}
        return Response(json.dumps(body), status=401, content_type="application/json")

    server = HTTPServer(host="127.0.0.1", port=0)
    server.expect_request(re.compile(".*")).respond_with_handler(echo)
    server.start()
    try:
        clean_env.setenv("OPENAI_BASE_URL", server.url_for("/v1"))
        clean_env.setenv("OPENAI_API_KEY", API_KEY)
        clean_env.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
        with dg.DagsterInstance.ephemeral() as instance:
            result = _run_from_env(instance, LAST_DAY)
            assert not result.success
            failure = _failure_text(result)
            assert "401" in failure
            recorded = _everything_recorded(instance, result, "".join(capfd.readouterr()))
        assert server.log  # the keys were really sent, and really echoed
    finally:
        server.stop()
    for secret in (PASSWORD, API_KEY, ADMIN_KEY):
        assert secret not in recorded


# A password in the URL's query string (libpq's password, sslpassword, passfile) is masked
# like the one in `user:pw@`.

QUERY_PASSWORD = "S3cretQ"


def _query_password_url(pg_url: str, **changes) -> str:
    url = sa.make_url(pg_url).set(**changes)
    url = url.update_query_dict({"password": QUERY_PASSWORD, "sslpassword": "SslS3cretQ"})
    return url.render_as_string(hide_password=False)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg://u:pw1@h/db?password=S3cretQ&sslpassword=S3cretQ&app=x",
            "postgresql+psycopg://u:***@h/db?app=x&password=***&sslpassword=***",
        ),
        (
            "postgresql://u@h:notaport/db?passfile=/S3cretQ&PASSWORD=S3cretQ",
            "postgresql://u@h:notaport/db?passfile=***&PASSWORD=***",
        ),
        ("postgresql://u:S3cretQ@h:notaport/db", "postgresql://u:***@h:notaport/db"),
    ],
    ids=["parsed", "unparseable-query", "unparseable-authority"],
)
def test_masked_url_masks_authority_and_query_passwords(url: str, shown: str) -> None:
    assert masked_url(url) == shown
    assert QUERY_PASSWORD not in masked_url(url)


def test_a_query_password_is_masked_in_a_connection_error(pg_url) -> None:
    url = _query_password_url(pg_url, port=1)
    with pytest.raises(DatabaseConnectionError) as caught:
        connect_engine(url)
    assert "password=***" in str(caught.value)
    assert QUERY_PASSWORD not in str(caught.value)


def test_a_query_password_is_masked_in_the_resource_repr(pg_url) -> None:
    for url in (_query_password_url(pg_url), _query_password_url(pg_url) + ":bad:port"):
        resource = ReconDatabase(url=url)
        for text in (repr(resource), str(resource)):
            assert QUERY_PASSWORD not in text
            assert "password=***" in text


def test_recon_migrate_masks_a_query_password(pg_schema, pg_url, capsys) -> None:
    engine, schema = pg_schema
    create_demo_token_usage(engine, schema=schema)
    url = _query_password_url(pg_url)
    assert recon_migrate(["--url", url, "--schema", schema]) == 0  # trust auth ignores it
    assert recon_migrate(["--url", url, "--schema", schema, "--table", "absent"]) == 1
    unreachable = _query_password_url(pg_url, port=1)
    assert recon_migrate(["--url", unreachable, "--schema", schema]) == 1
    captured = capsys.readouterr()
    assert "password=***" in captured.out
    assert QUERY_PASSWORD not in captured.out + captured.err
