"""The database layer against real PostgreSQL (a schema per test) and SQLite files.

Reading a day of `token_usage`, replacing a day of an output table, and the write-back of
the three reconciliation columns: boundaries, types, exact money, transactions, and that
nothing else of the application's table is ever written.
"""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pandas as pd
import psycopg
import pytest
import sqlalchemy as sa

from recon_pipeline.core import schema as s
from recon_pipeline.core.reconcile import RESULT_COLUMNS, day_bounds
from recon_pipeline.io import pg_copy
from recon_pipeline.io.database import (
    DAILY_VARIANCE_SUMMARY,
    RECONCILED_USAGE,
    Database,
    SchemaNotReadyError,
)
from recon_pipeline.io.identifiers import InvalidIdentifierError
from recon_pipeline.io.migrations import create_demo_token_usage

DAY = date(2026, 11, 10)
START, END = day_bounds(DAY)
US = timedelta(microseconds=1)
WRITTEN = ("actual_cost_cents", "reconciled_at", "reconciliation_status")
T1 = datetime(2026, 11, 11, 6, 0, tzinfo=UTC)
T2 = datetime(2026, 11, 12, 6, 0, tzinfo=UTC)

# -- helpers ---------------------------------------------------------------------------------


def _usage_row(created_at: datetime, **overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "user_id": "user-1",
        "action_type": "merge_clarity",
        "model_used": "gpt-4o-mini",
        "input_tokens": 1000,
        "output_tokens": 200,
        "cached_input_tokens": None,
        "audio_seconds": None,
        "calculated_cost_cents": Decimal("0.027"),
        "created_at": created_at,
        "openai_request_id": "chatcmpl-x",
        "openai_created": int(created_at.timestamp()),
        "system_fingerprint": "fp_1",
    }
    row.update(overrides)
    return row


def _insert_usage(db: Database, rows: list[dict[str, object]]) -> list[str]:
    """Insert rows into the usage table; return their ids as text, in order."""
    columns = list(rows[0])
    sqlite = db.dialect.name != "postgresql"
    ids = []
    with db.engine.begin() as conn:
        for row in rows:
            values = dict(row)
            if sqlite:
                values["created_at"] = values["created_at"].isoformat(timespec="microseconds")
                for money in ("calculated_cost_cents", "audio_seconds"):
                    if values.get(money) is not None:
                        values[money] = str(values[money])
            statement = (
                f"INSERT INTO {db.usage} ({', '.join(columns)})"
                f" VALUES ({', '.join(':' + c for c in columns)}) RETURNING id"
            )
            ids.append(str(conn.execute(sa.text(statement), values).scalar_one()))
    return ids


def _pg_db(pg_schema: tuple[sa.Engine, str]) -> Database:
    engine, schema = pg_schema
    create_demo_token_usage(engine, schema=schema)
    return Database(engine, usage_schema=schema)


def _sqlite_db(engine: sa.Engine) -> Database:
    create_demo_token_usage(engine)
    return Database(engine)


def _full_rows(db: Database, exclude: tuple[str, ...] = ()) -> list[dict[str, object]]:
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT * FROM {db.usage} ORDER BY id")).mappings().all()
    return [{k: v for k, v in row.items() if k not in exclude} for row in rows]


def _by_id(db: Database, columns: str = ", ".join(WRITTEN)) -> dict[str, tuple]:
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT CAST(id AS TEXT), {columns} FROM {db.usage}")).all()
    return {row[0]: tuple(row[1:]) for row in rows}


