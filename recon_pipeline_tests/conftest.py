"""Fixtures shared by the test modules. Databases are real: PostgreSQL and SQLite files."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from pytest_httpserver import HTTPServer

from recon_pipeline_tests.openai_server import FakeOpenAI

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The test database's URL; RECON_TEST_POSTGRES_URL overrides the local default."""
    return os.environ.get("RECON_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[sa.Engine]:
    """One engine for the session. An unreachable server is an error, never a skip."""
    engine = sa.create_engine(pg_url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        problem = None
    except sa.exc.OperationalError as exc:
        problem = str(exc.orig).strip().splitlines()[0]
    if problem is not None:
        engine.dispose()
        shown = sa.make_url(pg_url).render_as_string(hide_password=True)
        pytest.fail(
            f"PostgreSQL is unreachable at {shown}: {problem}\nStart it "
            "(pg_ctlcluster --skip-systemctl-redirect <version> main start) or point "
            "RECON_TEST_POSTGRES_URL at a server.",
            pytrace=False,
        )
    yield engine
    engine.dispose()


@contextmanager
def _fresh_schema(engine: sa.Engine, prefix: str) -> Iterator[tuple[sa.Engine, str]]:
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield engine, schema
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_schema(pg_engine: sa.Engine) -> Iterator[tuple[sa.Engine, str]]:
    """A fresh schema per test, dropped with everything in it afterwards."""
    with _fresh_schema(pg_engine, "t") as fresh:
        yield fresh


@pytest.fixture
def sqlite_engine(tmp_path) -> Iterator[sa.Engine]:
    """An empty SQLite database in a file, as the embedded demo uses."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'recon.db'}")
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def pg_module_schema(pg_engine: sa.Engine) -> Iterator[tuple[sa.Engine, str]]:
    """Like `pg_schema`, shared by the tests of one module (for one expensive setup)."""
    with _fresh_schema(pg_engine, "m") as fresh:
        yield fresh


@pytest.fixture(scope="session")
def pg_session_schema(pg_engine: sa.Engine) -> Iterator[tuple[sa.Engine, str]]:
    """Like `pg_module_schema`, shared by the tests of several modules (the UI's one stack)."""
    with _fresh_schema(pg_engine, "s") as fresh:
        yield fresh


@pytest.fixture(scope="module")
def server() -> Iterator[HTTPServer]:
    """A real HTTP server on 127.0.0.1 for the fake OpenAI (pytest-httpserver)."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fake(server: HTTPServer) -> Iterator[FakeOpenAI]:
    """A fake OpenAI on the module's server, serving nothing until the test fills it; a module
    whose fake serves a scenario of its own declares its own `fake`."""
    fake = FakeOpenAI(server)
    yield fake
    fake.close()
    server.check_handler_errors()


@pytest.fixture
def demo(pg_schema, pg_url, tmp_path):
    """Three days of the demo's data in a fresh PostgreSQL schema (`runs.SmallDemo`)."""
    from recon_pipeline_tests.runs import make_small_demo  # Dagster only where it is used

    return make_small_demo(pg_schema, pg_url, tmp_path / "exports")


@pytest.fixture
def own_demo(pg_schema, pg_url, tmp_path):
    """The demo's fortnight in a fresh PostgreSQL schema (`assets_demo.Demo`), for a test that
    changes data."""
    from recon_pipeline_tests.assets_demo import make_demo  # Dagster only where it is used

    engine, schema = pg_schema
    return make_demo(engine, pg_url, schema, tmp_path / "exports")


@pytest.fixture(scope="session")
def stack(pg_engine, pg_session_schema, pg_url, tmp_path_factory):
    """The Dagster webserver and daemon of test_ui_backfills.py and test_ui_pages.py, with the
    backfill of every demo day launched (`ui_stack.running_stack`). Session-scoped so that the
    two modules share one: it takes minutes to start and backfill. It stops at the session's
    end, not at the last UI test."""
    from recon_pipeline_tests.ui_stack import running_stack

    yield from running_stack(pg_engine, pg_session_schema, pg_url, tmp_path_factory)


@pytest.fixture(scope="session")
def backfill(stack):
    """The asset graph's backfill of every demo day, finished."""
    from recon_pipeline_tests.ui_stack import _finished

    return _finished(stack, stack.backfill_id)
