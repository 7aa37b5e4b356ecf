"""What the checks ask of a stored day: do its summary and its rows add up, and does
`token_usage` agree with the results. A part of `Database`, kept apart so each room stays
small."""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa

from recon_pipeline.core.days import day_bounds
from recon_pipeline.io.connections import connection
from recon_pipeline.io.dialect import Dialect
from recon_pipeline.io.tables import (
    DAILY_VARIANCE_SUMMARY,
    MONEY_COLUMNS,
    RECONCILED_USAGE,
)


class StoredDayChecks:
    """Mixed into `Database`, whose engine, dialect, usage table, `table()` and
    `written_cost()` it uses."""

    engine: sa.Engine
    dialect: Dialect
    usage: str

    def summary_matches_rows(self, day: date, conn: sa.Connection | None = None) -> bool:
        """Whether the stored summary of a day adds up to its stored rows (exact on PostgreSQL)."""
        rows, summary = self.table(RECONCILED_USAGE), self.table(DAILY_VARIANCE_SUMMARY)
        sums = ", ".join(f"coalesce(sum({m}_cents), 0)" for m in MONEY_COLUMNS)
        with connection(self.engine, conn) as reader:
            params = {"day": self.dialect.day(day)}
            from_rows = reader.execute(
                sa.text(f"SELECT count(*), {sums} FROM {rows} WHERE usage_date = :day"), params
            ).one()
            from_summary = reader.execute(
                sa.text(
                    f"SELECT coalesce(sum(requests), 0), {sums} FROM {summary}"
                    " WHERE usage_date = :day"
                ),
                params,
            ).one()
        return self.dialect.sums_equal(from_rows, from_summary)

    def count_disagreeing(self, day: date, conn: sa.Connection | None = None) -> int:
        """token_usage rows of the day whose status or actual cost differ from the results."""
        query = sa.text(
            f"SELECT count(*) FROM {self.table(RECONCILED_USAGE)} AS r"
            f" JOIN {self.usage} AS t ON t.id = r.usage_id WHERE r.usage_date = :day"
            f" AND (t.actual_cost_cents IS DISTINCT FROM {self.written_cost('r.actual_cost_cents')}"
            " OR t.reconciliation_status IS DISTINCT FROM r.reconciliation_status)"
        )
        with connection(self.engine, conn) as reader:
            return int(reader.execute(query, {"day": self.dialect.day(day)}).scalar_one())

    def count_without_result(self, day: date) -> int:
        """token_usage rows created on the day that have no row in reconciled_usage (e.g.
        inserted by the application after the day was read)."""
        start, end = day_bounds(day)
        query = sa.text(
            f"SELECT count(*) FROM {self.usage} AS t"
            " WHERE t.created_at >= :start AND t.created_at < :end AND NOT EXISTS ("
            f" SELECT 1 FROM {self.table(RECONCILED_USAGE)} AS r"
            " WHERE r.usage_date = :day AND r.usage_id = t.id)"
        )
        d = self.dialect
        params = {"day": d.day(day), "start": d.moment(start), "end": d.moment(end)}
        with self.engine.connect() as conn:
            return int(conn.execute(query, params).scalar_one())