def _result_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    """A reconciled_usage frame as the core produces it, from a few fields per row."""
    records = []
    for row in rows:
        record = {
            "usage_date": DAY,
            "user_id": "user-1",
            "action_type": "merge_clarity",
            "model_used": "gpt-4o-mini",
            "openai_request_id": "chatcmpl-x",
            "created_at": pd.Timestamp(START + timedelta(hours=1)),
            "openai_model": "gpt-4o-mini-2024-07-18",
            "service_tier": "default",
            "batch": False,
            "logged_input_tokens": 1000,
            "logged_output_tokens": 200,
            "openai_input_tokens": 1000,
            "openai_cached_input_tokens": 0,
            "openai_output_tokens": 200,
            "openai_reasoning_tokens": 0,
            "openai_audio_ms": 0,
            "estimated_cost_pico": 270_000_000,
            "actual_cost_pico": 270_000_000,
            "variance_pico": 0,
            "variance_pct": 0.0,
            "variance_class": s.CLASS_EXACT,
            "reconciliation_status": s.MATCHED,
            "model_mismatch": False,
            "token_mismatch": False,
            "price_status": "priced",
            "openai_source": "export:test.jsonl",
            "match_method": s.MATCH_REQUEST_ID,
            "matched_request_id": "chatcmpl-x",
        }
        record.update(row)
        records.append(record)
    frame = pd.DataFrame(records, columns=RESULT_COLUMNS)
    for column in frame.columns:
        if column.endswith(("_tokens", "_pico", "_ms")):
            frame[column] = frame[column].astype("Int64")
    for column in ("batch", "model_mismatch", "token_mismatch"):
        frame[column] = frame[column].astype("boolean")
    frame["variance_pct"] = frame["variance_pct"].astype("Float64")
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    return frame


def _stored_results(db: Database, day: date) -> list[tuple]:
    with db.engine.connect() as conn:
        return conn.execute(
            sa.text(
                f"SELECT CAST(usage_id AS TEXT), reconciliation_status, actual_cost_cents,"
                f" estimated_cost_cents, variance_cents FROM {db.table(RECONCILED_USAGE)}"
                " WHERE usage_date = :day ORDER BY 1"
            ),
            {"day": day if db.dialect.name == "postgresql" else day.isoformat()},
        ).all()


def _pending(usage_id: str) -> dict[str, object]:
    return {
        "usage_id": usage_id,
        "reconciliation_status": s.PENDING,
        "variance_class": s.CLASS_AWAITING_OPENAI,
        "actual_cost_pico": None,
        "variance_pico": None,
        "variance_pct": None,
        "openai_model": None,
        "service_tier": None,
        "batch": None,
    }


# -- read_logged -----------------------------------------------------------------------------


def _boundary_rows() -> list[dict[str, object]]:
    return [
        _usage_row(START - US, openai_request_id="before"),
        _usage_row(START, openai_request_id="at-start", calculated_cost_cents=Decimal("0.123456")),
        _usage_row(START + timedelta(hours=12), openai_request_id=""),
        _usage_row(
            END - US,
            openai_request_id=None,
            calculated_cost_cents=Decimal("123456.654321"),
            cached_input_tokens=512,
            user_id=None,
        ),
        _usage_row(END, openai_request_id="at-end"),
        _usage_row(
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
    db = _pg_db(pg_schema)
    ids = _insert_usage(db, _boundary_rows())
    assert all(i.isdigit() for i in ids)  # bigint identity ids
    _check_boundaries(db, ids)


def test_read_logged_boundaries_types_and_exact_pico_sqlite(sqlite_engine) -> None:
    db = _sqlite_db(sqlite_engine)
    ids = _insert_usage(db, _boundary_rows())
    _check_boundaries(db, ids)


def test_read_logged_empty_window_is_typed(pg_schema) -> None:
    db = _pg_db(pg_schema)
    _insert_usage(db, [_usage_row(START)])
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
    row = _usage_row(START + timedelta(hours=1), calculated_cost_cents=Decimal("0.000001"))
    del row["cached_input_tokens"]
    [usage_id] = _insert_usage(db, [row])
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
    row = _usage_row(START + timedelta(hours=2))
    for column in ("cached_input_tokens", "audio_seconds", "system_fingerprint"):
        del row[column]
    row["user_id"] = "00000000-0000-4000-8000-000000000001"
    [usage_id] = _insert_usage(db, [row])
    frame = db.read_logged(START, END)
    assert frame["usage_id"].tolist() == [usage_id]
    assert frame["user_id"].tolist() == ["00000000-0000-4000-8000-000000000001"]

    # The results table takes the id's type, and the write-back joins on it.
    db.replace_days(RECONCILED_USAGE, _result_frame([{"usage_id": usage_id}]), [DAY])
    assert db.write_back(DAY, T1).rows_updated == 1
    assert _by_id(db)[usage_id] == (Decimal("0.0270000000"), T1, s.MATCHED)


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


# -- replace_days ----------------------------------------------------------------------------


def _summary_frame(day: date, rows: list[tuple[str, int]]) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "usage_date": [day] * len(rows),
            "action_type": [r[0] for r in rows],
            "model_used": ["gpt-4o-mini"] * len(rows),
            "requests": [1] * len(rows),
            **{status: [0] * len(rows) for status in s.STATUSES},
            **{f"verified_by_{m}": [0] * len(rows) for m in s.MATCH_METHODS},
            "estimated_cost_pico": [r[1] for r in rows],
            "actual_cost_pico": [r[1] for r in rows],
            "variance_pico": [0] * len(rows),
            "match_rate": [1.0] * len(rows),
            "day_status": ["open"] * len(rows),
        }
    )
    for column in ("requests", *s.STATUSES, "estimated_cost_pico", "actual_cost_pico"):
        frame[column] = frame[column].astype("Int64")
    frame["variance_pico"] = frame["variance_pico"].astype("Int64")
    return frame


