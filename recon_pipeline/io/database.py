"""The database side: read a day of `token_usage`, replace a day of an output table, write back.

PostgreSQL gets the fast path (COPY out and in through psycopg 3); SQLite, the embedded
demo, goes through plain SQLAlchemy. Every write of a day is one transaction: the day's
old rows are deleted and the new ones inserted together, so a reader sees either the old
day or the new one, and a failure leaves the old one.

Concurrent runs. On PostgreSQL each day's writes of the reconciliation (the write-back and
the per-day replacement of the tables it owns) run in a transaction that first takes
`pg_try_advisory_xact_lock` on a key derived from (usage table, day). A run that finds the
key taken skips that day (`day_transaction` yields None, `WriteBackResult.locked`), because
another run is writing the very same day; the lock ends with the transaction, and a
transaction never holds more than one such key, so runs can neither deadlock on them nor
leave one behind. `replace_days`, the generic replacement other assets use, waits instead,
on a key of (table, day). A transaction that writes the tables of several assets' steps at
once (a day read again whose figures are recomputed, `defs/settlement.py`) tries each of
their keys: it still never waits for one, so it cannot close a circle either.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from recon_pipeline.core import schema as s
from recon_pipeline.core.money import money_series
from recon_pipeline.core.openai_records import audio_ms_of
from recon_pipeline.core.output_tables import OPENAI_COLUMNS
from recon_pipeline.io.connections import (
    DatabaseConnectionError,
    begin_sqlite,
    connect_engine,
    lock_key,
)
from recon_pipeline.io.dialect import RECORD_HASH, Dialect, dialect_for
from recon_pipeline.io.dialect_postgres import column_type
from recon_pipeline.io.identifiers import qualified, validate_identifier
from recon_pipeline.io.stored_day import StoredDayChecks
from recon_pipeline.io.tables import (
    DAILY_VARIANCE_SUMMARY,
    DAY_INPUTS,
    DAY_SETTLEMENT,
    INVOICE_CHECK,
    INVOICE_GAP,
    MONEY_COLUMNS,
    MONTHLY_STATEMENT,
    OPENAI_DAILY_COSTS,
    OPENAI_DAILY_USAGE,
    OPENAI_REQUESTS,
    OUTPUT_TABLES,
    RECONCILED_USAGE,
    REQUIRED_USAGE_COLUMNS,
    UNLOGGED_OPENAI_REQUESTS,
    USAGE_COLUMNS,
    WRITE_BACK_ROWS,
    WRITTEN_USAGE_COLUMNS,
    Column,
    OutputTable,
    RowSecurityError,
    SchemaNotReadyError,
)
from recon_pipeline.io.whole_cents import half_even
from recon_pipeline.io.write_back import WriteBackResult, write_back_sql

__all__ = [
    "DAILY_VARIANCE_SUMMARY",
    "DAY_INPUTS",
    "DAY_SETTLEMENT",
    "INVOICE_CHECK",
    "INVOICE_GAP",
    "MONTHLY_STATEMENT",
    "OPENAI_DAILY_COSTS",
    "OPENAI_DAILY_USAGE",
    "OPENAI_REQUESTS",
    "OUTPUT_TABLES",
    "RECONCILED_USAGE",
    "REQUIRED_USAGE_COLUMNS",
    "UNLOGGED_OPENAI_REQUESTS",
    "USAGE_COLUMNS",
    "WRITE_BACK_ROWS",
    "WRITTEN_USAGE_COLUMNS",
    "Column",
    "Database",
    "DatabaseConnectionError",
    "OutputTable",
    "RowSecurityError",
    "SchemaNotReadyError",
    "WriteBackResult",
    "begin_sqlite",
    "column_type",
    "connect_engine",
    "lock_key",
]

_ROLLUP_TEXTS = (
    "action_type",
    "model_used",
    "openai_model",
    "reconciliation_status",
    "match_method",
)
_RESULT_COLUMNS = [
    "usage_date",
    "usage_id",
    "action_type",
    "model_used",
    "openai_model",
    "openai_request_id",
    "logged_input_tokens",
    "logged_output_tokens",
    "reconciliation_status",
    "match_method",
    "estimated_cost_pico",
    "actual_cost_pico",
    "variance_pico",
]


def _logged_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The dialect's rows as `schema.LOGGED_COLUMNS`: audio seconds in whole milliseconds,
    rounded as a record's, and missing where they are not a duration."""
    if "audio_seconds" in frame:
        seconds = pd.to_numeric(frame.pop("audio_seconds"), errors="coerce")
        ms, valid = audio_ms_of(seconds.to_numpy(np.float64, na_value=np.nan))
        frame["audio_ms"] = pd.arrays.IntegerArray(ms, ~valid)
    return frame.reindex(columns=list(s.LOGGED_COLUMNS)).astype(s.LOGGED_COLUMNS)


