"""`benchmarks.cpu_ledger` charges PostgreSQL's CPU to the statement each process was
running, and this process's to the Python process: a statement kept busy in the block is
found under its role, with at least the CPU it took."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from benchmarks.bench_database import conninfo
from benchmarks.cpu_ledger import _process_cpu_s, measured, role
from recon_pipeline.io.dialect_postgres import epoch_us, record_hash_sql


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            'WITH changed AS (UPDATE "s"."token_usage" SET reconciliation_status = CASE'
            " WHEN true THEN 'x' END FROM r WHERE true RETURNING 1) SELECT count(*) FROM changed",
            "UPDATE token_usage",
        ),
        ("UPDATE s.token_usage_floor AS t SET actual_cost_cents = 1", "UPDATE token_usage_floor"),
        (
            'COPY "s".reconciled_usage ("usage_date", "usage_id") FROM STDIN (FORMAT csv)',
            "COPY into reconciled_usage",
        ),
        ("copy pg_temp.recon_write_back(usage_id) from stdin", "COPY into recon_write_back"),
        ("COPY (SELECT id FROM s.token_usage) TO STDOUT (FORMAT binary)", "COPY out (reads)"),
        ('ANALYZE "s"."reconciled_usage"', "ANALYZE"),
        ("  select count(*) from s.t", "SELECT from t"),
        (
            "SELECT count(*)::text FROM (SELECT hashtext(id::text) AS x"
            ' FROM "s"."token_usage" WHERE true) AS v',
            "SELECT from token_usage",
        ),
        ("SELECT 1", "other SELECT statements"),
        (  # the pipeline's own SQL: FROM inside extract() and IS DISTINCT FROM name no table
            f"SELECT sum({record_hash_sql('r')}), max({epoch_us('r.created_at')})"
            ' FROM "s".openai_requests AS r WHERE r.model IS DISTINCT FROM r.service_tier',
            "SELECT from openai_requests",
        ),
    ],
)
def test_each_running_statement_has_its_role(query: str, expected: str) -> None:
    assert role(query, "active", "client backend") == expected


@pytest.mark.parametrize(
    ("query", "state", "kind", "expected"),
    [
        ("SELECT 1", "idle in transaction", "client backend", "between statements"),
        ("SELECT sum(x) FROM t", "active", "parallel worker", "parallel worker"),
        ("", "", "walwriter", "walwriter"),
    ],
)
def test_a_process_not_running_a_statement_has_its_own_role(
    query: str, state: str, kind: str, expected: str
) -> None:
    assert role(query, state, kind) == expected


def test_the_cpu_of_a_busy_statement_and_of_python_is_charged_to_each(
    pg_url: str, tmp_path: Path
) -> None:
    spin = (
        "DO $$ DECLARE t timestamptz := clock_timestamp(); BEGIN"
        " WHILE clock_timestamp() < t + interval '1 second' LOOP END LOOP; END $$"
    )
    with psycopg.connect(conninfo(pg_url), autocommit=True) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        with measured(pg_url, tmp_path, "busy") as ledger:
            spent = _process_cpu_s(backend)
            conn.execute(spin)  # a second of wall time spent busy by the backend
            spent = _process_cpu_s(backend) - spent
            end = time.process_time() + 0.5
            while time.process_time() < end:
                pass
    # Charged once, to its statement: within a sample's worth of what /proc says it used.
    assert spent > 0.3
    assert ledger["roles"]["other DO statements"] == pytest.approx(spent, abs=0.15)
    assert ledger["python_s"] >= 0.45  # in clock ticks of 10 ms
    assert ledger["machine_s"] >= ledger["python_s"] + spent - 0.15


def test_parallel_workers_are_charged_to_their_leaders_statement(
    pg_url: str, pg_schema: tuple[sa.Engine, str], tmp_path: Path
) -> None:
    _, schema = pg_schema
    table = f'"{schema}".spread'
    with psycopg.connect(conninfo(pg_url), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} AS SELECT g AS x FROM generate_series(1, 3000000) g")
        for setting in (
            "parallel_setup_cost",
            "parallel_tuple_cost",
            "min_parallel_table_scan_size",
        ):
            conn.execute(f"SET {setting} = 0")
        conn.execute("SET max_parallel_workers_per_gather = 2")
        with measured(pg_url, tmp_path, "parallel") as ledger:
            started = time.monotonic()
            while time.monotonic() < started + 1.5:
                conn.execute(f"SELECT sum(hashtext(x::text)) FROM {table}").fetchone()
    assert ledger["roles"].get("SELECT from spread (parallel workers)", 0.0) > 0.1
    assert ledger["roles"].get("SELECT from spread", 0.0) > 0.1
    assert "parallel worker" not in ledger["roles"]


def test_a_sampler_that_cannot_start_is_an_error(tmp_path: Path) -> None:
    nowhere = "postgresql://postgres@127.0.0.1:1/none"
    with (
        pytest.raises(RuntimeError, match="did not start"),
        measured(nowhere, tmp_path, "nowhere"),
    ):
        pass