def _stored_summary(db: Database) -> list[tuple]:
    with db.engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT CAST(usage_date AS TEXT), action_type, estimated_cost_cents"
                f" FROM {db.table(DAILY_VARIANCE_SUMMARY)} ORDER BY 1, 2"
            )
        ).all()


def test_replace_days_swaps_one_day_and_keeps_money_exact(pg_schema) -> None:
    db = _pg_db(pg_schema)
    before = DAY - timedelta(days=1)
    big = 123_456_789_012_345_678
    written = db.replace_days(
        DAILY_VARIANCE_SUMMARY,
        pd.concat(
            [
                _summary_frame(before, [("a", 5)]),
                _summary_frame(DAY, [("a", 1), ("b", big), ("c", -7), ("d", 0)]),
            ]
        ),
        [before, DAY],
    )
    assert written == 5
    assert _stored_summary(db) == [
        (before.isoformat(), "a", Decimal("5E-10")),
        (DAY.isoformat(), "a", Decimal("1E-10")),
        (DAY.isoformat(), "b", Decimal("12345678.9012345678")),
        (DAY.isoformat(), "c", Decimal("-7E-10")),
        (DAY.isoformat(), "d", Decimal("0")),
    ]
    # Replacing DAY with fewer rows leaves exactly those, and DAY - 1 as it was.
    assert db.replace_days(DAILY_VARIANCE_SUMMARY, _summary_frame(DAY, [("z", 3)]), [DAY]) == 1
    assert _stored_summary(db) == [
        (before.isoformat(), "a", Decimal("5E-10")),
        (DAY.isoformat(), "z", Decimal("3E-10")),
    ]
    # A day listed with no rows in the frame is emptied.
    assert db.replace_days(DAILY_VARIANCE_SUMMARY, _summary_frame(DAY, [])[:0], [DAY]) == 0
    assert _stored_summary(db) == [(before.isoformat(), "a", Decimal("5E-10"))]


def test_replace_days_round_trips_every_column_type(pg_schema) -> None:
    db = _pg_db(pg_schema)
    [usage_id] = _insert_usage(db, [_usage_row(START + timedelta(hours=1))])
    frame = _result_frame(
        [
            {
                "usage_id": usage_id,
                "user_id": 'quote " comma , newline \n done',
                "created_at": pd.Timestamp("2026-11-10T01:02:03.456789Z"),
                "variance_pct": -12.3456,
                "batch": True,
                "estimated_cost_pico": 1,
                "actual_cost_pico": 2,
                "variance_pico": 1,
            }
        ]
    )
    db.replace_days(RECONCILED_USAGE, frame, [DAY])
    with db.engine.connect() as conn:
        row = conn.execute(sa.text(f"SELECT * FROM {db.table(RECONCILED_USAGE)}")).mappings().one()
    assert row["usage_date"] == DAY
    assert row["usage_id"] == int(usage_id)  # stored with token_usage.id's type
    assert row["user_id"] == 'quote " comma , newline \n done'
    assert row["created_at"] == datetime(2026, 11, 10, 1, 2, 3, 456789, tzinfo=UTC)
    assert row["variance_pct"] == -12.3456
    assert row["batch"] is True and row["model_mismatch"] is False
    assert row["estimated_cost_cents"] == Decimal("0.0000000001")
    assert row["actual_cost_cents"] == Decimal("0.0000000002")
    assert row["openai_input_tokens"] == 1000
    assert row["openai_source"] == "export:test.jsonl"


