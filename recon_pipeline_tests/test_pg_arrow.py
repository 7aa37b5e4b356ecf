"""A day's large reads through ADBC (`io/pg_arrow.py`): the same files as psycopg's COPY to CSV
gives, in the reader's snapshot, and no password in what a failed connection says."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from unittest.mock import patch

import pandas.testing as pdt
import pyarrow as pa
import pytest
import sqlalchemy as sa

from recon_pipeline.core.days import day_bounds
from recon_pipeline.io import dialect_postgres, pg_arrow, pg_copy
from recon_pipeline.io.database import OPENAI_REQUESTS, Database
from recon_pipeline.io.dialect_postgres import PostgresDialect
from recon_pipeline.io.migrations import apply_migration
from recon_pipeline_tests.frames import openai_frame
from recon_pipeline_tests.usage_rows import DAY, START, insert_usage, usage_row

# Text a CSV reader could take for something else, and numbers at their types' edges.
_VALUES = """
    (VALUES (0, '', 9223372036854775807, 0.1::float8, true),
            (1, NULL, -9223372036854775807, NULL, false),
            (2, 'a,b', NULL, 1e300, NULL),
            (3, 'quote"d', 0, 'NaN'::float8, true),
            (4, E'new\\nline', 1, -0.5, false),
            (5, 'N/A', 2, 0, true),
            (6, 'null', 3, 2.5, true),
            (7, E'\\\\N', 4, 3.5, false),
            (8, E'tab\\there', 5, 4.5, NULL),
            (9, 'ünï ✓', 6, 5.5, true))
"""


def _select(rows: int) -> str:
    """`rows` rows cycling through `_VALUES`, each with a long text so that ADBC sends several
    batches, numbered in the query's order, and a part from -1 to 2."""
    return (
        "SELECT v.label, v.n, v.x, v.flag, i::bigint AS i, repeat('x', 80) AS filler,"
        " CASE WHEN mod(i, 11) = 0 THEN -1 ELSE mod(i, 3) END AS part"
        f" FROM generate_series(1, {rows}) AS i JOIN {_VALUES} AS v(k, label, n, x, flag)"
        " ON v.k = mod(i, 10) ORDER BY i DESC"
    )


def test_the_arrow_read_writes_the_files_the_csv_copy_writes(pg_schema, tmp_path) -> None:
    """Every part's file holds the same rows, values, types and order both ways, over several
    of ADBC's batches: empty text and NULL kept apart, text a CSV reader could mistake for a
    NULL or a separator, NaN, the edges of bigint."""
    engine, _ = pg_schema
    rows = 300_000
    types = {
        "label": pa.string(),
        "n": pa.int64(),
        "x": pa.float64(),
        "flag": pa.bool_(),
        "i": pa.int64(),
        "filler": pa.string(),
    }
    csv_dir, arrow_dir = tmp_path / "csv", tmp_path / "arrow"
    csv_dir.mkdir(), arrow_dir.mkdir()
    batches: list[int] = []
    write_parts = pg_copy.write_parts

    def counted(source, *args):
        listed = list(source)
        batches.append(len(listed))
        return write_parts(listed, *args)

    select = _select(rows)
    expected = pg_copy.copy_out_parts(engine, select, (), types, None, 3, csv_dir, "rows")
    with (
        engine.connect() as conn,
        conn.begin(),
        patch.object(pg_arrow, "write_parts", counted),
    ):
        got = pg_arrow.arrow_out_parts(conn, select, types, 3, arrow_dir, "rows")
    assert batches[0] > 1
    assert [p.name for p in got] == [p.name for p in expected]
    total = 0
    for want, have in zip(expected, got, strict=True):
        frame = pg_copy.read_part(have)
        pdt.assert_frame_equal(frame, pg_copy.read_part(want))
        total += len(frame)
    assert total == rows
    last = pg_copy.read_part(got[-1])
    assert last["i"].tolist() == [i for i in range(rows, 0, -1) if i % 11 == 0]
    labels = set(pg_copy.read_part(got[0])["label"].tolist())
    assert {"", None, "a,b", 'quote"d', "new\nline", "N/A", "null", "\\N", "ünï ✓"} <= labels


