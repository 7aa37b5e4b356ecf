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
on a key of (table, day).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa

from recon_pipeline.core import schema as s
from recon_pipeline.io.identifiers import qualified, validate_identifier
from recon_pipeline.io.secrets import masked_url, scrub_url_secrets

_ARROW_TYPES = {"object": pa.string(), "bool": pa.bool_(), "int64": pa.int64()}


class SchemaNotReadyError(RuntimeError):
    """`token_usage` lacks the reconciliation columns: the migration has not been applied."""


class DatabaseConnectionError(RuntimeError):
    """The database URL does not parse or the server cannot be reached; the message shows the
    URL with its password masked and quotes the driver's error with the password removed."""


def connect_engine(raw_url: str, application_name: str = "recon_pipeline") -> sa.Engine:
    """An engine for `raw_url`, tried once; no error it raises carries the password.

    On PostgreSQL the connections carry `application_name` unless the URL gives one.
    """
    try:
        url = sa.make_url(raw_url)
    except Exception:
        # SQLAlchemy quotes the whole string, password included.
        raise DatabaseConnectionError(
            "the database URL is not a valid SQLAlchemy URL (its value is not shown)"
        ) from None
    shown = masked_url(raw_url)
    connect_args = {}
    if url.get_backend_name() == "postgresql" and "application_name" not in url.query:
        connect_args["application_name"] = application_name
    engine = None
    try:
        engine = sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
        with engine.connect():
            pass
    except Exception as error:
        if engine is not None:
            engine.dispose()
        cause = getattr(error, "orig", None) or error
        detail = " ".join(str(cause).split()) or type(cause).__name__
        detail = scrub_url_secrets(detail, raw_url)
        raise DatabaseConnectionError(f"cannot connect to {shown}: {detail}") from None
    return engine


@dataclass(frozen=True)
class Column:
    """An output column. kind: text, bigint, float, bool, date, timestamp, money, usage_id."""

    name: str
    kind: str


_PG_TYPES = {
    "text": "text",
    "bigint": "bigint",
    "float": "double precision",
    "bool": "boolean",
    "date": "date",
    "timestamp": "timestamptz",
    "money": "numeric(24,10)",
}
_SQLITE_TYPES = {
    "text": "TEXT",
    "bigint": "INTEGER",
    "float": "REAL",
    "bool": "INTEGER",
    "date": "TEXT",
    "timestamp": "TEXT",
    "money": "NUMERIC",
    "usage_id": "TEXT",
}


@dataclass(frozen=True)
class OutputTable:
    """A table the pipeline owns, replaced one `usage_date` at a time.

    Money columns arrive from the core as `<name>_pico` integers and are stored as exact
    NUMERIC cents named `<name>_cents`.
    """

    name: str
    columns: tuple[Column, ...]
    indexes: tuple[tuple[str, ...], ...] = ()

    def stored_name(self, column: Column) -> str:
        return f"{column.name}_cents" if column.kind == "money" else column.name

    def frame_name(self, column: Column) -> str:
        return f"{column.name}_pico" if column.kind == "money" else column.name


def _cols(*spec: str) -> tuple[Column, ...]:
    return tuple(Column(*item.split(":")) for item in spec)