def test_timestamps_keep_their_instant_whatever_the_session_time_zone(pg_schema) -> None:
    """COPY sends UTC text marked `Z`, so a session in another zone (+05:45 here) stores the
    same instants; a missing time stays NULL."""
    engine, schema = pg_schema
    create_demo_token_usage(engine, schema=schema)
    nepal = sa.create_engine(engine.url, connect_args={"options": "-c TimeZone=Asia/Kathmandu"})
    try:
        db = Database(nepal, usage_schema=schema)
        ids = _insert_usage(db, [_usage_row(START + timedelta(hours=h)) for h in (1, 2, 3)])
        times = [
            pd.Timestamp("2026-11-10T01:02:03.456789Z"),
            pd.Timestamp("2026-11-10T23:59:59Z"),
            pd.NaT,
        ]
        rows = [
            {"usage_id": usage_id, "created_at": moment, "openai_request_id": f"chatcmpl-{n}"}
            for n, (usage_id, moment) in enumerate(zip(ids, times, strict=True))
        ]
        db.replace_days(RECONCILED_USAGE, _result_frame(rows), [DAY])
        with nepal.connect() as conn:
            stored = conn.execute(
                sa.text(
                    "SELECT created_at AT TIME ZONE 'UTC' FROM"
                    f" {db.table(RECONCILED_USAGE)} ORDER BY openai_request_id"
                )
            ).scalars()
            assert list(stored) == [
                datetime(2026, 11, 10, 1, 2, 3, 456789),
                datetime(2026, 11, 10, 23, 59, 59),
                None,
            ]
    finally:
        nepal.dispose()


def test_text_that_looks_like_null_stays_text_through_copy(pg_schema) -> None:
    """Only an unquoted empty field is NULL: pyarrow's defaults would read "N/A" or "null"."""
    db = _pg_db(pg_schema)
    words = ["N/A", "null", "NULL", "nan", "#N/A", "", "chat"]
    db.replace_days(DAILY_VARIANCE_SUMMARY, _summary_frame(DAY, [(w, 1) for w in words]), [DAY])
    stored = db.read_day(DAILY_VARIANCE_SUMMARY, DAY)
    assert sorted(stored["action_type"].tolist()) == sorted(words)


def test_replace_days_bad_value_leaves_previous_rows(pg_schema) -> None:
    db = _pg_db(pg_schema)
    db.replace_days(DAILY_VARIANCE_SUMMARY, _summary_frame(DAY, [("a", 1), ("b", 2)]), [DAY])
    before = _stored_summary(db)
    bad = _summary_frame(DAY, [("x", 9), ("y", 9)])
    bad["requests"] = bad["requests"].astype(object)
    bad.loc[1, "requests"] = "not a number"
    with pytest.raises(ValueError, match=r"daily_variance_summary\.requests: .*not a number"):
        db.replace_days(DAILY_VARIANCE_SUMMARY, bad, [DAY])
    assert _stored_summary(db) == before
    # The connection is usable afterwards and no staging table leaked.
    assert db.replace_days(DAILY_VARIANCE_SUMMARY, _summary_frame(DAY, [("c", 3)]), [DAY]) == 1
    assert [r[1] for r in _stored_summary(db)] == ["c"]


def test_copy_in_chunks_arrive_whole_and_a_bad_last_chunk_writes_nothing(
    pg_schema, monkeypatch
) -> None:
    """Chunks of two rows: a bad value in the last chunk, found after earlier chunks went to
    the server, leaves the previous rows."""
    monkeypatch.setattr(pg_copy, "_COPY_CHUNK_ROWS", 2)
    db = _pg_db(pg_schema)
    names = [f"route-{n}" for n in range(7)]
    assert (
        db.replace_days(DAILY_VARIANCE_SUMMARY, _summary_frame(DAY, [(n, 1) for n in names]), [DAY])
        == 7
    )
    before = _stored_summary(db)
    assert [row[1] for row in before] == names
    bad = _summary_frame(DAY, [(f"x-{n}", 9) for n in range(5)])
    bad["requests"] = bad["requests"].astype(object)
    bad.loc[4, "requests"] = "not a number"
    with pytest.raises(ValueError, match=r"daily_variance_summary\.requests: .*not a number"):
        db.replace_days(DAILY_VARIANCE_SUMMARY, bad, [DAY])
    assert _stored_summary(db) == before


