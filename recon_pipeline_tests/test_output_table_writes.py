"""Replacing a day of an output table in PostgreSQL (COPY, in chunks from a worker thread)
and SQLite: only the listed days change, money stays exact, every column type round-trips,
a failure anywhere leaves the previous rows, and a table of the previous release gains the
new columns on its first write."""

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
from recon_pipeline.io import pg_copy
from recon_pipeline.io.database import DAILY_VARIANCE_SUMMARY, RECONCILED_USAGE, Database
from recon_pipeline.io.migrations import create_demo_token_usage
from recon_pipeline_tests.usage_rows import (
    DAY,
    START,
    backend_db,
    insert_usage,
    pg_db,
    result_frame,
    sqlite_db,
    usage_row,
)


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
    db = pg_db(pg_schema)
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
    db = pg_db(pg_schema)
    [usage_id] = insert_usage(db, [usage_row(START + timedelta(hours=1))])
    frame = result_frame(
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
        ids = insert_usage(db, [usage_row(START + timedelta(hours=h)) for h in (1, 2, 3)])
        times = [
            pd.Timestamp("2026-11-10T01:02:03.456789Z"),
            pd.Timestamp("2026-11-10T23:59:59Z"),
            pd.NaT,
        ]
        rows = [
            {"usage_id": usage_id, "created_at": moment, "openai_request_id": f"chatcmpl-{n}"}
            for n, (usage_id, moment) in enumerate(zip(ids, times, strict=True))
        ]
        db.replace_days(RECONCILED_USAGE, result_frame(rows), [DAY])
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
    db = pg_db(pg_schema)
    words = ["N/A", "null", "NULL", "nan", "#N/A", "", "chat"]
    db.replace_days(DAILY_VARIANCE_SUMMARY, _summary_frame(DAY, [(w, 1) for w in words]), [DAY])
    stored = db.read_day(DAILY_VARIANCE_SUMMARY, DAY)
    assert sorted(stored["action_type"].tolist()) == sorted(words)


def test_replace_days_bad_value_leaves_previous_rows(pg_schema) -> None:
    db = pg_db(pg_schema)
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
    db = pg_db(pg_schema)
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
    db = pg_db(pg_schema)
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
    db = pg_db(pg_schema)
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
    db = backend_db(request, backend)
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
    db = sqlite_db(sqlite_engine)
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


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_an_output_table_of_the_previous_release_gains_the_new_columns(
    backend, pg_schema, tmp_path
) -> None:
    """reconciled_usage as an earlier release created it (no match_method, no
    matched_request_id): the next run's first write adds the columns, keeps the stored rows,
    and both days read back."""
    if backend == "postgres":
        db = pg_db(pg_schema)
    else:
        db = sqlite_db(sa.create_engine(f"sqlite:///{tmp_path}/old.sqlite"))
    new = {"match_method", "matched_request_id"}
    previous = dataclasses.replace(
        RECONCILED_USAGE, columns=tuple(c for c in RECONCILED_USAGE.columns if c.name not in new)
    )
    db.ensure_table(previous)
    old_day = DAY - timedelta(days=1)
    old_frame = result_frame([{"usage_id": "1", "usage_date": old_day}]).drop(columns=list(new))
    with db.engine.begin() as conn:
        db.replace_day(conn, previous, old_frame, old_day)
    fresh = Database(db.engine, usage_schema=db._usage_schema)  # a new run of the new release
    written = fresh.replace_days(RECONCILED_USAGE, result_frame([{"usage_id": "2"}]), [DAY])
    assert written == 1
    stored = fresh.read_day(
        RECONCILED_USAGE, DAY, ["usage_id", "match_method", "matched_request_id"]
    )
    assert stored.values.tolist() == [["2", s.MATCH_REQUEST_ID, "chatcmpl-x"]]
    kept = fresh.read_day(RECONCILED_USAGE, old_day, ["usage_id", "match_method"])
    assert kept["usage_id"].tolist() == ["1"] and kept["match_method"].isna().all()