OPENAI_REQUESTS = OutputTable(
    "openai_requests",
    _cols(
        "usage_date:date",
        "request_id:text",
        "created_at:timestamp",
        "model:text",
        "service_tier:text",
        "batch:bool",
        "input_tokens:bigint",
        "cached_input_tokens:bigint",
        "output_tokens:bigint",
        "reasoning_tokens:bigint",
        "input_audio_tokens:bigint",
        "output_audio_tokens:bigint",
        "audio_ms:bigint",
        "source:text",
    ),
    indexes=(("usage_date",), ("created_at",)),
)
RECONCILED_USAGE = OutputTable(
    "reconciled_usage",
    _cols(
        "usage_date:date",
        "usage_id:usage_id",
        "user_id:text",
        "action_type:text",
        "model_used:text",
        "openai_request_id:text",
        "created_at:timestamp",
        "openai_model:text",
        "service_tier:text",
        "batch:bool",
        "logged_input_tokens:bigint",
        "logged_output_tokens:bigint",
        "openai_input_tokens:bigint",
        "openai_cached_input_tokens:bigint",
        "openai_output_tokens:bigint",
        "openai_reasoning_tokens:bigint",
        "openai_audio_ms:bigint",
        "estimated_cost:money",
        "actual_cost:money",
        "variance:money",
        "variance_pct:float",
        "variance_class:text",
        "reconciliation_status:text",
        "model_mismatch:bool",
        "token_mismatch:bool",
        "price_status:text",
        "openai_source:text",
    ),
    indexes=(("usage_date",), ("usage_id",)),
)
UNLOGGED_OPENAI_REQUESTS = OutputTable(
    "unlogged_openai_requests",
    _cols(
        "usage_date:date",
        "request_id:text",
        "created_at:timestamp",
        "model:text",
        "service_tier:text",
        "batch:bool",
        "input_tokens:bigint",
        "cached_input_tokens:bigint",
        "output_tokens:bigint",
        "reasoning_tokens:bigint",
        "audio_ms:bigint",
        "actual_cost:money",
        "price_status:text",
        "variance_class:text",
        "source:text",
    ),
    indexes=(("usage_date",),),
)
DAILY_VARIANCE_SUMMARY = OutputTable(
    "daily_variance_summary",
    _cols(
        "usage_date:date",
        "action_type:text",
        "model_used:text",
        "requests:bigint",
        *(f"{status}:bigint" for status in s.STATUSES),
        "estimated_cost:money",
        "actual_cost:money",
        "variance:money",
        "match_rate:float",
    ),
    indexes=(("usage_date",),),
)
OPENAI_DAILY_USAGE = OutputTable(
    "openai_daily_usage",
    _cols(
        "usage_date:date",
        "endpoint:text",
        "model:text",
        "batch:bool",
        "service_tier:text",
        "project_id:text",
        "input_tokens:bigint",
        "input_cached_tokens:bigint",
        "output_tokens:bigint",
        "input_audio_tokens:bigint",
        "output_audio_tokens:bigint",
        "num_model_requests:bigint",
        "seconds:bigint",
    ),
    indexes=(("usage_date",),),
)
OPENAI_DAILY_COSTS = OutputTable(
    "openai_daily_costs",
    _cols("usage_date:date", "line_item:text", "project_id:text", "amount:money", "currency:text"),
    indexes=(("usage_date",),),
)
INVOICE_CHECK = OutputTable(
    "invoice_check",
    _cols(
        "usage_date:date",
        "model:text",
        "openai_requests:bigint",
        "openai_input_tokens:bigint",
        "openai_output_tokens:bigint",
        "logged_requests:bigint",
        "logged_input_tokens:bigint",
        "logged_output_tokens:bigint",
        "billed:money",
        "reconciled_actual:money",
        "unlogged_actual:money",
        "unattributed:money",
        "unattributed_share:float",
        "billed_source:text",
    ),
    indexes=(("usage_date",),),
)
OUTPUT_TABLES = (
    OPENAI_DAILY_USAGE,
    OPENAI_DAILY_COSTS,
    INVOICE_CHECK,
    OPENAI_REQUESTS,
    RECONCILED_USAGE,
    UNLOGGED_OPENAI_REQUESTS,
    DAILY_VARIANCE_SUMMARY,
)


@dataclass(frozen=True)
class WriteBackResult:
    """One day's write-back. `locked`: another run held the day, nothing was written."""

    rows_considered: int
    rows_updated: int
    rows_disagreeing: int = 0
    locked: bool = False


# Reconciliation values that fit the int64 pico-dollar columns: an estimate at or above this
# many cents (or NaN, or infinite) is read as missing, never as a wrapped or rounded number.
_MAX_ESTIMATE_CENTS = 900_000_000