def test_the_arrow_read_sees_the_readers_snapshot(pg_schema, tmp_path) -> None:
    """A row inserted or deleted after the reader's snapshot was taken is read as it was."""
    engine, schema = pg_schema
    table = f'"{schema}".numbers'
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {table} (n bigint)"))
        conn.execute(sa.text(f"INSERT INTO {table} SELECT generate_series(1, 5)"))
    dialect = PostgresDialect(engine, table)
    select = f"SELECT n, 0 AS part FROM {table} ORDER BY n"
    with engine.begin() as conn, dialect.snapshot_reader(conn) as reader:
        reader.execute(sa.text("SELECT 1")).scalar_one()  # the snapshot is taken
        with engine.begin() as other:
            other.execute(sa.text(f"INSERT INTO {table} VALUES (6)"))
            other.execute(sa.text(f"DELETE FROM {table} WHERE n = 1"))
        paths = pg_arrow.arrow_out_parts(reader, select, {"n": pa.int64()}, 1, tmp_path, "n")
    assert pg_copy.read_part(paths[0])["n"].tolist() == [1, 2, 3, 4, 5]
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one() == 5


def test_a_read_whose_connection_is_refused_says_why_without_the_password(
    pg_schema, tmp_path
) -> None:
    """The read's own connection is the caller's second: a role allowed one is refused, and
    the error quotes the server without the password the caller's URL carries."""
    engine, _ = pg_schema
    role, password = f"recon_{uuid.uuid4().hex[:12]}", "s3cret-Pa55-word"
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' CONNECTION LIMIT 1"))
    limited = sa.create_engine(
        engine.url.set(username=role, password=password), poolclass=sa.NullPool
    )
    try:
        with (
            pytest.raises(pg_arrow.ArrowReadError, match="too many connections") as raised,
            limited.connect() as conn,
            conn.begin(),
        ):
            pg_arrow.arrow_out_parts(conn, "SELECT 1 AS n, 0 AS part", {}, 1, tmp_path, "n")
        assert password not in str(raised.value)
    finally:
        limited.dispose()
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP ROLE {role}"))


def test_an_empty_result_gives_empty_files_of_the_declared_columns(pg_schema, tmp_path) -> None:
    engine, _ = pg_schema
    select = "SELECT 'x'::text AS label, 1::bigint AS n, 0 AS part WHERE false"
    types = {"label": pa.string(), "n": pa.int64()}
    with engine.connect() as conn, conn.begin():
        paths = pg_arrow.arrow_out_parts(conn, select, types, 2, tmp_path, "rows")
    for path in paths:
        frame = pg_copy.read_part(path)
        assert frame.empty and list(frame.columns) == ["label", "n"]


@pytest.mark.timeout(120)
def test_a_read_that_fails_midway_stops_the_query_rather_than_wait_for_its_end(
    pg_schema, tmp_path
) -> None:
    """The query would stream for hours: the read's connection cancels it, so the failure
    is raised at once and no backend is left running it."""
    engine, _ = pg_schema
    endless = (
        "SELECT g AS n, 0 AS part"
        " FROM (SELECT generate_series(1, 1000000000000::bigint) AS g) AS endless_rows"
    )

    def stop_after_one(batches, *args):
        next(iter(batches))
        raise RuntimeError("the disk is full")

    with (
        patch.object(pg_arrow, "write_parts", stop_after_one),
        pytest.raises(RuntimeError, match="the disk is full"),
        engine.connect() as conn,
        conn.begin(),
    ):
        pg_arrow.arrow_out_parts(conn, endless, {"n": pa.int64()}, 1, tmp_path, "n")
    with engine.connect() as conn:
        running = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%endless_rows%'"
                " AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    assert running == 0


def test_a_driver_error_quoting_the_connection_never_shows_its_secrets(pg_schema, tmp_path):
    """Whatever the driver says when the read's connection fails (here, the whole connection
    string), the password is masked, spaces and all."""
    engine, _ = pg_schema
    password = "two  words\tand a tab"
    with_password = sa.create_engine(engine.url.set(password=password), poolclass=sa.NullPool)

    def quoting(conninfo, **kwargs):
        raise RuntimeError(f"cannot connect with {conninfo}")

    try:
        with (
            patch.object(pg_arrow.adbc, "connect", quoting),
            pytest.raises(pg_arrow.ArrowReadError, match="cannot connect with") as raised,
            with_password.connect() as conn,
            conn.begin(),
        ):
            pg_arrow.arrow_out_parts(conn, "SELECT 1 AS n, 0 AS part", {}, 1, tmp_path, "n")
    finally:
        with_password.dispose()
    message = str(raised.value)
    assert "password=***" in message.replace("'", "")
    assert "two" not in message and "tab" not in message


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        (pg_arrow.moment_literal, datetime(2026, 11, 10)),
        (pg_arrow.moment_literal, date(2026, 11, 10)),
        (pg_arrow.day_literal, datetime(2026, 11, 10, tzinfo=UTC)),
        (pg_arrow.day_literal, "2026-11-10"),
    ],
)
def test_only_aware_instants_and_dates_become_literals(literal, value) -> None:
    """A naive time would be read in the session's time zone; anything else is refused."""
    with pytest.raises(ValueError, match=r"not an aware datetime|not a date"):
        literal(value)


