"""The write-back: a day's results copied onto `token_usage`'s three reconciliation columns.

Only rows whose status or cost differs are touched, so re-running an unchanged day updates
nothing. A row the application changed since it was read (request id or estimate) keeps its
values and is counted as disagreeing. On PostgreSQL each part's results (a slice, or a group
of rows without an id) are staged by COPY into a temporary table and one UPDATE … FROM it
both applies and counts, all in the day's one write-back transaction; on SQLite the stored
day of `reconciled_usage` is the source and a second query counts. Whole cents: see
`whole_cents.py`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import date, datetime

import pandas as pd
import sqlalchemy as sa

from recon_pipeline.io.connections import local_settings, sqlite_ts, work_mem_at_least
from recon_pipeline.io.pg_copy import copy_in
from recon_pipeline.io.tables import WRITE_BACK_ROWS

# Reconciliation values that fit the int64 pico-dollar columns: an estimate at or above this
# many cents (or NaN, or infinite) is read as missing, never as a wrapped or rounded number.
# It bounds one row, not a day: sums of rows are exact past int64 (`core/money.py`). Kept at
# 9 million USD rather than lowered to a "plausible" call price: it is the representation's
# bound, and a lower one would silently turn large but real estimates into missing ones,
# where a discrepancy (over_estimate) is the honest verdict.
MAX_ESTIMATE_CENTS = 900_000_000
# A staged row in memory: measured 115 bytes in a hash table, the largest of its uses (a
# sort into key order now; the planner's hash join without an index on id); the rest is
# headroom.
_STAGED_BYTES_PER_ROW = 160
_DISTINCT = "IS DISTINCT FROM"
# The write-back transaction's flag: a row it considered had changed since the day was read.
CHANGED_FLAG = "recon_pipeline.changed_since_read"
# A day's write-back is one UPDATE per part, each joining its staged rows, in key order, to
# token_usage's rows by primary key: each row is visited once in all, whatever the number of
# parts, where a hash join would scan the whole table once per part (quadratic in the day).
# It needs an index on id (the primary key, docs/adopting.md; `recon-doctor` warns without).
# No JIT: a part's cost would make it compile the UPDATE once per part.
_BY_KEY = {"enable_hashjoin": "off", "enable_mergejoin": "off", "jit": "off"}


@dataclass(frozen=True)
class WriteBackResult:
    """A day's write-back, or one part's (added up into the day's). `locked`: another run
    held the day, nothing was written."""

    rows_considered: int
    rows_updated: int
    rows_disagreeing: int = 0
    locked: bool = False

    def __add__(self, other: WriteBackResult) -> WriteBackResult:
        """A day's write-back from its parts' (each part's rows updated by its own UPDATE)."""
        return WriteBackResult(
            self.rows_considered + other.rows_considered,
            self.rows_updated + other.rows_updated,
            self.rows_disagreeing + other.rows_disagreeing,
            self.locked or other.locked,
        )


@dataclass(frozen=True)
class WriteBackSql:
    """The SQL pieces of one day's UPDATE, shared by both databases."""

    usage: str
    cost: str
    join: str
    differs: str
    unchanged_by_app: str
    params: dict[str, object] = field(default_factory=dict)
    # The staged rows and their token_usage rows, as a read: `join` without the flag's test.
    pairs: str = ""


def write_back_sql(
    usage: str,
    source: str,
    where: str,
    cost: str,
    same_estimate: str,
    request_id: str,
    unchanged_since: str | None = None,
    snapshot: str | None = None,
) -> WriteBackSql:
    """The UPDATE's pieces: `source` the results (aliased r), `cost` the written cost's SQL;
    `request_id`: SQL of the row's request id as it was read (`Dialect.request_id`);
    `unchanged_since`: SQL that the row is the version the results were read from, in the
    snapshot `snapshot` (`Dialect.unchanged_since_sql`), when the database can tell."""
    differs = (
        f"({usage}.actual_cost_cents {_DISTINCT} {cost}"
        f" OR {usage}.reconciliation_status {_DISTINCT} r.reconciliation_status)"
    )
    # A row the application changed since it was read keeps its values; the check
    # token_usage_agrees_with_results then reports it, and the next run reconciles it.
    unchanged_by_app = (
        f"({request_id} IS NOT DISTINCT FROM r.openai_request_id AND {same_estimate})"
    )
    join = f" FROM {source} AS r WHERE {usage}.id = r.usage_id{where}"
    pairs = f" FROM {source} AS r JOIN {usage} ON {usage}.id = r.usage_id{where}"
    params: dict[str, object] = {}
    if snapshot is not None and unchanged_since:
        # Always true; a row version newer than the read snapshot (written by the
        # application meanwhile, in any column) raises a flag of the transaction, which
        # `Dialect.rows_changed_since` reads: the day's inputs then are not recorded as read.
        # Naming r keeps the test on the joined rows, never on the rest of the table.
        join += (
            f" AND (r.usage_id IS NULL OR {unchanged_since}"
            f" OR set_config('{CHANGED_FLAG}', 'yes', true) <> '')"
        )
        params["snapshot"] = snapshot
    return WriteBackSql(usage, cost, join, differs, unchanged_by_app, params, pairs)


def postgres_same_estimate(usage: str) -> str:
    """The estimate as read_logged read it: NaN or absurd amounts count as missing."""
    return (
        f"(CASE WHEN abs({usage}.calculated_cost_cents) < {MAX_ESTIMATE_CENTS}"
        f" THEN round({usage}.calculated_cost_cents, 10) END)"
        " IS NOT DISTINCT FROM r.estimated_cost_cents"
    )


def sqlite_same_estimate(usage: str) -> str:
    return (
        f"(({usage}.calculated_cost_cents IS NULL AND r.estimated_cost_cents IS NULL)"
        f" OR abs({usage}.calculated_cost_cents - r.estimated_cost_cents) < 0.000001)"
    )


def postgres_update(
    conn: sa.Connection,
    sql: WriteBackSql,
    day: date,
    reconciled_at: datetime,
    by_key: bool,
    rewritable: bool = False,
) -> tuple[int, int]:
    """One pass: rows that differ are updated where the app left them unchanged, and the
    others, counted as disagreeing, keep their values (rewritten with their own values, so
    an application trigger ON UPDATE sees them). No second join to count. `by_key`: join
    by token_usage's index on id (`_BY_KEY`); without one, the planner's own join.

    A row is counted as updated only if it was stored as written. `rewritable`: the table
    has an UPDATE row trigger (`PostgresDialect.update_rewritable`), which may skip a row
    (it returns nothing) or change it after the write: the part's rows that still differ
    are then counted after the UPDATE, by key, as SQLite always does."""
    usage = sql.usage
    kept = {
        "actual_cost_cents": sql.cost,
        "reconciliation_status": "r.reconciliation_status",
        "reconciled_at": "CAST(:at AS timestamptz)",
    }
    sets = ", ".join(
        f"{name} = CASE WHEN {sql.unchanged_by_app} THEN {value} ELSE {usage}.{name} END"
        for name, value in kept.items()
    )
    # In RETURNING, token_usage's columns are the row as stored, after any trigger.
    as_written = f"NOT {sql.differs}"
    query = sa.text(
        f"WITH changed AS (UPDATE {usage} SET {sets}{sql.join} AND {sql.differs}"
        f" RETURNING {sql.unchanged_by_app} AND {as_written} AS written)"
        " SELECT count(*) FILTER (WHERE written), count(*) FILTER (WHERE NOT written)"
        " FROM changed"
    )
    params = {"day": day, "at": reconciled_at, **sql.params}
    with local_settings(conn, _BY_KEY) if by_key else nullcontext():
        updated, disagreeing = conn.execute(query, params).one()
        if rewritable:
            still = sa.text(f"SELECT count(*){sql.pairs} WHERE {sql.differs}")
            disagreeing = conn.execute(still, params).scalar_one()
    return int(updated), int(disagreeing)


def sqlite_update(
    conn: sa.Connection, sql: WriteBackSql, day: date, reconciled_at: datetime
) -> int:
    """The UPDATE on SQLite; the caller counts the disagreeing rows afterwards."""
    query = sa.text(
        f"UPDATE {sql.usage} SET actual_cost_cents = r.actual_cost_cents,"
        f" reconciliation_status = r.reconciliation_status, reconciled_at = :at"
        f"{sql.join} AND {sql.differs} AND {sql.unchanged_by_app}"
    )
    params = {"day": day.isoformat(), "at": sqlite_ts(reconciled_at)}
    return int(conn.execute(query, params).rowcount)


def stage_results(conn: sa.Connection, definitions: str, results: pd.DataFrame) -> str:
    """COPY the columns the write-back needs of one part's results into a temporary table,
    replacing the part staged before, dropped at commit; `definitions`: the staging table's
    column definitions in this database's types."""
    staging = f"pg_temp.{WRITE_BACK_ROWS.name}"
    conn.execute(sa.text(f"DROP TABLE IF EXISTS {staging}"))
    conn.execute(
        sa.text(f"CREATE TEMPORARY TABLE {WRITE_BACK_ROWS.name} ({definitions}) ON COMMIT DROP")
    )
    copy_in(conn, staging, WRITE_BACK_ROWS, results)
    # Enough memory to sort the part into key order (`_BY_KEY`), or hash it without an index
    # on id, in memory. Local to this transaction, never lower than the session's setting.
    kilobytes = min(len(results) * _STAGED_BYTES_PER_ROW // 1024, 1024 * 1024)
    work_mem = work_mem_at_least(conn, kilobytes)
    conn.execute(sa.text("SELECT set_config('work_mem', :v, true)"), {"v": work_mem})
    if len(results) >= 100_000:  # a small part plans well from the table's size
        conn.execute(sa.text(f"ANALYZE {staging}"))
    return staging