def lock_key(*parts: str) -> int:
    """A signed 64-bit advisory-lock key for the parts (stable across processes and hosts)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Database:
    """The pipeline's only door to the database; table names are validated identifiers."""

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
        self.is_postgres = engine.dialect.name == "postgresql"
        self._usage_columns: set[str] | None = None
        self._ready: set[str] = set()
        self._id_type: str | None = None

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
        """Fail early, and say how to fix it, when the migration has not been applied."""
        have = self.usage_columns()
        if not have:
            raise SchemaNotReadyError(f"table {self.usage} does not exist")
        needed = {
            "id",
            "action_type",
            "model_used",
            "input_tokens",
            "output_tokens",
            "calculated_cost_cents",
            "created_at",
            "openai_request_id",
            "actual_cost_cents",
            "reconciled_at",
            "reconciliation_status",
        }
        missing = sorted(needed - have)
        if missing:
            raise SchemaNotReadyError(
                f"{self.usage} lacks columns {missing}; apply the migration with `recon-migrate`"
                " (it reads RECON_DATABASE_URL, RECON_USAGE_SCHEMA and RECON_USAGE_TABLE)"
            )

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
        have = self.usage_columns()
        cached = "cached_input_tokens" if "cached_input_tokens" in have else "NULL"
        user = "user_id" if "user_id" in have else "NULL"
        if self.is_postgres:
            frame = self._copy_out(
                f"SELECT id::text AS usage_id, {user}::text AS user_id, action_type::text,"
                f" model_used::text, input_tokens::bigint, output_tokens::bigint,"
                f" {cached}::bigint AS cached_input_tokens,"
                f" CASE WHEN abs(calculated_cost_cents) < {_MAX_ESTIMATE_CENTS}"
                f" THEN round(calculated_cost_cents * 10000000000)::bigint END"
                f" AS calculated_cost_pico,"
                f" (extract(epoch FROM created_at) * 1000000)::bigint AS created_us,"
                f" openai_request_id::text"
                f" FROM {self.usage} WHERE created_at >= %s AND created_at < %s",
                (start, end),
                {
                    "usage_id": pa.string(),
                    "user_id": pa.string(),
                    "action_type": pa.string(),
                    "model_used": pa.string(),
                    "openai_request_id": pa.string(),
                    "input_tokens": pa.int64(),
                    "output_tokens": pa.int64(),
                    "cached_input_tokens": pa.int64(),
                    "calculated_cost_pico": pa.int64(),
                    "created_us": pa.int64(),
                },
                conn,
            )
            frame["created_at"] = pd.to_datetime(frame.pop("created_us"), unit="us", utc=True)
        else:
            query = sa.text(
                f"SELECT CAST(id AS TEXT) AS usage_id, CAST({user} AS TEXT) AS user_id,"
                f" action_type, model_used, input_tokens, output_tokens,"
                f" {cached} AS cached_input_tokens,"
                f" CAST(round(calculated_cost_cents * 10000000000) AS INTEGER)"
                f" AS calculated_cost_pico, created_at, openai_request_id"
                f" FROM {self.usage} WHERE created_at >= :start AND created_at < :end"
            )
            with _connection(self.engine, conn) as reader:
                frame = pd.read_sql_query(
                    query, reader, params={"start": _sqlite_ts(start), "end": _sqlite_ts(end)}
                )
            frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True, format="ISO8601")
        # Missing text is None on both backends (pandas' SQLite path would give NaN).
        for column in ("usage_id", "user_id", "action_type", "model_used", "openai_request_id"):
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
        blank = frame["openai_request_id"].isin([""])
        frame.loc[blank, "openai_request_id"] = None
        return frame.reindex(columns=list(s.LOGGED_COLUMNS)).astype(s.LOGGED_COLUMNS)

    def read_openai_requests(self, day: date, conn: sa.Connection | None = None) -> pd.DataFrame:
        """The OpenAI records stored for a day's match window, typed as `schema.OPENAI_COLUMNS`.

        `conn`: read inside that transaction (a `day_transaction` that ensured the table).
        """
        if conn is None:
            self.ensure_table(OPENAI_REQUESTS)
        table = self.table(OPENAI_REQUESTS)
        names = [c for c in s.OPENAI_COLUMNS if c != "created_at"]
        if self.is_postgres:
            frame = self._copy_out(
                f"SELECT {', '.join(names)},"
                f" (extract(epoch FROM created_at) * 1000000)::bigint AS created_us"
                f" FROM {table} WHERE usage_date = %s",
                (day,),
                {
                    **{name: _ARROW_TYPES[s.OPENAI_COLUMNS[name]] for name in names},
                    "created_us": pa.int64(),
                },
                conn,
            )
            frame["created_at"] = pd.to_datetime(frame.pop("created_us"), unit="us", utc=True)
        else:
            query = sa.text(
                f"SELECT {', '.join(names)}, created_at FROM {table} WHERE usage_date = :day"
            )
            with _connection(self.engine, conn) as reader:
                frame = pd.read_sql_query(query, reader, params={"day": day.isoformat()})
            frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True, format="ISO8601")
            frame["batch"] = frame["batch"].astype(bool)
        return frame[list(s.OPENAI_COLUMNS)].astype(s.OPENAI_COLUMNS)

    def pending_days(self, since: datetime, until: datetime) -> list[date]:
        """UTC days in [since, until) that still hold rows awaiting OpenAI's record."""
        self.check_usage_schema()
        day = "(created_at AT TIME ZONE 'UTC')::date" if self.is_postgres else "date(created_at)"
        query = sa.text(
            f"SELECT DISTINCT {day} AS day FROM {self.usage}"
            " WHERE reconciliation_status = 'pending'"
            " AND created_at >= :since AND created_at < :until ORDER BY 1"
        )
        params = {"since": since, "until": until}
        if not self.is_postgres:
            params = {k: _sqlite_ts(v) for k, v in params.items()}
        with self.engine.connect() as conn:
            return [
                v if isinstance(v, date) else date.fromisoformat(v)
                for (v,) in conn.execute(query, params)
            ]

    def _copy_out(
        self,
        select: str,
        params: tuple,
        types: dict[str, pa.DataType],
        conn: sa.Connection | None = None,
    ) -> pd.DataFrame:
        buffer = io.BytesIO()
        statement = f"COPY ({select}) TO STDOUT (FORMAT csv, HEADER)"
        if conn is not None:
            cursor = conn.connection.driver_connection.cursor()
            with cursor, cursor.copy(statement, params) as copy:
                for block in copy:
                    buffer.write(block)
        else:
            with self._raw_connection() as raw, raw.cursor() as cursor:
                with cursor.copy(statement, params) as copy:
                    for block in copy:
                        buffer.write(block)
                raw.rollback()
        buffer.seek(0)
        table = pa_csv.read_csv(
            buffer,
            convert_options=pa_csv.ConvertOptions(
                column_types=types,
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                true_values=["t"],
                false_values=["f"],
            ),
        )
        frame = table.to_pandas(types_mapper={pa.string(): pd.ArrowDtype(pa.string())}.get)
        for name, dtype in types.items():
            if dtype == pa.string():
                frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
        return frame

    @contextmanager
    def _raw_connection(self) -> Iterator:
        connection = self.engine.raw_connection()
        try:
            yield connection.driver_connection
        finally:
            connection.close()

    # -- writing ---------------------------------------------------------------------------

    def ensure_table(self, output: OutputTable) -> None:
        """Create an output table (and its indexes) the first time it is needed.

        On PostgreSQL the DDL is serialised by an advisory lock on the output schema (two
        runs creating the same table at once would otherwise race on the catalogue), and the
        schema is created only when missing: a role with CREATE on that schema alone, and no
        CREATE on the database, can run the pipeline.
        """
        if output.name in self._ready:
            return
        definitions = ", ".join(
            f'"{output.stored_name(c)}" {self._sql_type(c)}' for c in output.columns
        )
        table = self.table(output)
        with self.engine.begin() as conn:
            if self.is_postgres:
                key = lock_key("recon_pipeline:ddl", self._output_schema or "")
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
                if self._output_schema and not self._schema_exists(conn, self._output_schema):
                    conn.execute(sa.text(f'CREATE SCHEMA "{self._output_schema}"'))
            conn.execute(sa.text(f"CREATE TABLE IF NOT EXISTS {table} ({definitions})"))
            for columns in output.indexes:
                name = validate_identifier(f"{output.name}_{'_'.join(columns)}_idx")
                on = ", ".join(f'"{c}"' for c in columns)
                conn.execute(sa.text(f'CREATE INDEX IF NOT EXISTS "{name}" ON {table} ({on})'))
        self._ready.add(output.name)

    @staticmethod
    def _schema_exists(conn: sa.Connection, schema: str) -> bool:
        query = sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :schema")
        return conn.execute(query, {"schema": schema}).first() is not None

    def _sql_type(self, column: Column) -> str:
        if column.kind == "usage_id" and self.is_postgres:
            return self._usage_id_type()
        return (_PG_TYPES if self.is_postgres else _SQLITE_TYPES)[column.kind]

    def _usage_id_type(self) -> str:
        if self._id_type is not None:
            return self._id_type
        query = sa.text(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
            " WHERE a.attrelid = CAST(:rel AS regclass) AND a.attname = 'id'"
        )
        with self.engine.connect() as conn:
            found = conn.execute(query, {"rel": self.usage}).scalar()
        if found is None:
            raise SchemaNotReadyError(f"{self.usage} has no id column")
        self._id_type = str(found)
        return self._id_type

    def day_lock_key(self, day: date, scope: str) -> int:
        """The advisory-lock key of one day of one table this usage table's reconciliation
        writes (`scope`: the table's name). Different tables of a day may be written at once,
        e.g. by the parallel steps of one run; the same table of a day by one run at a time."""
        return lock_key("recon_pipeline:day", self.usage, scope, day.isoformat())

    @contextmanager
    def day_transaction(
        self, day: date, scope: str, tables: Sequence[OutputTable] = ()
    ) -> Iterator[sa.Connection | None]:
        """One transaction for a day's writes, holding the day's advisory lock.

        Yields the connection, or None when another run holds the day (nothing is done
        then; the caller reports the day as skipped). Commits when the block ends, rolls
        back if it raises. `tables` are created beforehand, outside the transaction.
        """
        for output in tables:
            self.ensure_table(output)
        if self.is_postgres:
            self._usage_id_type()  # cached before the transaction opens
        with self.engine.connect() as conn, conn.begin():
            if self.is_postgres:
                taken = conn.execute(
                    sa.text("SELECT pg_try_advisory_xact_lock(:key)"),
                    {"key": self.day_lock_key(day, scope)},
                ).scalar_one()
                if not taken:
                    yield None
                    return
            else:
                _begin_sqlite(conn)
            yield conn

    def replace_day(
        self, conn: sa.Connection, output: OutputTable, frame: pd.DataFrame, day: date
    ) -> int:
        """Delete a day of an output table and insert `frame` (that day's rows) in its place,
        inside the caller's transaction (see `day_transaction`)."""
        conn.execute(
            sa.text(f"DELETE FROM {self.table(output)} WHERE usage_date = :day"),
            {"day": self._day(day)},
        )
        self._insert(conn, output, frame)
        return len(frame)

    def replace_days(self, output: OutputTable, frame: pd.DataFrame, days: Sequence[date]) -> int:
        """Load-then-swap: for each day, delete its rows and insert the new ones, atomically.

        Each day is one transaction; on PostgreSQL it first waits for an advisory lock on
        (table, day), so two runs replacing the same day one after the other leave one copy
        of it, never both.
        """
        self.ensure_table(output)
        if self.is_postgres:
            self._usage_id_type()
        by_day = frame.groupby("usage_date", sort=False) if len(frame) else None
        written = 0
        for day in days:
            part = (
                by_day.get_group(day) if by_day is not None and day in by_day.groups else frame[:0]
            )
            with self.engine.begin() as conn:
                if self.is_postgres:
                    key = lock_key("recon_pipeline:table_day", self.table(output), day.isoformat())
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
                written += self.replace_day(conn, output, part, day)
        return written

    def _insert(self, conn: sa.Connection, output: OutputTable, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        stored = [output.stored_name(c) for c in output.columns]
        values = [
            f'"{output.frame_name(c)}" * 0.0000000001' if c.kind == "money" else f'"{c.name}"'
            for c in output.columns
        ]
        # Always the session's own temporary schema: an unqualified name could resolve to a
        # real table of the same name on the search path.
        staging = ("pg_temp" if self.is_postgres else "temp") + f'."staging_{output.name}"'
        stage_types = {
            "money": "bigint",
            "usage_id": "text",
            "date": "date" if self.is_postgres else "TEXT",
        }
        stage_cols = ", ".join(
            f'"{output.frame_name(c)}" {stage_types.get(c.kind) or self._sql_type(c)}'
            for c in output.columns
        )
        cast_id = "::" + self._usage_id_type() if self.is_postgres else ""
        values = [v + cast_id if v == '"usage_id"' else v for v in values]
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {staging}"))
        conn.execute(sa.text(f"CREATE TEMPORARY TABLE {staging.partition('.')[2]} ({stage_cols})"))
        wire = _wire_frame(output, frame, postgres=self.is_postgres)
        if self.is_postgres:
            cursor = conn.connection.driver_connection.cursor()
            columns = ", ".join(f'"{c}"' for c in wire.columns)
            with cursor.copy(f"COPY {staging} ({columns}) FROM STDIN (FORMAT csv)") as copy:
                copy.write(_to_csv(wire))
        else:
            placeholders = ", ".join(f":p{i}" for i in range(len(wire.columns)))
            names = ", ".join(f'"{c}"' for c in wire.columns)
            rows = [
                {f"p{i}": _plain(v) for i, v in enumerate(row)}
                for row in wire.itertuples(index=False, name=None)
            ]
            conn.execute(sa.text(f"INSERT INTO {staging} ({names}) VALUES ({placeholders})"), rows)
        target = ", ".join(f'"{c}"' for c in stored)
        conn.execute(
            sa.text(
                f"INSERT INTO {self.table(output)} ({target})"
                f" SELECT {', '.join(values)} FROM {staging}"
            )
        )
        conn.execute(sa.text(f"DROP TABLE {staging}"))

    def write_back(self, day: date, reconciled_at: datetime) -> WriteBackResult:
        """Copy the day's status and actual cost onto `token_usage`, touching only changed rows.

        Only `actual_cost_cents`, `reconciliation_status` and `reconciled_at` are written,
        and only on rows whose status or cost differs from what is stored: re-running an
        unchanged day updates nothing. One transaction holding the day's advisory lock: if
        another run holds it, nothing is written and the result says `locked`. Rows the
        application inserts meanwhile are not in the results, so they are not touched.
        """
        self.check_usage_schema()
        results = self.table(RECONCILED_USAGE)
        distinct = "IS DISTINCT FROM"
        usage = self.usage
        if self.is_postgres:
            # The estimate as read_logged read it: NaN or absurd amounts count as missing.
            same_estimate = (
                f"(CASE WHEN abs({usage}.calculated_cost_cents) < {_MAX_ESTIMATE_CENTS}"
                f" THEN round({usage}.calculated_cost_cents, 10) END)"
                " IS NOT DISTINCT FROM r.estimated_cost_cents"
            )
        else:
            same_estimate = (
                f"(({usage}.calculated_cost_cents IS NULL AND r.estimated_cost_cents IS NULL)"
                f" OR abs({usage}.calculated_cost_cents - r.estimated_cost_cents) < 0.000001)"
            )
        query = sa.text(
            f"UPDATE {usage} SET actual_cost_cents = r.actual_cost_cents,"
            " reconciliation_status = r.reconciliation_status, reconciled_at = :at"
            f" FROM {results} AS r"
            f" WHERE r.usage_date = :day AND {usage}.id = r.usage_id"
            f" AND ({usage}.actual_cost_cents {distinct} r.actual_cost_cents"
            f" OR {usage}.reconciliation_status {distinct} r.reconciliation_status)"
            # A row the application changed since it was read keeps its values; the check
            # token_usage_agrees_with_results then reports it, and the next run reconciles it.
            f" AND NULLIF({usage}.openai_request_id, '') IS NOT DISTINCT FROM r.openai_request_id"
            f" AND {same_estimate}"
        )
        count = sa.text(f"SELECT count(*) FROM {results} WHERE usage_date = :day")
        params = {"day": day, "at": reconciled_at}
        if not self.is_postgres:
            params = {"day": day.isoformat(), "at": _sqlite_ts(reconciled_at)}
        with self.day_transaction(day, self._usage_table, (RECONCILED_USAGE,)) as conn:
            if conn is None:
                return WriteBackResult(0, 0, 0, locked=True)
            considered = conn.execute(count, {"day": params["day"]}).scalar_one()
            updated = conn.execute(query, params).rowcount
            disagreeing = self.count_disagreeing(day, conn)
        return WriteBackResult(
            rows_considered=int(considered),
            rows_updated=int(updated),
            rows_disagreeing=disagreeing,
        )

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
        select = ", ".join(
            f'CAST(round("{c.name}_cents" * 10000000000) AS BIGINT) AS "{c.name}_pico"'
            if c.kind == "money"
            else f'"{c.name}"'
            for c in chosen
        )
        query = sa.text(f"SELECT {select} FROM {self.table(output)} WHERE usage_date = :day")
        with _connection(self.engine, conn) as reader:
            frame = pd.read_sql_query(query, reader, params={"day": self._day(day)})
        for column in chosen:
            name = output.frame_name(column)
            if column.kind in ("money", "bigint"):
                frame[name] = frame[name].astype("Int64")
            elif column.kind == "bool":
                frame[name] = frame[name].astype("boolean")
            elif column.kind == "float":
                frame[name] = frame[name].astype("float64")
            elif column.kind == "date":
                frame[name] = day
            elif column.kind == "timestamp":
                frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601")
            else:
                frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
        return frame

    def read_results(self, day: date, conn: sa.Connection | None = None) -> pd.DataFrame:
        """The stored per-request results of a day that the summaries and invoice check read."""
        return self.read_day(
            RECONCILED_USAGE,
            day,
            [
                "usage_date",
                "usage_id",
                "action_type",
                "model_used",
                "openai_model",
                "openai_request_id",
                "logged_input_tokens",
                "logged_output_tokens",
                "reconciliation_status",
                "estimated_cost_pico",
                "actual_cost_pico",
                "variance_pico",
            ],
            conn=conn,
        )

    def summary_matches_rows(self, day: date, conn: sa.Connection | None = None) -> bool:
        """Whether the stored summary of a day adds up to its stored rows (exact on PostgreSQL)."""
        rows, summary = self.table(RECONCILED_USAGE), self.table(DAILY_VARIANCE_SUMMARY)
        sums = ", ".join(
            f"coalesce(sum({m}_cents), 0)" for m in ("estimated_cost", "actual_cost", "variance")
        )
        with _connection(self.engine, conn) as reader:
            params = {"day": self._day(day)}
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
        if self.is_postgres:
            return tuple(from_rows) == tuple(from_summary)
        return all(
            abs(float(a) - float(b)) < 1e-6 for a, b in zip(from_rows, from_summary, strict=True)
        )

    def count_disagreeing(self, day: date, conn: sa.Connection | None = None) -> int:
        """token_usage rows of the day whose status or actual cost differ from the results."""
        query = sa.text(
            f"SELECT count(*) FROM {self.table(RECONCILED_USAGE)} AS r"
            f" JOIN {self.usage} AS t ON t.id = r.usage_id WHERE r.usage_date = :day"
            " AND (t.actual_cost_cents IS DISTINCT FROM r.actual_cost_cents"
            " OR t.reconciliation_status IS DISTINCT FROM r.reconciliation_status)"
        )
        with _connection(self.engine, conn) as reader:
            return int(reader.execute(query, {"day": self._day(day)}).scalar_one())

    def count_without_result(self, day: date) -> int:
        """token_usage rows created on the day that have no row in reconciled_usage (e.g.
        inserted by the application after the day was read)."""
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        end = start + timedelta(days=1)
        query = sa.text(
            f"SELECT count(*) FROM {self.usage} AS t"
            " WHERE t.created_at >= :start AND t.created_at < :end AND NOT EXISTS ("
            f" SELECT 1 FROM {self.table(RECONCILED_USAGE)} AS r"
            " WHERE r.usage_date = :day AND r.usage_id = t.id)"
        )
        params = {"day": self._day(day), "start": start, "end": end}
        if not self.is_postgres:
            params |= {"start": _sqlite_ts(start), "end": _sqlite_ts(end)}
        with self.engine.connect() as conn:
            return int(conn.execute(query, params).scalar_one())

    def _day(self, day: date) -> date | str:
        return day if self.is_postgres else day.isoformat()


@contextmanager
def _connection(engine: sa.Engine, conn: sa.Connection | None) -> Iterator[sa.Connection]:
    """`conn` itself when given (the caller's transaction), else a new connection."""
    if conn is not None:
        yield conn
        return
    with engine.connect() as fresh:
        yield fresh


def _begin_sqlite(conn: sa.Connection) -> None:
    """pysqlite opens a transaction only before DML; take the write lock at once instead, so
    a day's read-then-write is one transaction there too."""
    if not conn.connection.driver_connection.in_transaction:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_ts(moment: datetime) -> str:
    return pd.Timestamp(moment).tz_convert("UTC").isoformat(timespec="microseconds")


def _plain(value: object) -> object:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _wire_frame(output: OutputTable, frame: pd.DataFrame, postgres: bool) -> pd.DataFrame:
    """The frame in the staging table's column order, with timestamps and dates as text."""
    wire = pd.DataFrame(index=frame.index)
    for column in output.columns:
        name = output.frame_name(column)
        values = frame[name]
        if column.kind == "timestamp":
            values = pd.to_datetime(values, utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
        elif column.kind == "date":
            values = values.astype(str)
        elif column.kind == "bool":
            values = values.astype("boolean")
            if not postgres:
                values = values.astype("Int64")
        wire[name] = values
    return wire


def _to_csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, header=False, quoting=csv.QUOTE_MINIMAL, na_rep="").encode()
