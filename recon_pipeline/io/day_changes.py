"""What changed in a day since its results were stored, read in the database, for a re-run
that redoes only that (`core.incremental`, `defs.reconcile_incremental`).

PostgreSQL only (`Dialect.incremental_days`): the comparisons are joins of the day's
token_usage rows and OpenAI records with its stored reconciled_usage rows, and the parts are
read by COPY as a day's slices are (`Database.read_day_parts`). SQLite re-runs a changed day
in full.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from recon_pipeline.core.days import day_bounds
from recon_pipeline.core.output_tables import OPENAI_COLUMNS
from recon_pipeline.io.connections import local_settings, work_mem_at_least
from recon_pipeline.io.database import (
    OPENAI_REQUESTS,
    RECONCILED_USAGE,
    UNLOGGED_OPENAI_REQUESTS,
    Database,
)
from recon_pipeline.io.dialect_postgres import LOGGED_TYPES, epoch_us, record_hash_sql
from recon_pipeline.io.pg_copy import copy_out_parts
from recon_pipeline.io.request_ids import postgres_record_id, postgres_request_id
from recon_pipeline.io.write_back import MAX_ESTIMATE_CENTS

# Changed ids fetched at a time from the server-side cursor of `changed_ids`.
_STREAMED_IDS = 20_000
_PICO = "round({} * 10000000000)::bigint"
# OpenAI's fields a stored result shows of the record its row was matched to by id.
_RECORD_SHOWN = (
    ("model", "openai_model"),
    ("service_tier", "service_tier"),
    ("batch", "batch"),
    ("input_tokens", "openai_input_tokens"),
    ("cached_input_tokens", "openai_cached_input_tokens"),
    ("output_tokens", "openai_output_tokens"),
    ("reasoning_tokens", "openai_reasoning_tokens"),
    ("audio_ms", "openai_audio_ms"),
    ("source", "openai_source"),
)


@contextmanager
def _hash_joins(conn: sa.Connection) -> Iterator[None]:
    """Hash joins for the statements inside, which join a day with a day: with statistics of
    before the day was written (the results' own transaction sees rows no ANALYZE has), the
    planner picked a nested loop over the whole day, quadratic in its size (a 100,000-row
    day's matched records took minutes), or sorts spilled to disk for a merge join. No JIT:
    the costs that rule the others out would make it compile every statement (0.9 s). At
    least 1 GB for each hash (twice that with `hash_mem_multiplier`), so that a day's join
    stays in memory rather than spill in batches: at 256 MB the 10M-row day's basis hash
    spilled and took 49.7 s, against 2.2 s for 1M rows. Memory is taken as the hash grows.
    Restored after; a failed statement rolls the transaction back, and the settings too."""
    off = dict.fromkeys(("enable_nestloop", "enable_mergejoin", "jit"), "off")
    with local_settings(conn, off | {"work_mem": work_mem_at_least(conn, 1024 * 1024)}):
        yield


def _params(db: Database, day: date) -> dict[str, object]:
    start, end = day_bounds(day)
    return {"day": db.dialect.day(day), "start": start, "end": end}


def matched_records_fingerprint(db: Database, conn: sa.Connection, day: date) -> str:
    """A hash, summed over the day's OpenAI records its stored results matched to a row by
    id, of the fields their price depends on that the results do not show. Compared between
    the run that stored the results (in its own transaction) and the next."""
    query = sa.text(
        f"SELECT count(*)::text || ':' || coalesce(sum({record_hash_sql('o')}::numeric), 0)"
        f" FROM {db.table(OPENAI_REQUESTS)} o WHERE o.usage_date = :day AND EXISTS (SELECT 1"
        f" FROM {db.table(RECONCILED_USAGE)} r WHERE r.usage_date = :day"
        " AND r.match_method = 'request_id' AND r.matched_request_id = o.request_id)"
    )
    with _hash_joins(conn):
        return str(conn.execute(query, _params(db, day)).scalar_one())


def changed_ids(db: Database, conn: sa.Connection, day: date, at_most: int) -> list[str]:
    """The request ids whose rows or record changed since the day's results were stored
    (`core.incremental`): both the id a row carries now and the one its stored result holds.

    Read as the join finds them, and no further once more than `at_most` are found (then
    `at_most` + 1 of them are returned): a day with that many is run in full
    (`core.incremental.too_many_changed`), so the rest would be read for nothing."""
    optional = db.optional_usage_sql()
    estimate = (
        f"CASE WHEN abs(calculated_cost_cents) < {MAX_ESTIMATE_CENTS}"
        f" THEN {_PICO.format('calculated_cost_cents')} END"
    )
    now_row = (
        f"{optional['user_id']}::text, action_type::text, model_used::text,"
        f" input_tokens::bigint, output_tokens::bigint, {estimate},"
        f" {epoch_us('created_at')}, {postgres_request_id('openai_request_id')}"
    )
    stored_row = (
        "r.user_id, r.action_type, r.model_used, r.logged_input_tokens, r.logged_output_tokens,"
        f" {_PICO.format('r.estimated_cost_cents')}, {epoch_us('r.created_at')},"
        " r.openai_request_id"
    )
    shown = ", ".join(f"o.{a}" for a, _ in _RECORD_SHOWN)
    stored_shown = ", ".join(f"r.{b}" for _, b in _RECORD_SHOWN)
    query = sa.text(
        f"WITH u AS (SELECT id::text AS usage_id, ROW({now_row}) AS logged,"
        f" {postgres_request_id('openai_request_id')} AS request_id, actual_cost_cents,"
        f" reconciliation_status FROM {db.usage}"
        " WHERE created_at >= :start AND created_at < :end),"
        f" r AS NOT MATERIALIZED (SELECT * FROM {db.table(RECONCILED_USAGE)}"
        " WHERE usage_date = :day),"
        " changed AS ("
        " SELECT u.request_id AS now_id, r.openai_request_id AS stored_id"
        " FROM u FULL JOIN r ON u.usage_id = r.usage_id::text"
        " WHERE u.usage_id IS NULL OR r.usage_id IS NULL"
        " OR r.match_method IS DISTINCT FROM 'request_id'"
        f" OR u.logged IS DISTINCT FROM ROW({stored_row})"
        f" OR u.actual_cost_cents IS DISTINCT FROM {db.written_cost('r.actual_cost_cents')}"
        " OR u.reconciliation_status IS DISTINCT FROM r.reconciliation_status"
        " UNION ALL"
        " SELECT r.openai_request_id, NULL FROM r"
        f" LEFT JOIN {db.table(OPENAI_REQUESTS)} o"
        " ON o.usage_date = :day AND o.request_id = r.matched_request_id"
        " WHERE r.match_method = 'request_id'"
        f" AND (o.request_id IS NULL OR ROW({shown}) IS DISTINCT FROM ROW({stored_shown})))"
        " SELECT id FROM changed CROSS JOIN LATERAL (VALUES (now_id), (stored_id)) AS v(id)"
        " WHERE id IS NOT NULL"
    )
    found: set[str] = set()
    streamed = query.execution_options(yield_per=_STREAMED_IDS)  # a server-side cursor
    with _hash_joins(conn), conn.execute(streamed, _params(db, day)) as result:
        # A size each: `partitions()` without one fetched the whole result first.
        for ids in result.scalars().partitions(_STREAMED_IDS):
            found.update(ids)
            if len(found) > at_most:
                return sorted(found)[: at_most + 1]
    return sorted(found)


def read_changed_parts(
    db: Database,
    day: date,
    window: tuple[datetime, datetime],
    conn: sa.Connection,
    ids: list[str],
    directory: Path,
) -> tuple[list[Path], list[Path]]:
    """The day as one slice and the pass after it, as `Database.read_day_parts` gives them:
    the window's rows carrying a changed id, and the records carrying one (part 0); every
    row without an id, and every record no row of the window claims by id (the last part)."""
    db.check_usage_schema()
    dialect = db.dialect
    row_id, record_id = postgres_request_id("openai_request_id"), postgres_record_id("request_id")
    logged = (
        dialect.logged_select(
            db.optional_usage_sql(), f", CASE WHEN {row_id} IS NULL THEN -1 ELSE 0 END AS part"
        )
        + f" AND ({row_id} IS NULL OR {row_id} = ANY(%s::text[]))"
    )
    logged_paths = copy_out_parts(
        db.engine, logged, (*window, ids), LOGGED_TYPES, conn, 1, directory, "logged"
    )
    table = db.table(OPENAI_REQUESTS)
    names = [c for c in OPENAI_COLUMNS if c != "created_at"]
    # A record is claimed when a row of the window carries its id: one hash anti-join (an
    # OR'ed NOT EXISTS would be a subquery run once per record).
    records = (
        f"SELECT {', '.join(names)}, {epoch_us('created_at')} AS created_us,"
        f" CASE WHEN {record_id} = ANY(%s::text[]) THEN 0 ELSE -1 END AS part"
        f" FROM {table} LEFT JOIN (SELECT DISTINCT {row_id} AS claimed_id FROM {db.usage}"
        " WHERE created_at >= %s AND created_at < %s) AS c ON c.claimed_id = "
        f"{record_id} WHERE usage_date = %s AND ({record_id} IS NULL"
        f" OR {record_id} = ANY(%s::text[]) OR c.claimed_id IS NULL)"
    )
    with _hash_joins(conn):
        record_paths = copy_out_parts(
            db.engine,
            records,
            (ids, *window, day, ids),
            dialect._openai_types(names),
            conn,
            1,
            directory,
            "openai",
        )
    return logged_paths, record_paths


def clear_changed(db: Database, conn: sa.Connection, day: date, ids: list[str]) -> None:
    """Delete the stored results a partial run replaces (rows without an id, rows with a
    changed id) and the day's unlogged records, in the results' transaction."""
    conn.execute(
        sa.text(
            f"DELETE FROM {db.table(RECONCILED_USAGE)} WHERE usage_date = :day"
            " AND (openai_request_id IS NULL OR openai_request_id = ANY(CAST(:ids AS text[])))"
        ),
        _params(db, day) | {"ids": ids},
    )
    db.clear_day(conn, UNLOGGED_OPENAI_REQUESTS, day)


def kept_rollup(db: Database, conn: sa.Connection, day: date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The stored results of the day left after `clear_changed`, added up for the tally
    (`core.incremental.kept_tally`), and the ten kept discrepancies that move the most."""
    table = db.table(RECONCILED_USAGE)
    keys = "reconciliation_status, match_method, variance_class, openai_source"
    money = ", ".join(
        f"sum({_PICO.format(f'{name}_cents')}) AS {name}_pico"
        for name in ("estimated_cost", "actual_cost", "variance")
    )
    groups = pd.DataFrame(
        conn.execute(
            sa.text(
                f"SELECT {keys}, count(*) AS rows, {money} FROM {table}"
                f" WHERE usage_date = :day GROUP BY {keys}"
            ),
            _params(db, day),
        ).all(),
        columns=[
            *keys.split(", "),
            "rows",
            "estimated_cost_pico",
            "actual_cost_pico",
            "variance_pico",
        ],
    )
    largest = pd.DataFrame(
        conn.execute(
            sa.text(
                "SELECT usage_id::text AS usage_id, action_type, model_used, openai_request_id,"
                " variance_class, reconciliation_status,"
                f" {_PICO.format('estimated_cost_cents')} AS estimated_cost_pico,"
                f" {_PICO.format('actual_cost_cents')} AS actual_cost_pico,"
                f" {_PICO.format('variance_cents')} AS variance_pico FROM {table}"
                " WHERE usage_date = :day AND reconciliation_status = 'discrepancy'"
                " ORDER BY abs(variance_cents) DESC NULLS LAST LIMIT 10"
            ),
            _params(db, day),
        ).all(),
        columns=[
            "usage_id",
            "action_type",
            "model_used",
            "openai_request_id",
            "variance_class",
            "reconciliation_status",
            "estimated_cost_pico",
            "actual_cost_pico",
            "variance_pico",
        ],
    )
    for name in ("estimated_cost_pico", "actual_cost_pico", "variance_pico"):
        largest[name] = largest[name].astype("Int64")
    return groups, largest
