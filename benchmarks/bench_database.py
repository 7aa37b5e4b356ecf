"""The benchmark's PostgreSQL: fresh schemas, COPY in, vacuum and checkpoint between runs."""

from __future__ import annotations

import io
from collections.abc import Iterable

import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa

from recon_pipeline.io.migrations import create_demo_token_usage


def conninfo(url: str) -> str:
    """A libpq connection string from a SQLAlchemy URL."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def copy_in(conn: psycopg.Connection, table: str, data: pa.Table, chunk: int = 1 << 22) -> None:
    """COPY an Arrow table into `table` (CSV; NULL is an unquoted empty field)."""
    buffer = io.BytesIO()
    pa_csv.write_csv(data, buffer, pa_csv.WriteOptions(quoting_style="needed"))
    view = buffer.getbuffer()
    columns = ", ".join(f'"{c}"' for c in data.column_names)
    with (
        conn.cursor() as cursor,
        cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT csv, HEADER true)") as copy,
    ):
        for start in range(0, len(view), chunk):
            copy.write(view[start : start + chunk])
    del view


def fresh_schema(url: str, schema: str) -> sa.Engine:
    """Drop and create `schema`, create the migrated `token_usage` in it, return an engine."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    create_demo_token_usage(engine, schema=schema)
    return engine


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# The floor's per-request results, replaced per day as the pipeline's result tables are.
FLOOR_RESULTS_DDL = """
CREATE TABLE {table} (usage_date date NOT NULL, id bigint NOT NULL, actual_pico bigint,
    status text NOT NULL);
CREATE INDEX ON {table} (usage_date);
"""
OPENAI_SOURCE_DDL = """
CREATE TABLE {table} (
    request_id text PRIMARY KEY,
    created_at timestamptz NOT NULL,
    model text NOT NULL,
    service_tier text NOT NULL,
    batch boolean NOT NULL,
    input_tokens bigint NOT NULL,
    cached_input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    reasoning_tokens bigint NOT NULL,
    input_audio_tokens bigint NOT NULL,
    output_audio_tokens bigint NOT NULL,
    audio_ms bigint NOT NULL
);
CREATE INDEX ON {table} (created_at);
"""


def vacuum(url: str, tables: Iterable[str]) -> None:
    """VACUUM (ANALYZE) then CHECKPOINT, so a measurement inherits no dirty pages or hint-bit
    writes from the load before it."""
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        for table in tables:
            conn.execute(f"VACUUM (ANALYZE) {table}")
        conn.execute("CHECKPOINT")


def checkpoint(url: str) -> None:
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute("CHECKPOINT")