def test_copy_in_a_chunk_the_server_rejects_writes_nothing(pg_schema, monkeypatch) -> None:
    """PostgreSQL refuses text holding a NUL byte; the refusal of the third chunk fails the
    day and leaves the previous rows."""
    monkeypatch.setattr(pg_copy, "_COPY_CHUNK_ROWS", 2)
    db = _pg_db(pg_schema)
    db.replace_days(DAILY_VARIANCE_SUMMARY, _summary_frame(DAY, [("a", 1)]), [DAY])
    before = _stored_summary(db)
    rows = [(f"x-{n}", 9) for n in range(4)] + [("nul\x00byte", 9)]
    with pytest.raises(psycopg.errors.CharacterNotInRepertoire, match="0x00"):
        db.replace_days(DAILY_VARIANCE_SUMMARY, _summary_frame(DAY, rows), [DAY])
    assert _stored_summary(db) == before


def test_copy_in_a_send_failing_in_the_worker_reaches_the_caller(pg_schema, monkeypatch) -> None:
    """Chunks go to the server from the worker thread; a send that fails there fails the
    day, and the chunk already sent is rolled back with it."""
    monkeypatch.setattr(pg_copy, "_COPY_CHUNK_ROWS", 2)
    db = _pg_db(pg_schema)
    db.replace_days(DAILY_VARIANCE_SUMMARY, _summary_frame(DAY, [("a", 1)]), [DAY])
    before = _stored_summary(db)
    senders: list[str] = []
    write = psycopg.Copy.write

    def failing_second_send(self, buffer):
        senders.append(threading.current_thread().name)
        if len(senders) == 2:
            raise OSError("connection lost while sending")
        return write(self, buffer)

    monkeypatch.setattr(psycopg.Copy, "write", failing_second_send)
    rows = [(f"x-{n}", 9) for n in range(5)]
    with pytest.raises(OSError, match="connection lost while sending"):
        db.replace_days(DAILY_VARIANCE_SUMMARY, _summary_frame(DAY, rows), [DAY])
    assert len(senders) == 2 and all(name.startswith("copy-in") for name in senders)
    monkeypatch.undo()
    assert _stored_summary(db) == before


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_replace_days_failure_after_delete_and_insert_rolls_back(
    request, monkeypatch, backend
) -> None:
    if backend == "postgres":
        db = _pg_db(request.getfixturevalue("pg_schema"))
    else:
        db = _sqlite_db(request.getfixturevalue("sqlite_engine"))
    db.replace_days(DAILY_VARIANCE_SUMMARY, _summary_frame(DAY, [("a", 1), ("b", 2)]), [DAY])
    before = _stored_summary(db)
    assert len(before) == 2
    original = Database.append_rows
    seen: list[int] = []

    def insert_then_fail(self, conn, output, frame):
        original(self, conn, output, frame)
        # Inside the transaction the day's old rows are gone and the new ones are in.
        table = self.table(output)
        seen.append(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
        raise RuntimeError("disk full")

    monkeypatch.setattr(Database, "append_rows", insert_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        db.replace_days(DAILY_VARIANCE_SUMMARY, _summary_frame(DAY, [("x", 9)]), [DAY])
    assert seen == [1]
    assert _stored_summary(db) == before


def test_replace_days_sqlite(sqlite_engine) -> None:
    db = _sqlite_db(sqlite_engine)
    before = DAY - timedelta(days=1)
    db.replace_days(
        DAILY_VARIANCE_SUMMARY,
        pd.concat([_summary_frame(before, [("a", 5)]), _summary_frame(DAY, [("a", 1), ("b", 2)])]),
        [before, DAY],
    )
    db.replace_days(DAILY_VARIANCE_SUMMARY, _summary_frame(DAY, [("z", 3)]), [DAY])
    rows = _stored_summary(db)
    assert [(r[0], r[1]) for r in rows] == [(before.isoformat(), "a"), (DAY.isoformat(), "z")]
    assert [float(r[2]) for r in rows] == [5e-10, 3e-10]


# -- write_back ------------------------------------------------------------------------------


def _day_fixture(db: Database) -> dict[str, str]:
    """Three rows on DAY, one on DAY - 1; returns their ids by role."""
    ids = _insert_usage(
        db,
        [
            _usage_row(START + timedelta(hours=1), openai_request_id="a"),
            _usage_row(START + timedelta(hours=2), openai_request_id="b"),
            _usage_row(START + timedelta(hours=3), openai_request_id="c"),
            _usage_row(START - timedelta(hours=3), openai_request_id="yesterday"),
        ],
    )
    return dict(zip(("a", "b", "c", "yesterday"), ids, strict=True))


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_write_back_sets_three_columns_on_the_days_rows_only(request, backend) -> None:
    if backend == "postgres":
        db = _pg_db(request.getfixturevalue("pg_schema"))
    else:
        db = _sqlite_db(request.getfixturevalue("sqlite_engine"))
    ids = _day_fixture(db)
    # A reconciliation of DAY - 1 exists too: writing DAY back must not apply it.
    yesterday = DAY - timedelta(days=1)
    db.replace_days(
        RECONCILED_USAGE,
        _result_frame(
            [
                {
                    "usage_id": ids["yesterday"],
                    "openai_request_id": "yesterday",
                    "usage_date": yesterday,
                }
            ]
        ),
        [yesterday],
    )
    results = _result_frame(
        [
            {
                "usage_id": ids["a"],
                "openai_request_id": "a",
                "actual_cost_pico": 1,
                "variance_pico": -269_999_999,
            },
            {
                "usage_id": ids["b"],
                "openai_request_id": "b",
                "reconciliation_status": s.DISCREPANCY,
                "variance_class": s.CLASS_UNDER_ESTIMATE,
                "actual_cost_pico": 123_456_789_012,
            },
        ]
    )
    db.replace_days(RECONCILED_USAGE, results, [DAY])
    untouched = _full_rows(db, exclude=WRITTEN)
    # A row logged after the results were computed: not in them, so not written.
    late = _insert_usage(db, [_usage_row(START + timedelta(hours=4), openai_request_id="late")])[0]

    outcome = db.write_back(DAY, T1)

    assert (outcome.rows_considered, outcome.rows_updated) == (2, 2)
    stored = _by_id(db)
    at = T1 if db.dialect.name == "postgresql" else T1.isoformat(timespec="microseconds")
    if db.dialect.name == "postgresql":
        assert stored[ids["a"]] == (Decimal("1E-10"), at, s.MATCHED)
        assert stored[ids["b"]] == (Decimal("12.3456789012"), at, s.DISCREPANCY)
    else:
        assert stored[ids["a"]][1:] == (at, s.MATCHED)
        assert stored[ids["a"]][0] == pytest.approx(1e-10, rel=1e-12)
        assert stored[ids["b"]][1:] == (at, s.DISCREPANCY)
        assert stored[ids["b"]][0] == pytest.approx(12.3456789012, rel=1e-12)
    for other in ("c", "yesterday"):
        assert stored[ids[other]] == (None, None, s.PENDING)
    assert stored[late] == (None, None, s.PENDING)
    # Nothing but the three columns changed, on any row.
    after = _full_rows(db, exclude=WRITTEN)
    assert after[: len(untouched)] == untouched

    # Again, later: nothing differs, so nothing is updated and reconciled_at stays.
    again = db.write_back(DAY, T2)
    assert (again.rows_considered, again.rows_updated) == (2, 0)
    assert _by_id(db) == stored
    assert db.count_disagreeing(DAY) == 0


def test_write_back_status_change_gets_new_reconciled_at(pg_schema) -> None:
    db = _pg_db(pg_schema)
    ids = _day_fixture(db)
    first = _result_frame(
        [
            _pending(ids["a"]),
            {"usage_id": ids["b"], "openai_request_id": "b"},
            {
                "usage_id": ids["c"],
                "openai_request_id": "c",
                "actual_cost_pico": 300_000_000,
                "variance_pico": 30_000_000,
            },
        ]
    )
    db.replace_days(RECONCILED_USAGE, first, [DAY])
    # Pending in the results and pending (the default) on the row: nothing to write.
    assert db.write_back(DAY, T1).rows_updated == 2
    assert _by_id(db)[ids["a"]] == (None, None, s.PENDING)
    assert db.count_disagreeing(DAY) == 0

    # OpenAI's record for `a` arrives; `c` is re-priced with the same status; `b` unchanged.
    second = _result_frame(
        [
            {"usage_id": ids["a"], "openai_request_id": "a"},
            {"usage_id": ids["b"], "openai_request_id": "b"},
            {
                "usage_id": ids["c"],
                "openai_request_id": "c",
                "actual_cost_pico": 310_000_000,
                "variance_pico": 40_000_000,
            },
        ]
    )
    db.replace_days(RECONCILED_USAGE, second, [DAY])
    assert db.count_disagreeing(DAY) == 2
    assert db.write_back(DAY, T2).rows_updated == 2
    stored = _by_id(db)
    assert stored[ids["a"]] == (Decimal("0.0270000000"), T2, s.MATCHED)
    assert stored[ids["b"]] == (Decimal("0.0270000000"), T1, s.MATCHED)
    assert stored[ids["c"]] == (Decimal("0.0310000000"), T2, s.MATCHED)
    assert db.count_disagreeing(DAY) == 0


def test_write_back_is_one_transaction(pg_schema) -> None:
    """A row the CHECK constraint refuses fails the whole day's write-back, not half of it."""
    db = _pg_db(pg_schema)
    ids = _day_fixture(db)
    db.replace_days(
        RECONCILED_USAGE,
        _result_frame(
            [
                {"usage_id": ids["a"], "openai_request_id": "a"},
                {"usage_id": ids["b"], "openai_request_id": "b", "reconciliation_status": "bogus"},
            ]
        ),
        [DAY],
    )
    before = _full_rows(db)
    with pytest.raises(sa.exc.IntegrityError):
        db.write_back(DAY, T1)
    assert _full_rows(db) == before


def test_pending_days(pg_schema) -> None:
    db = _pg_db(pg_schema)
    ids = _insert_usage(
        db,
        [
            _usage_row(START - timedelta(days=2), openai_request_id="d-2"),
            _usage_row(START - timedelta(days=1), openai_request_id="d-1"),
            _usage_row(START - US, openai_request_id="d-1 last"),
            _usage_row(START, openai_request_id="d"),
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


def test_write_back_leaves_a_row_the_application_changed_since_it_was_read(pg_schema) -> None:
    db = _pg_db(pg_schema)
    ids = _day_fixture(db)
    results = _result_frame(
        [
            {"usage_id": ids["a"], "openai_request_id": "a"},
            {"usage_id": ids["b"], "openai_request_id": "b"},
        ]
    )
    db.replace_days(RECONCILED_USAGE, results, [DAY])
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE {db.usage} SET calculated_cost_cents = 9.5 WHERE id = :id"),
            {"id": int(ids["b"])},
        )

    outcome = db.write_back(DAY, T1)

    assert (outcome.rows_updated, outcome.rows_disagreeing) == (1, 1)
    stored = _by_id(db)
    assert stored[ids["a"]] == (Decimal("0.0270000000"), T1, s.MATCHED)
    assert stored[ids["b"]] == (None, None, s.PENDING)


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_write_back_writes_a_row_the_application_moved_to_another_day(request, backend) -> None:
    """The verdict is about the request, so a row whose created_at moved to the next day
    after it was read still gets it: the write-back joins by id only."""
    if backend == "postgres":
        db = _pg_db(request.getfixturevalue("pg_schema"))
    else:
        db = _sqlite_db(request.getfixturevalue("sqlite_engine"))
    ids = _day_fixture(db)
    results = _result_frame(
        [
            {"usage_id": ids["a"], "openai_request_id": "a"},
            {"usage_id": ids["b"], "openai_request_id": "b"},
        ]
    )
    db.replace_days(RECONCILED_USAGE, results, [DAY])
    moved = END + timedelta(hours=2)
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE {db.usage} SET created_at = :at WHERE id = :id"),
            {
                "at": moved
                if db.dialect.name == "postgresql"
                else moved.isoformat(timespec="microseconds"),
                "id": int(ids["b"]),
            },
        )

    outcome = db.write_back(DAY, T1)

    assert (outcome.rows_updated, outcome.rows_disagreeing) == (2, 0)
    at = T1 if db.dialect.name == "postgresql" else T1.isoformat(timespec="microseconds")
    stored = _by_id(db)
    assert stored[ids["a"]][1:] == stored[ids["b"]][1:] == (at, s.MATCHED)
    assert db.count_disagreeing(DAY) == 0


def _work_mem_kb(conn: sa.Connection) -> int:
    return conn.execute(
        sa.text("SELECT setting::bigint FROM pg_settings WHERE name = 'work_mem'")
    ).scalar_one()


@pytest.mark.parametrize(("session_kb", "expected_kb"), [(None, 18_750), (1_048_576, 1_048_576)])
def test_a_large_write_back_gets_memory_for_its_join_in_its_own_transaction(
    pg_schema, session_kb, expected_kb
) -> None:
    """120,000 staged rows at 160 bytes each: 18,750 kB of work_mem for the UPDATE's hash
    join, set for the write-back's transaction only and never below the session's setting."""
    db = _pg_db(pg_schema)
    rows = 120_000
    results = pd.DataFrame(
        {
            "usage_id": [str(n) for n in range(1, rows + 1)],
            "openai_request_id": "chatcmpl-x",
            "estimated_cost_pico": pd.array([270_000_000] * rows, dtype="Int64"),
            "actual_cost_pico": pd.array([270_000_000] * rows, dtype="Int64"),
            "reconciliation_status": s.MATCHED,
        }
    )
    with db.engine.connect() as conn:
        if session_kb:
            conn.execute(sa.text(f"SET work_mem = '{session_kb}kB'"))
        before = _work_mem_kb(conn)
        conn.commit()
        with conn.begin():
            outcome = db.write_back_rows(conn, DAY, T1, results)
            during = _work_mem_kb(conn)
        after = _work_mem_kb(conn)

    assert (outcome.rows_considered, outcome.rows_updated) == (rows, 0)
    assert during == expected_kb
    assert after == before


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_an_output_table_of_the_previous_release_gains_the_new_columns(
    backend, pg_schema, tmp_path
) -> None:
    """reconciled_usage as an earlier release created it (no match_method, no
    matched_request_id): the next run's first write adds the columns, keeps the stored rows,
    and both days read back."""
    if backend == "postgres":
        db = _pg_db(pg_schema)
    else:
        db = _sqlite_db(sa.create_engine(f"sqlite:///{tmp_path}/old.sqlite"))
    new = {"match_method", "matched_request_id"}
    previous = dataclasses.replace(
        RECONCILED_USAGE, columns=tuple(c for c in RECONCILED_USAGE.columns if c.name not in new)
    )
    db.ensure_table(previous)
    old_day = DAY - timedelta(days=1)
    old_frame = _result_frame([{"usage_id": "1", "usage_date": old_day}]).drop(columns=list(new))
    with db.engine.begin() as conn:
        db.replace_day(conn, previous, old_frame, old_day)
    fresh = Database(db.engine, usage_schema=db._usage_schema)  # a new run of the new release
    written = fresh.replace_days(RECONCILED_USAGE, _result_frame([{"usage_id": "2"}]), [DAY])
    assert written == 1
    stored = fresh.read_day(
        RECONCILED_USAGE, DAY, ["usage_id", "match_method", "matched_request_id"]
    )
    assert stored.values.tolist() == [["2", s.MATCH_REQUEST_ID, "chatcmpl-x"]]
    kept = fresh.read_day(RECONCILED_USAGE, old_day, ["usage_id", "match_method"])
    assert kept["usage_id"].tolist() == ["1"] and kept["match_method"].isna().all()
