"""Reading the application's table: a day of `token_usage` (boundaries, types, exact
money, the optional columns, uuid ids), the days still pending, and the refusal of a table
recon-migrate has not prepared or of names that are not plain identifiers."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal
from unittest.mock import patch

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa

from recon_pipeline.core import schema as s
from recon_pipeline.io import pg_copy
from recon_pipeline.io.database import RECONCILED_USAGE, Database, SchemaNotReadyError
from recon_pipeline.io.identifiers import InvalidIdentifierError
from recon_pipeline.io.migrations import create_demo_token_usage
from recon_pipeline_tests.usage_rows import (
    DAY,
    END,
    START,
    T1,
    US,
    WRITTEN,
    by_id,
    insert_usage,
    pg_db,
    result_frame,
    sqlite_db,
    usage_row,
)

# -- read_logged -----------------------------------------------------------------------------


def _boundary_rows() -> list[dict[str, object]]:
    return [
        usage_row(START - US, openai_request_id="before"),
        usage_row(START, openai_request_id="at-start", calculated_cost_cents=Decimal("0.123456")),
        usage_row(START + timedelta(hours=12), openai_request_id=""),
        usage_row(
            END - US,
            openai_request_id=None,
            calculated_cost_cents=Decimal("123456.654321"),
            cached_input_tokens=512,
            user_id=None,
        ),
        usage_row(END, openai_request_id="at-end"),
        usage_row(
            START + timedelta(hours=13), openai_request_id="no-estimate", calculated_cost_cents=None
        ),
    ]


def _check_boundaries(db: Database, ids: list[str]) -> None:
    frame = db.read_logged(START, END)
    assert list(frame.columns) == list(s.LOGGED_COLUMNS)
    assert {c: str(t) for c, t in frame.dtypes.items()} == s.LOGGED_COLUMNS
    frame = frame.set_index("usage_id", drop=False)
    # The row at exactly `end` and the one a microsecond before `start` are out.
    assert sorted(frame["usage_id"]) == sorted([ids[1], ids[2], ids[3], ids[5]])
    assert all(isinstance(v, str) for v in frame["usage_id"])
    assert frame.loc[ids[1], "calculated_cost_pico"] == 1_234_560_000
    assert frame.loc[ids[3], "calculated_cost_pico"] == 1_234_566_543_210_000
    assert frame.loc[ids[5], "calculated_cost_pico"] is pd.NA
    assert frame.loc[ids[1], "openai_request_id"] == "at-start"
    assert frame.loc[ids[2], "openai_request_id"] is None  # empty string
    assert frame.loc[ids[3], "openai_request_id"] is None  # NULL
    assert frame.loc[ids[3], "user_id"] is None
    assert frame.loc[ids[1], "user_id"] == "user-1"
    assert frame.loc[ids[3], "cached_input_tokens"] == 512
    assert frame.loc[ids[1], "cached_input_tokens"] is pd.NA
    assert frame.loc[ids[1], "created_at"] == pd.Timestamp(START)
    assert frame.loc[ids[3], "created_at"] == pd.Timestamp(END - US)
    assert frame.loc[ids[1], "input_tokens"] == 1000


def test_read_logged_boundaries_types_and_exact_pico_postgres(pg_schema) -> None:
    db = pg_db(pg_schema)
    ids = insert_usage(db, _boundary_rows())
    assert all(i.isdigit() for i in ids)  # bigint identity ids
    _check_boundaries(db, ids)


def test_read_logged_boundaries_types_and_exact_pico_sqlite(sqlite_engine) -> None:
    db = sqlite_db(sqlite_engine)
    ids = insert_usage(db, _boundary_rows())
    _check_boundaries(db, ids)


def test_read_logged_empty_window_is_typed(pg_schema) -> None:
    db = pg_db(pg_schema)
    insert_usage(db, [usage_row(START)])
    frame = db.read_logged(END, END + timedelta(days=1))
    assert frame.empty
    assert {c: str(t) for c, t in frame.dtypes.items()} == s.LOGGED_COLUMNS


def test_read_logged_without_cached_input_tokens_column(pg_schema) -> None:
    engine, schema = pg_schema
    create_demo_token_usage(engine, schema=schema)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f'ALTER TABLE "{schema}".token_usage DROP COLUMN cached_input_tokens CASCADE'
        )
    db = Database(engine, usage_schema=schema)
    row = usage_row(START + timedelta(hours=1), calculated_cost_cents=Decimal("0.000001"))
    del row["cached_input_tokens"]
    [usage_id] = insert_usage(db, [row])
    frame = db.read_logged(START, END)
    assert frame["usage_id"].tolist() == [usage_id]
    assert frame["cached_input_tokens"].isna().all()
    assert str(frame["cached_input_tokens"].dtype) == "Int64"
    assert frame["calculated_cost_pico"].tolist() == [10_000]


def test_read_logged_uuid_ids(pg_schema) -> None:
    engine, schema = pg_schema
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f'CREATE TABLE "{schema}".token_usage (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),'
            " user_id uuid, action_type text NOT NULL, model_used text NOT NULL,"
            " input_tokens integer NOT NULL, output_tokens integer NOT NULL,"
            " calculated_cost_cents numeric(12, 6), created_at timestamptz NOT NULL)"
        )
    from recon_pipeline.io.migrations import apply_migration

    apply_migration(engine, schema=schema)
    db = Database(engine, usage_schema=schema)
    row = usage_row(START + timedelta(hours=2))
    for column in ("cached_input_tokens", "audio_seconds", "system_fingerprint"):
        del row[column]
    row["user_id"] = "00000000-0000-4000-8000-000000000001"
    [usage_id] = insert_usage(db, [row])
    frame = db.read_logged(START, END)
    assert frame["usage_id"].tolist() == [usage_id]
    assert frame["user_id"].tolist() == ["00000000-0000-4000-8000-000000000001"]

    # The results table takes the id's type, and the write-back joins on it.
    db.replace_days(RECONCILED_USAGE, result_frame([{"usage_id": usage_id}]), [DAY])
    assert db.write_back(DAY, T1).rows_updated == 1
    assert by_id(db)[usage_id] == (Decimal("0.0270000000"), T1, s.MATCHED)


# -- check_usage_schema ----------------------------------------------------------------------


def test_unmigrated_table_is_refused_naming_missing_columns(pg_schema) -> None:
    engine, schema = pg_schema
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f'CREATE TABLE "{schema}".token_usage (id bigint PRIMARY KEY, user_id text,'
            " action_type text, model_used text, input_tokens integer, output_tokens integer,"
            " calculated_cost_cents numeric(12, 6), created_at timestamptz)"
        )
    db = Database(engine, usage_schema=schema)
    with pytest.raises(SchemaNotReadyError) as error:
        db.check_usage_schema()
    message = str(error.value)
    for column in ("openai_request_id", *WRITTEN):
        assert column in message
    assert "recon-migrate" in message
    with pytest.raises(SchemaNotReadyError):
        db.read_logged(START, END)
    with pytest.raises(SchemaNotReadyError):
        db.write_back(DAY, T1)


def test_missing_table_is_refused(pg_schema) -> None:
    engine, schema = pg_schema
    db = Database(engine, usage_schema=schema)
    with pytest.raises(SchemaNotReadyError, match="does not exist"):
        db.check_usage_schema()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"usage_table": 'token_usage"; DROP TABLE x; --'},
        {"usage_table": "1token_usage"},
        {"usage_table": "x" * 64},
        {"usage_schema": "public.evil"},
        {"usage_schema": 'a"b'},
        {"output_schema": "analytics; DROP SCHEMA public"},
        {"output_schema": "has space"},
    ],
)
def test_names_are_validated_on_construction(sqlite_engine, kwargs) -> None:
    with pytest.raises(InvalidIdentifierError):
        Database(sqlite_engine, **kwargs)


def test_valid_names_are_quoted(sqlite_engine) -> None:
    db = Database(sqlite_engine, "Usage_Log", "app", "analytics")
    assert db.usage == '"app"."Usage_Log"'
    assert db.table(RECONCILED_USAGE) == '"analytics"."reconciled_usage"'


# -- pending_days ----------------------------------------------------------------------------


def test_pending_days(pg_schema) -> None:
    db = pg_db(pg_schema)
    ids = insert_usage(
        db,
        [
            usage_row(START - timedelta(days=2), openai_request_id="d-2"),
            usage_row(START - timedelta(days=1), openai_request_id="d-1"),
            usage_row(START - US, openai_request_id="d-1 last"),
            usage_row(START, openai_request_id="d"),
        ],
    )
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                f"UPDATE {db.usage} SET reconciliation_status = 'matched'"
                " WHERE CAST(id AS TEXT) = :id"
            ),
            {"id": ids[0]},
        )
    since = START - timedelta(days=3)
    assert db.pending_days(since, END) == [DAY - timedelta(days=1), DAY]
    assert db.pending_days(since, START) == [DAY - timedelta(days=1)]
    assert db.pending_days(START + US, END) == []


def test_reads_beside_one_another_see_the_readers_snapshot(pg_schema, sqlite_engine) -> None:
    """Rows inserted after the day's snapshot was taken are seen by no read beside it, on
    PostgreSQL (each read on a connection of its own, at once) as on SQLite (in turn)."""
    for db in (pg_db(pg_schema), sqlite_db(sqlite_engine)):
        insert_usage(db, [usage_row(START, openai_request_id="before")])
        count = sa.text(f"SELECT count(*) FROM {db.usage}")
        with db.engine.begin() as conn, db.dialect.snapshot_reader(conn) as reader:
            reader.execute(count).scalar_one()  # the snapshot is taken by the first read
            if db.dialect.name == "postgresql":
                insert_usage(db, [usage_row(START, openai_request_id="after")])
            seen = db.dialect.read_beside(
                reader, [lambda c, count=count: c.execute(count).scalar_one()] * 3
            )
        assert seen == [1, 1, 1], db.dialect.name


def test_reads_beside_run_on_connections_of_their_own_and_stop_together(pg_schema) -> None:
    """On PostgreSQL each read has a backend of its own; when the first read fails, a scan
    still running beside it is cancelled rather than waited out."""
    db = pg_db(pg_schema)
    pid = sa.text("SELECT pg_backend_pid()")
    with db.engine.begin() as conn, db.dialect.snapshot_reader(conn) as reader:
        pids = db.dialect.read_beside(reader, [lambda c: c.execute(pid).scalar_one()] * 3)
    assert len(set(pids)) == 3

    def fail(c: sa.Connection) -> None:
        time.sleep(0.5)  # the sleep beside has begun
        raise RuntimeError("the first read failed")

    started = time.perf_counter()
    with (
        pytest.raises(RuntimeError, match="first read failed"),
        db.engine.begin() as conn,
        db.dialect.snapshot_reader(conn) as reader,
    ):
        db.dialect.read_beside(reader, [fail, lambda c: c.execute(sa.text("SELECT pg_sleep(60)"))])
    assert time.perf_counter() - started < 30


# -- copy_out_parts --------------------------------------------------------------------------


def test_a_query_copied_out_in_parts_keeps_each_part_in_the_querys_order(
    pg_schema, tmp_path
) -> None:
    """Every row in the file of its `part` (-1: the last file), in the query's order, over
    several of pyarrow's blocks; a part with no row gives an empty file."""
    engine, _ = pg_schema
    select = (
        "SELECT n::text AS label, n::bigint AS n, CASE WHEN mod(n, 7) = 0 THEN -1"
        " WHEN mod(n, 5) = 4 THEN 3 ELSE mod(n, 3) END AS part FROM generate_series(%s, %s) AS n"
        " ORDER BY n DESC"
    )
    types = {"label": pa.string(), "n": pa.int64()}
    with patch.object(pg_copy, "_READ_BLOCK_BYTES", 4096):
        paths = pg_copy.copy_out_parts(
            engine, select, (1, 20_000), types, None, 5, tmp_path, "rows"
        )
    parts = [pg_copy.read_part(path) for path in paths]
    numbers = np.arange(20_000, 0, -1)
    chosen = np.where(numbers % 7 == 0, 5, np.where(numbers % 5 == 4, 3, numbers % 3))
    for index, part in enumerate(parts):
        assert part["n"].tolist() == numbers[chosen == index].tolist(), index
        assert part["label"].tolist() == [str(n) for n in numbers[chosen == index]]
    assert len(parts[4]) == 0 and len(parts) == 6


@pytest.mark.parametrize("part", ["2", "-2", "NULL"])
def test_a_row_whose_part_is_out_of_range_stops_the_copy(pg_schema, tmp_path, part) -> None:
    """A part past the last, below -1, or missing is an error, never a row in another file."""
    engine, _ = pg_schema
    select = f"SELECT n::bigint AS n, {part}::int AS part FROM generate_series(%s, %s) AS n"
    with pytest.raises(ValueError, match="rows: a row's part is not -1 to 1"):
        pg_copy.copy_out_parts(
            engine, select, (1, 10), {"n": pa.int64()}, None, 2, tmp_path, "rows"
        )