def test_literals_read_back_as_the_values_they_were_made_from(pg_schema) -> None:
    engine, _ = pg_schema
    moment = datetime(2026, 11, 10, 23, 59, 59, 999_999, tzinfo=UTC)
    with engine.connect() as conn:
        read = conn.execute(
            sa.text(
                f"SELECT {pg_arrow.moment_literal(moment)},"
                f" {pg_arrow.day_literal(date(2026, 11, 10))}"
            )
        ).one()
    assert tuple(read) == (moment, date(2026, 11, 10))


def _app_shaped_day(pg_schema) -> Database:
    """A table as an application may have it (uuid ids and users, integer tokens, no optional
    columns), migrated, with rows with and without an id and odd text, and records stored."""
    engine, schema = pg_schema
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f'CREATE TABLE "{schema}".token_usage (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),'
            " user_id uuid, action_type varchar(40) NOT NULL, model_used text NOT NULL,"
            " input_tokens integer NOT NULL, output_tokens integer NOT NULL,"
            " calculated_cost_cents numeric(12, 6), created_at timestamptz NOT NULL)"
        )
    apply_migration(engine, schema=schema)
    db = Database(engine, usage_schema=schema)
    rows = []
    for n, route in enumerate(["chat", "", "a,b", 'quote"d', "N/A", "ünï"] * 5):
        row = usage_row(START + timedelta(minutes=7 * n), action_type=route or "x")
        for column in ("cached_input_tokens", "audio_seconds", "system_fingerprint"):
            del row[column]
        row |= {"user_id": None, "openai_request_id": None if n % 4 == 0 else f"r{n}"}
        row["openai_request_id"] = "" if n % 9 == 1 else row["openai_request_id"]
        rows.append(row)
    insert_usage(db, rows)
    records = openai_frame(*({"request_id": f"r{n}", "created_at": START} for n in range(25)))
    db.replace_days(OPENAI_REQUESTS, records.assign(usage_date=DAY), [DAY])
    return db


@pytest.mark.parametrize("day", [DAY, DAY + timedelta(days=3)], ids=["day", "empty day"])
def test_a_large_days_reads_give_the_files_a_small_days_give(pg_schema, tmp_path, day) -> None:
    """`read_day_parts` through ADBC (a day of `ARROW_READ_ROWS` or more) and through psycopg
    give the same files, on an application's table and on a day with nothing in it."""
    db = _app_shaped_day(pg_schema)
    window = (day_bounds(day)[0] - timedelta(hours=1), day_bounds(day)[1] + timedelta(hours=1))
    folders = {size: tmp_path / str(size) for size in (0, pg_arrow.ARROW_READ_ROWS)}
    paths, through_arrow = {}, []
    arrow_out_parts = dialect_postgres.arrow_out_parts

    def counted(*args):
        through_arrow.append(args[-1])
        return arrow_out_parts(*args)

    for size, folder in folders.items():
        folder.mkdir()
        with (
            patch.object(dialect_postgres, "arrow_out_parts", counted),
            db.engine.begin() as conn,
            db.dialect.snapshot_reader(conn) as reader,
        ):
            paths[size] = db.read_day_parts(day, window, reader, 3, folder, size)
        assert through_arrow == ([] if size == 0 else ["logged", "openai"])
    small, large = ([*logged, *records] for logged, records in paths.values())
    total = 0
    for csv_file, arrow_file in zip(small, large, strict=True):
        assert csv_file.name == arrow_file.name
        frame = pg_copy.read_part(arrow_file)
        pdt.assert_frame_equal(frame, pg_copy.read_part(csv_file))
        total += len(frame)
    assert total == (0 if day != DAY else 30 + 25)