class Database(StoredDayChecks):
    """The pipeline's only door to the database; table names are validated identifiers.

    What differs between PostgreSQL and SQLite is `self.dialect`'s (`io/dialect.py`).
    """

    def __init__(
        self,
        engine: sa.Engine,
        usage_table: str = "token_usage",
        usage_schema: str | None = None,
        output_schema: str | None = None,
    ) -> None:
        self.engine = engine
        self.usage = qualified(usage_table, usage_schema)
        self._usage_table = validate_identifier(usage_table, "table name")
        self._usage_schema = usage_schema
        self._output_schema = output_schema if output_schema is not None else usage_schema
        if self._output_schema:
            validate_identifier(self._output_schema, "schema name")
        self.dialect: Dialect = dialect_for(engine, self.usage)
        self._usage_columns: set[str] | None = None
        self._ready: set[str] = set()
        self._whole_cents: bool | None = None

    def table(self, output: OutputTable) -> str:
        return qualified(output.name, self._output_schema)

    # -- reading ---------------------------------------------------------------------------

    def usage_columns(self) -> set[str]:
        if self._usage_columns is None:
            inspector = sa.inspect(self.engine)
            try:
                columns = inspector.get_columns(self._usage_table, schema=self._usage_schema)
            except sa.exc.NoSuchTableError:
                columns = []
            self._usage_columns = {c["name"] for c in columns}
        return self._usage_columns

    def check_usage_schema(self) -> None:
        """Fail early, and say how to fix it, when the migration has not been applied, or
        before anything is read or written when a column's type would give wrong results
        (`usage_types`, the rule recon-doctor and recon-migrate apply too)."""
        have = self.usage_columns()
        if not have:
            raise SchemaNotReadyError(f"table {self.usage} does not exist")
        missing = sorted(set(REQUIRED_USAGE_COLUMNS) - have)
        if missing:
            raise SchemaNotReadyError(
                f"{self.usage} lacks columns {missing}; apply the migration with `recon-migrate`"
                " (it reads RECON_DATABASE_URL, RECON_USAGE_SCHEMA and RECON_USAGE_TABLE)"
            )
        if self._whole_cents is None:
            self._whole_cents = self.dialect.check_usage_table()

    def written_cost(self, cents: str) -> str:
        """The SQL of the actual cost as token_usage stores it: whole cents rounded half to
        even when the application kept its column INTEGER (`io/whole_cents.py`)."""
        self.check_usage_schema()
        return half_even(cents) if self._whole_cents else cents

    def read_logged(
        self, start: datetime, end: datetime, conn: sa.Connection | None = None
    ) -> pd.DataFrame:
        """The application's rows created in [start, end), typed as `schema.LOGGED_COLUMNS`.

        An estimate that is not a usable amount (NaN, infinite, or nine million dollars and
        more for one request) is read as missing, so the row comes out as a discrepancy with
        class `missing_estimate` instead of stopping the day or wrapping around. `conn`:
        read inside that transaction.
        """
        self.check_usage_schema()
        frame = self.dialect.read_logged(conn, self.optional_usage_sql(), start, end)
        return _logged_frame(frame)

    def optional_usage_sql(self) -> dict[str, str]:
        have = self.usage_columns()
        return {
            "cached": "cached_input_tokens" if "cached_input_tokens" in have else "NULL",
            "user_id": "user_id" if "user_id" in have else "NULL",
            "created": "openai_created" if "openai_created" in have else "NULL",
            "audio": "audio_seconds" if "audio_seconds" in have else "NULL",
        }

    def read_day_parts(
        self,
        day: date,
        window: tuple[datetime, datetime],
        conn: sa.Connection,
        parts: int,
        directory: Path,
        rows: int = 0,
    ) -> tuple[list[Path], list[Path]]:
        """Both sides of a day, each read once into `parts` + 1 files in `directory` by a hash
        of the request id (`Dialect.read_logged_parts`): the window's rows, and the day's
        stored records. Read them back with `logged_part` and `openai_part`. `rows`: how
        many rows and records the day has in all (`DaySize`)."""
        self.check_usage_schema()
        logged = self.dialect.read_logged_parts(
            conn, self.optional_usage_sql(), *window, parts, directory, rows
        )
        names = [c for c in OPENAI_COLUMNS if c != "created_at"]
        table = self.table(OPENAI_REQUESTS)
        records = self.dialect.read_openai_parts(conn, table, names, day, parts, directory, rows)
        return logged, records

    def logged_part(self, path: Path) -> pd.DataFrame:
        return _logged_frame(self.dialect.logged_part(path))

    def logged_part_batches(self, path: Path) -> Iterator[pd.DataFrame]:
        for frame in self.dialect.logged_part_batches(path):
            yield _logged_frame(frame)

    def openai_part(self, path: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """A part's records typed as `OPENAI_COLUMNS`, and, where the read hashed them
        (`RECORD_HASH`), each record's `request_id` and `hash` (None: not hashed)."""
        frame = self.dialect.openai_part(path)
        hashes = None
        if RECORD_HASH in frame:
            hashes = frame[["request_id", RECORD_HASH]].rename(columns={RECORD_HASH: "hash"})
        return frame[list(OPENAI_COLUMNS)].astype(OPENAI_COLUMNS), hashes

    def read_openai_requests(self, day: date, conn: sa.Connection | None = None) -> pd.DataFrame:
        """The OpenAI records stored for a day's match window, typed as `OPENAI_COLUMNS`.

        `conn`: read inside that transaction (a `day_transaction` that ensured the table).
        """
        if conn is None:
            self.ensure_table(OPENAI_REQUESTS)
        names = [c for c in OPENAI_COLUMNS if c != "created_at"]
        frame = self.dialect.read_openai_requests(conn, self.table(OPENAI_REQUESTS), names, day)
        return frame[list(OPENAI_COLUMNS)].astype(OPENAI_COLUMNS)

    def pending_days(self, since: datetime, until: datetime) -> list[date]:
        """UTC days in [since, until) that still hold rows awaiting OpenAI's record."""
        self.check_usage_schema()
        query = sa.text(
            f"SELECT DISTINCT {self.dialect.utc_day_sql('created_at')} AS day FROM {self.usage}"
            " WHERE reconciliation_status = 'pending'"
            " AND created_at >= :since AND created_at < :until ORDER BY 1"
        )
        params = {"since": self.dialect.moment(since), "until": self.dialect.moment(until)}
        with self.engine.connect() as conn:
            return [
                v if isinstance(v, date) else date.fromisoformat(v)
                for (v,) in conn.execute(query, params)
            ]

    # -- writing ---------------------------------------------------------------------------

    def ensure_table(self, output: OutputTable) -> None:
        """Create an output table (and its indexes) the first time it is needed, and add the
        columns a table stored by an earlier release lacks (nullable, so its rows stay valid;
        a re-run of a day fills them).

        Where the dialect can tell from the catalogue that the table is complete, no DDL
        runs (no lock is queued for); otherwise the DDL is serialised per output schema
        (`Dialect.before_ddl`).
        """
        if output.name in self._ready:
            return
        indexes = self._index_names(output)
        qualified_indexes = [qualified(name, self._output_schema) for name in indexes]
        stored = [output.stored_name(c) for c in output.columns]
        table = self.table(output)
        if self.dialect.table_complete(table, qualified_indexes, stored):
            self._ready.add(output.name)
            return
        definitions = self._column_definitions(output)
        with self.engine.begin() as conn:
            self.dialect.before_ddl(conn, self._output_schema)
            conn.execute(sa.text(f"CREATE TABLE IF NOT EXISTS {table} ({definitions})"))
            have = {
                c["name"]
                for c in sa.inspect(conn).get_columns(output.name, schema=self._output_schema)
            }
            for column in output.columns:
                name = output.stored_name(column)
                if name not in have:
                    kind = self.dialect.sql_type(column)
                    conn.execute(sa.text(f'ALTER TABLE {table} ADD COLUMN "{name}" {kind}'))
            for columns, name in zip(output.indexes, indexes, strict=True):
                on = ", ".join(f'"{c}"' for c in columns)
                conn.execute(sa.text(f'CREATE INDEX IF NOT EXISTS "{name}" ON {table} ({on})'))
        self._ready.add(output.name)

    def _index_names(self, output: OutputTable) -> list[str]:
        return [
            validate_identifier(f"{output.name}_{'_'.join(columns)}_idx")
            for columns in output.indexes
        ]

    def _column_definitions(self, output: OutputTable) -> str:
        return ", ".join(
            f'"{output.stored_name(c)}" {self.dialect.sql_type(c)}' for c in output.columns
        )

    def day_lock_key(self, day: date, scope: str) -> int:
        """The advisory-lock key of one day of one table this usage table's reconciliation
        writes (`scope`: the table's name). Different tables of a day may be written at once,
        e.g. by the parallel steps of one run; the same table of a day by one run at a time."""
        return lock_key("recon_pipeline:day", self.usage, scope, day.isoformat())

    @contextmanager
    def day_transaction(
        self,
        day: date,
        scope: str,
        tables: Sequence[OutputTable] = (),
        also: Sequence[str] = (),
    ) -> Iterator[sa.Connection | None]:
        """One transaction for a day's writes, holding the day's advisory lock (and those of
        the scopes in `also`, tried the same way).

        Yields the connection, or None when another run holds the day (nothing is done
        then; the caller reports the day as skipped). Commits when the block ends, rolls
        back if it raises. `tables` are created beforehand, outside the transaction.
        """
        for output in tables:
            self.ensure_table(output)
        self.dialect.prepare_writes()  # e.g. catalogue look-ups, before the transaction
        with self.engine.connect() as conn, conn.begin():
            free = self.dialect.begin_day(conn, self.day_lock_key(day, scope)) and all(
                self.dialect.try_lock_day(conn, self.day_lock_key(day, other)) for other in also
            )
            if not free:
                yield None
                return
            yield conn

    def replace_day(
        self, conn: sa.Connection, output: OutputTable, frame: pd.DataFrame, day: date
    ) -> int:
        """Delete a day (a month: its first day) of an output table and insert `frame` (that
        partition's rows) in its place, inside the caller's transaction (see
        `day_transaction`)."""
        self.clear_day(conn, output, day)
        self.append_rows(conn, output, frame)
        return len(frame)

    def clear_day(self, conn: sa.Connection, output: OutputTable, day: date) -> None:
        """Delete a day of an output table in the caller's transaction: the first half of
        `replace_day`, for a day whose rows are then appended a slice at a time."""
        conn.execute(
            sa.text(f'DELETE FROM {self.table(output)} WHERE "{output.key}" = :day'),
            {"day": self.dialect.day(day)},
        )

    def append_rows(self, conn: sa.Connection, output: OutputTable, frame: pd.DataFrame) -> None:
        if not frame.empty:
            self.dialect.insert(conn, self.table(output), output, frame)

    def analyze(self, output: OutputTable) -> None:
        """Fresh statistics for an output table a day was just committed to, before its
        readers plan their queries: without them the planner guessed a group per ten rows for
        the day's rollup, sorted the 3M-row day on disk rather than hash it, and each of the
        three steps reading it took about 6 s instead of 1 (benchmarks/README.md). In a
        transaction of its own, so that its lock on the table is held only while it runs."""
        with self.engine.begin() as conn:
            self.dialect.analyze(conn, self.table(output))

    def replace_days(self, output: OutputTable, frame: pd.DataFrame, days: Sequence[date]) -> int:
        """Load-then-swap: for each day, delete its rows and insert the new ones, atomically.

        Each day is one transaction; on PostgreSQL it first waits for an advisory lock on
        (table, day), so two runs replacing the same day one after the other leave one copy
        of it, never both.
        """
        by_day = frame.groupby("usage_date", sort=False) if len(frame) else None
        written = 0
        for day in days:
            part = (
                by_day.get_group(day) if by_day is not None and day in by_day.groups else frame[:0]
            )
            with self.tables_day_transaction(day, (output,)) as conn:
                written += self.replace_day(conn, output, part, day)
        return written

    @contextmanager
    def tables_day_transaction(
        self, day: date, outputs: Sequence[OutputTable]
    ) -> Iterator[sa.Connection]:
        """One transaction that replaces a day of each of `outputs` together; on PostgreSQL
        it first waits for the advisory lock of (table, day) of each, in name order, so two
        such transactions never wait on each other in a circle."""
        for output in outputs:
            self.ensure_table(output)
        self.dialect.prepare_writes()
        with self.engine.begin() as conn:
            self.lock_tables_day(conn, day, outputs)
            yield conn

    def lock_tables_day(
        self, conn: sa.Connection, day: date, outputs: Sequence[OutputTable]
    ) -> None:
        """Wait for the (table, day) lock of each of `outputs`, in name order, until the
        transaction on `conn` ends (see `tables_day_transaction`)."""
        for output in sorted(outputs, key=lambda o: o.name):
            key = lock_key("recon_pipeline:table_day", self.table(output), day.isoformat())
            self.dialect.lock_table_day(conn, key)

    def write_back(self, day: date, reconciled_at: datetime) -> WriteBackResult:
        """Copy the day's stored results onto `token_usage` in a transaction of its own.

        One transaction holding the day's advisory lock: if another run holds it, nothing is
        written and the result says `locked`. See `write_back_rows` for what is written.
        """
        with self.write_back_transaction(day) as conn:
            if conn is None:
                return WriteBackResult(0, 0, 0, locked=True)
            return self.write_back_rows(conn, day, reconciled_at)

    @contextmanager
    def write_back_transaction(self, day: date) -> Iterator[sa.Connection | None]:
        """The transaction a day's write-back runs in, holding the day's lock on token_usage
        (None: another run holds it). Concurrent with the day's `day_transaction` of the
        result tables on PostgreSQL, so the UPDATE runs while the results are stored."""
        self.check_usage_schema()
        with self.day_transaction(day, self._usage_table, (RECONCILED_USAGE,)) as conn:
            yield conn

    @contextmanager
    def write_back_beside(
        self, day: date, results_conn: sa.Connection
    ) -> Iterator[sa.Connection | None]:
        """The connection the day's write-back runs on while the results are stored on
        `results_conn`: its own `write_back_transaction` where the database allows a
        second writer (None: another run holds the day), else `results_conn` itself, and
        the write-back then follows the results on it."""
        if not self.dialect.parallel_write_back:
            yield results_conn
            return
        with self.write_back_transaction(day) as conn:
            yield conn

    def cancel(self, conn: sa.Connection) -> None:
        """Stop the statement running on `conn` (from another thread): its transaction then
        rolls back, e.g. the write-back's when storing the results failed."""
        self.dialect.cancel(conn)

    def write_back_rows(
        self,
        conn: sa.Connection,
        day: date,
        reconciled_at: datetime,
        results: pd.DataFrame | None = None,
        snapshot: str | None = None,
    ) -> WriteBackResult:
        """Set `actual_cost_cents`, `reconciliation_status` and `reconciled_at` on the day's
        token_usage rows from `results` (the core's frame; on PostgreSQL COPYed into a
        temporary table), or from the stored reconciled_usage day when None.

        Only rows whose status or cost differs are touched, so re-running an unchanged day
        updates nothing. A row the application changed since it was read (request id or
        estimate) keeps its values and is counted in `rows_disagreeing`; on PostgreSQL it is
        counted by the same UPDATE, which rewrites that row with its own values (so an
        application trigger ON UPDATE sees it) rather than join the day a second time. Rows
        the application inserts meanwhile are not in the results, so they are not touched.
        `snapshot`: the snapshot the results were read in (`Dialect.read_snapshot`); a row
        written since, in any column, raises the transaction's flag that
        `Dialect.rows_changed_since` reads. On PostgreSQL, called once per part of a day (each
        row in one part), in the day's one write-back transaction; on SQLite once for the day,
        from the stored day. See `io/write_back.py`.
        """
        staged = None if results is None else self.stage_write_back(conn, results)
        if staged is not None:
            # In key order: the UPDATE joins by primary key (`io.write_back._BY_KEY`).
            source = f"(SELECT * FROM {staged} ORDER BY usage_id)"
            considered, where = len(results), ""
        else:
            source = self.table(RECONCILED_USAGE)
            where = " AND r.usage_date = :day"
            considered = conn.execute(
                sa.text(f"SELECT count(*) FROM {source} WHERE usage_date = :day"),
                {"day": self.dialect.day(day)},
            ).scalar_one()
        sql = write_back_sql(
            self.usage,
            source,
            where,
            cost=self.written_cost("r.actual_cost_cents"),
            same_estimate=self.dialect.same_estimate(self.usage),
            request_id=self.dialect.request_id(f"{self.usage}.openai_request_id"),
            unchanged_since=self.dialect.unchanged_since_sql(self.usage),
            snapshot=snapshot,
        )
        updated, disagreeing = self.dialect.write_back_update(
            conn, sql, day, reconciled_at, lambda: self.count_disagreeing(day, conn)
        )
        return WriteBackResult(
            rows_considered=int(considered),
            rows_updated=int(updated),
            rows_disagreeing=int(disagreeing),
        )

    def stage_write_back(self, conn: sa.Connection, results: pd.DataFrame) -> str | None:
        """Stage a part's results for `write_back_rows` in `conn`'s transaction; the table's
        name, or None where the write-back reads the stored day instead."""
        definitions = self._column_definitions(WRITE_BACK_ROWS)
        return self.dialect.stage_write_back(conn, results, definitions)

    # -- reading the outputs ---------------------------------------------------------------

    def read_day(
        self,
        output: OutputTable,
        day: date,
        columns: Sequence[str] | None = None,
        conn: sa.Connection | None = None,
    ) -> pd.DataFrame:
        """A stored day of an output table, in the core's names and types (money in pico).

        `conn`: read inside that transaction (e.g. a `day_transaction`) rather than a new one.
        """
        if conn is None:
            self.ensure_table(output)
        chosen = [c for c in output.columns if columns is None or output.frame_name(c) in columns]
        frame = self.dialect.read_day(conn, self.table(output), output, day, chosen)
        for column in chosen:
            if column.kind == "date":
                frame[output.frame_name(column)] = day
        return frame[[output.frame_name(c) for c in chosen]]

    def read_results(self, day: date, conn: sa.Connection | None = None) -> pd.DataFrame:
        """The stored per-request results of a day that the summaries and invoice check read."""
        return self.read_day(RECONCILED_USAGE, day, _RESULT_COLUMNS, conn=conn)

    def read_results_rollup(self, day: date, conn: sa.Connection | None = None) -> pd.DataFrame:
        """A stored day of results added up by route, model, OpenAI's model, status, match
        method and whether a request id was logged, with a `requests` count: all the summary and the
        invoice check need (`summarise.request_counts`), without moving every row out.

        Sums are exact: NUMERIC on PostgreSQL, integer pico-dollars on SQLite; a money sum
        is NULL where no row of the group has a value, as pandas' `sum(min_count=1)`.
        """
        d = self.dialect
        sums = {
            **{t: d.bigint_sum(t) for t in ("logged_input_tokens", "logged_output_tokens")},
            **{f"{m}_pico": d.pico_sum(f"{m}_cents") for m in MONEY_COLUMNS},
        }
        select = (
            f"SELECT {', '.join(_ROLLUP_TEXTS)}, openai_request_id IS NOT NULL AS with_request_id,"
            f" count(*) AS requests, {', '.join(f'{v} AS {k}' for k, v in sums.items())}"
            f" FROM {self.table(RECONCILED_USAGE)} WHERE usage_date = {d.day_param()}"
            " GROUP BY 1, 2, 3, 4, 5, 6"
        )
        money = [f"{m}_pico" for m in MONEY_COLUMNS]
        types = {
            **dict.fromkeys(_ROLLUP_TEXTS, pa.string()),
            "with_request_id": pa.bool_(),
            **dict.fromkeys(["requests", *sums], pa.int64()),
            **dict.fromkeys(money, d.pico_sum_type),
        }
        if conn is None:
            self.ensure_table(RECONCILED_USAGE)
        frame = d.select_frame(conn, select, day, types)
        frame["requests"] = frame["requests"].astype(np.int64)
        for name in money:  # a group's sum may leave int64: exact either way
            frame[name] = money_series(frame[name], frame.index)
        return frame.assign(usage_date=day)
