"""How many OpenAI records earlier days hold, for the thin-day rule (`core.completeness`)."""

from __future__ import annotations

from datetime import date, timedelta

import sqlalchemy as sa

from recon_pipeline.core.completeness import TRAILING_DAYS
from recon_pipeline.io.database import OPENAI_REQUESTS, Database


def trailing_record_counts(db: Database, day: date, conn: sa.Connection) -> dict[date, int]:
    """Records stored in `openai_requests` for each of the `TRAILING_DAYS` days before `day`
    (days with none are absent). `conn`: a transaction that ensured the table."""
    query = sa.text(
        f"SELECT usage_date, count(*) FROM {db.table(OPENAI_REQUESTS)}"
        " WHERE usage_date >= :first AND usage_date < :day GROUP BY usage_date"
    )
    first = day - timedelta(days=TRAILING_DAYS)
    rows = conn.execute(query, {"first": db.dialect.day(first), "day": db.dialect.day(day)}).all()
    return {date.fromisoformat(str(moment)[:10]): int(count) for moment, count in rows}
