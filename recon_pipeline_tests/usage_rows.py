"""Rows of `token_usage` and frames of `reconciled_usage` for the database-layer tests, which
run against real PostgreSQL (a schema per test) and SQLite files."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pandas as pd
import sqlalchemy as sa

from recon_pipeline.core import schema as s
from recon_pipeline.core.reconcile import RESULT_COLUMNS, day_bounds
from recon_pipeline.io.database import Database
from recon_pipeline.io.migrations import create_demo_token_usage

DAY = date(2026, 11, 10)
START, END = day_bounds(DAY)
US = timedelta(microseconds=1)
WRITTEN = ("actual_cost_cents", "reconciled_at", "reconciliation_status")
T1 = datetime(2026, 11, 11, 6, 0, tzinfo=UTC)
T2 = datetime(2026, 11, 12, 6, 0, tzinfo=UTC)


def usage_row(created_at: datetime, **overrides: object) -> dict[str, object]:
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


def insert_usage(db: Database, rows: list[dict[str, object]]) -> list[str]:
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


def pg_db(pg_schema: tuple[sa.Engine, str]) -> Database:
    engine, schema = pg_schema
    create_demo_token_usage(engine, schema=schema)
    return Database(engine, usage_schema=schema)


def sqlite_db(engine: sa.Engine) -> Database:
    create_demo_token_usage(engine)
    return Database(engine)


def backend_db(request, backend: str) -> Database:
    """The test's token_usage on `backend` (postgres or sqlite), for tests of both."""
    if backend == "postgres":
        return pg_db(request.getfixturevalue("pg_schema"))
    return sqlite_db(request.getfixturevalue("sqlite_engine"))


def by_id(db: Database, columns: str = ", ".join(WRITTEN)) -> dict[str, tuple]:
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT CAST(id AS TEXT), {columns} FROM {db.usage}")).all()
    return {row[0]: tuple(row[1:]) for row in rows}


def result_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
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
