"""The size of a day, counted before it is read in slices (`core.slices`,
`Database.read_day_parts`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import sqlalchemy as sa

from recon_pipeline.core.days import day_bounds
from recon_pipeline.io.database import OPENAI_REQUESTS, Database


@dataclass(frozen=True)
class DaySize:
    """What the slice count and the thin-day rule need, counted in the database:
    `window_rows` logged in the match window, `with_ids` of them on the day with a request id,
    `records` stored for the day's window, `records_on_day` of them created on the day."""

    window_rows: int
    with_ids: int
    records: int
    records_on_day: int


def day_size(
    db: Database, day: date, window: tuple[datetime, datetime], conn: sa.Connection
) -> DaySize:
    """Count both sides of a day inside `conn`'s transaction (which ensured openai_requests)."""
    db.check_usage_schema()
    d = db.dialect
    start, end = day_bounds(day)
    params = {
        "first": d.moment(window[0]),
        "last": d.moment(window[1]),
        "start": d.moment(start),
        "end": d.moment(end),
        "day": d.day(day),
    }
    on_day = "created_at >= :start AND created_at < :end"
    has_id = f"{d.request_id('openai_request_id')} IS NOT NULL"
    logged = conn.execute(
        sa.text(
            f"SELECT count(*), coalesce(sum(CASE WHEN {on_day} AND {has_id} THEN 1 ELSE 0 END), 0)"
            f" FROM {db.usage} WHERE created_at >= :first AND created_at < :last"
        ),
        params,
    ).one()
    records = conn.execute(
        sa.text(
            f"SELECT count(*), coalesce(sum(CASE WHEN {on_day} THEN 1 ELSE 0 END), 0)"
            f" FROM {db.table(OPENAI_REQUESTS)} WHERE usage_date = :day"
        ),
        params,
    ).one()
    return DaySize(int(logged[0]), int(logged[1]), int(records[0]), int(records[1]))
