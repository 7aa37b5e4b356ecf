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

import hashlib
import io
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import sqlalchemy as sa

from recon_pipeline.core import schema as s
from recon_pipeline.core.reconcile import day_bounds
from recon_pipeline.io.identifiers import qualified, validate_identifier
from recon_pipeline.io.row_security import inspect_row_security
from recon_pipeline.io.secrets import masked_url, scrub_url_secrets
from recon_pipeline.io.whole_cents import INTEGER_TYPES, cost_column_type, half_even

_ARROW_TYPES = {"object": pa.string(), "bool": pa.bool_(), "int64": pa.int64()}
_COPY_TYPES = {
    "text": pa.string(),
    "usage_id": pa.string(),
    "bigint": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
}


class SchemaNotReadyError(RuntimeError):
    """`token_usage` lacks the reconciliation columns: the migration has not been applied."""


class RowSecurityError(SchemaNotReadyError):
    """Row-level security would hide rows of `token_usage` from the pipeline's role."""


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
    """An output column. kind: text, bigint, float, bool, date, timestamp, money, usage_id.
    `description` is what the Dagster catalog shows an analyst for the column."""

    name: str
    kind: str
    description: str = ""


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


def column_type(column: Column) -> str:
    """The column's type on PostgreSQL, as the catalog shows it."""
    return _PG_TYPES.get(column.kind, "the type of token_usage.id")


# Descriptions of the columns several tables share; any other column describes itself.
_SHARED = {
    "usage_date": "UTC day the row belongs to (the partition)",
    "request_id": "OpenAI's response id (chatcmpl-…, resp_…) or the Batch line's custom_id",
    "model": "model snapshot OpenAI reported",
    "service_tier": "service tier OpenAI reported (default, flex, priority, …)",
    "batch": "true when OpenAI ran the request through the Batch API",
    "cached_input_tokens": "input tokens served from OpenAI's prompt cache (part of input_tokens)",
    "reasoning_tokens": "reasoning tokens (part of output_tokens)",
    "audio_ms": "audio duration in milliseconds (Whisper is billed by duration)",
    "price_status": "priced, unknown_model, unpriced_usage or invalid_usage",
    "variance_class": "why the row's actual cost differs from the estimate, one class per row",
    "project_id": "OpenAI project the figure belongs to",
}


def _cols(*spec: str) -> tuple[Column, ...]:
    """Columns from `name:kind:description` (the description may be left to `_SHARED`)."""
    columns = []
    for item in spec:
        name, kind, *text = item.split(":", 2)
        description = text[0] if text else _SHARED.get(name, "")
        if not description:
            raise ValueError(f"output column {name!r} needs a description (name:kind:description)")
        columns.append(Column(name, kind, description))
    return tuple(columns)


OPENAI_REQUESTS = OutputTable(
    "openai_requests",
    _cols(
        "usage_date:date:UTC day whose match window holds the record (a record near midnight is"
        " stored under both days)",
        "request_id:text",
        "created_at:timestamp:when OpenAI created the response",
        "model:text",
        "service_tier:text",
        "batch:bool",
        "input_tokens:bigint:input tokens OpenAI reported, cached and audio included",
        "cached_input_tokens:bigint",
        "output_tokens:bigint:output tokens OpenAI reported, reasoning and audio included",
        "reasoning_tokens:bigint",
        "input_audio_tokens:bigint:audio input tokens (their own rate)",
        "output_audio_tokens:bigint:audio output tokens (their own rate)",
        "audio_ms:bigint",
        "source:text:where the record came from: an export file, Batch output or the API",
        "metadata_tag:text:the row id the application put in the request's metadata",
    ),
    # No index on created_at: the pipeline reads a day by usage_date, and each index costs
    # every stored record (measured in benchmarks/README.md).
    indexes=(("usage_date",),),
)
RECONCILED_USAGE = OutputTable(
    "reconciled_usage",
    _cols(
        "usage_date:date",
        "usage_id:usage_id:token_usage.id of the logged row",
        "user_id:text:the application's user",
        "action_type:text:the application's route (blueprint, chat, transcribe, …)",
        "model_used:text:model the application logged",
        "openai_request_id:text:response id the application logged (empty: unverifiable)",
        "created_at:timestamp:when the application logged the call",
        "openai_model:text:model snapshot OpenAI reported for the request",
        "service_tier:text",
        "batch:bool",
        "logged_input_tokens:bigint:input tokens the application logged",
        "logged_output_tokens:bigint:output tokens the application logged",
        "openai_input_tokens:bigint:input tokens OpenAI reported",
        "openai_cached_input_tokens:bigint:cached input tokens OpenAI reported",
        "openai_output_tokens:bigint:output tokens OpenAI reported",
        "openai_reasoning_tokens:bigint:reasoning tokens OpenAI reported",
        "openai_audio_ms:bigint:audio milliseconds OpenAI reported",
        "estimated_cost:money:the application's own estimate, US cents",
        "actual_cost:money:OpenAI's usage priced at that day's official price, US cents (exact)",
        "variance:money:actual - estimated, US cents",
        "variance_pct:float:variance in percent of the actual cost",
        "variance_class:text",
        "reconciliation_status:text:pending, matched, discrepancy, not_found or unverifiable"
        " (the status written back)",
        "model_mismatch:bool:OpenAI ran another model than the one logged",
        "token_mismatch:bool:OpenAI's token counts differ from the logged ones",
        "price_status:text",
        "openai_source:text:where OpenAI's record came from",
        "match_method:text:how the row was paired with OpenAI's record: request_id,"
        " metadata_tag or fingerprint (empty: no record verified it)",
        "matched_request_id:text:id of the OpenAI record the row was paired with",
    ),
    indexes=(("usage_date",), ("usage_id",)),
)
UNLOGGED_OPENAI_REQUESTS = OutputTable(
    "unlogged_openai_requests",
    _cols(
        "usage_date:date",
        "request_id:text",
        "created_at:timestamp:when OpenAI created the response",
        "model:text",
        "service_tier:text",
        "batch:bool",
        "input_tokens:bigint:input tokens OpenAI reported",
        "cached_input_tokens:bigint",
        "output_tokens:bigint:output tokens OpenAI reported",
        "reasoning_tokens:bigint",
        "audio_ms:bigint",
        "actual_cost:money:OpenAI's usage priced at that day's official price, US cents",
        "price_status:text",
        "variance_class:text",
        "source:text:where the record came from",
    ),
    indexes=(("usage_date",),),
)
DAILY_VARIANCE_SUMMARY = OutputTable(
    "daily_variance_summary",
    _cols(
        "usage_date:date",
        "action_type:text:the application's route",
        "model_used:text:model the application logged",
        "requests:bigint:logged requests",
        *(f"{status}:bigint:requests with status {status}" for status in s.STATUSES),
        *(
            f"verified_by_{method}:bigint:requests paired with OpenAI's record by {method}"
            for method in s.MATCH_METHODS
        ),
        "estimated_cost:money:the application's estimate, US cents",
        "actual_cost:money:actual cost, US cents (exact)",
        "variance:money:actual - estimated, US cents",
        "match_rate:float:matched / (matched + discrepancy)",
    ),
    indexes=(("usage_date",),),
)
OPENAI_DAILY_USAGE = OutputTable(
    "openai_daily_usage",
    _cols(
        "usage_date:date",
        "endpoint:text:completions, embeddings or audio_transcriptions",
        "model:text",
        "batch:bool",
        "service_tier:text",
        "project_id:text",
        "input_tokens:bigint:input tokens, cached included",
        "input_cached_tokens:bigint:cached input tokens",
        "output_tokens:bigint:output tokens",
        "input_audio_tokens:bigint:audio input tokens",
        "output_audio_tokens:bigint:audio output tokens",
        "num_model_requests:bigint:requests",
        "seconds:bigint:audio seconds (transcriptions)",
    ),
    indexes=(("usage_date",),),
)
OPENAI_DAILY_COSTS = OutputTable(
    "openai_daily_costs",
    _cols(
        "usage_date:date",
        "line_item:text:what OpenAI billed (a model's input or output, a tool, storage, …)",
        "project_id:text",
        "amount:money:billed amount, US cents (exact)",
        "currency:text:currency OpenAI reported (usd)",
        "quantity:float:billed quantity where OpenAI gives one (amount / quantity: the unit price)",
    ),
    indexes=(("usage_date",),),
)
INVOICE_CHECK = OutputTable(
    "invoice_check",
    _cols(
        "usage_date:date",
        "project_id:text:OpenAI project in scope, or (all) for the scope as one",
        "model:text:model, or (all) for the whole day",
        "openai_requests:bigint:requests OpenAI's Usage API counted",
        "openai_input_tokens:bigint:input tokens OpenAI's Usage API counted",
        "openai_output_tokens:bigint:output tokens OpenAI's Usage API counted",
        "logged_requests:bigint:requests the application logged",
        "logged_input_tokens:bigint:input tokens the application logged",
        "logged_output_tokens:bigint:output tokens the application logged",
        "billed:money:per model, OpenAI's usage priced at the catalogue; (all): the Costs API"
        " total, US cents",
        "reconciled_actual:money:actual cost of the reconciled rows, US cents",
        "unlogged_actual:money:actual cost of requests no row logged, US cents",
        "unattributed:money:billed - reconciled_actual, US cents",
        "unattributed_share:float:unattributed / billed",
        "billed_source:text:costs_api, usage_api or none",
    ),
    indexes=(("usage_date",),),
)
INVOICE_GAP = OutputTable(
    "invoice_gap",
    _cols(
        "usage_date:date",
        "project_id:text:OpenAI project, or (all) for the scope as one",
        "cause:text:why billed and reconciled differ: unlogged_requests,"
        " rows_without_request_id, pending_rows, unpriced_requests, non_token_charges,"
        " price_difference, other_projects, or the residual no cause explains",
        "detail:text:what within the cause (a model, a line item, a project)",
        "amount:money:the cause's share of billed - reconciled, US cents",
        "share_of_billed:float:amount / billed",
    ),
    indexes=(("usage_date",),),
)
# What the write-back needs of the results, staged from memory (`Database.write_back_rows`).
WRITE_BACK_ROWS = OutputTable(
    "recon_write_back",
    _cols(
        "usage_id:usage_id:token_usage.id",
        "openai_request_id:text:response id the row logged",
        "estimated_cost:money:the row's estimate",
        "actual_cost:money:the row's actual cost",
        "reconciliation_status:text:the row's status",
    ),
)
# The tables analysts query, one per asset of the same name.
OUTPUT_TABLES = (
    OPENAI_REQUESTS,
    RECONCILED_USAGE,
    UNLOGGED_OPENAI_REQUESTS,
    DAILY_VARIANCE_SUMMARY,
    OPENAI_DAILY_USAGE,
    OPENAI_DAILY_COSTS,
    INVOICE_CHECK,
    INVOICE_GAP,
)


@dataclass(frozen=True)
class WriteBackResult:
    """One day's write-back. `locked`: another run held the day, nothing was written."""

    rows_considered: int
    rows_updated: int
    rows_disagreeing: int = 0
    locked: bool = False


# The columns of token_usage the pipeline reads, then the three it writes: (type, meaning).
USAGE_COLUMNS = {
    "id": ("uuid or bigint", "the row's primary key"),
    "action_type": ("text", "the application's route that made the call"),
    "model_used": ("text", "model the application asked for"),
    "input_tokens": ("integer", "input tokens the application logged"),
    "output_tokens": ("integer", "output tokens the application logged"),
    "calculated_cost_cents": ("integer or numeric", "the application's own estimate, US cents"),
    "created_at": ("timestamptz", "when the call was logged; its UTC day is the partition"),
    "openai_request_id": ("text", "OpenAI's response id; empty rows are unverifiable"),
    "actual_cost_cents": ("numeric", "written back: the verified cost, US cents"),
    "reconciled_at": ("timestamptz", "written back: when the row's verdict last changed"),
    "reconciliation_status": (
        "text",
        "written back: pending, matched, discrepancy, not_found or unverifiable",
    ),
}
REQUIRED_USAGE_COLUMNS = tuple(USAGE_COLUMNS)
WRITTEN_USAGE_COLUMNS = REQUIRED_USAGE_COLUMNS[-3:]

# The money columns of the results (`<name>_cents` stored, `<name>_pico` in the core).
_MONEY_COLUMNS = ("estimated_cost", "actual_cost", "variance")

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
        """Fail early, and say how to fix it, when the migration has not been applied."""
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
            self._whole_cents = False
            if self.is_postgres:
                with self.engine.connect() as conn:
                    problem = inspect_row_security(conn, self.usage).problem
                    if problem is not None:
                        self._whole_cents = None
                        raise RowSecurityError(problem)
                    self._whole_cents = cost_column_type(conn, self.usage) in INTEGER_TYPES

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
        have = self.usage_columns()
        cached = "cached_input_tokens" if "cached_input_tokens" in have else "NULL"
        user = "user_id" if "user_id" in have else "NULL"
        created = "openai_created" if "openai_created" in have else "NULL"
        if self.is_postgres:
            frame = self._copy_out(
                f"SELECT id::text AS usage_id, {user}::text AS user_id, action_type::text,"
                f" model_used::text, input_tokens::bigint, output_tokens::bigint,"
                f" {cached}::bigint AS cached_input_tokens,"
                f" CASE WHEN abs(calculated_cost_cents) < {_MAX_ESTIMATE_CENTS}"
                f" THEN round(calculated_cost_cents * 10000000000)::bigint END"
                f" AS calculated_cost_pico,"
                f" (extract(epoch FROM created_at) * 1000000)::bigint AS created_us,"
                f" NULLIF(openai_request_id::text, '') AS openai_request_id,"
                f" {created}::bigint AS openai_created"
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
                    "openai_created": pa.int64(),
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
                f" AS calculated_cost_pico, created_at, openai_request_id,"
                f" CAST({created} AS INTEGER) AS openai_created"
                f" FROM {self.usage} WHERE created_at >= :start AND created_at < :end"
            )
            with _connection(self.engine, conn) as reader:
                frame = pd.read_sql_query(
                    query, reader, params={"start": _sqlite_ts(start), "end": _sqlite_ts(end)}
                )
            frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True, format="ISO8601")
            # Missing text is None, as on PostgreSQL (pandas' SQLite path would give NaN).
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
        """COPY a query out as CSV and parse it with pyarrow: about seven times faster than
        `read_sql`, and no per-row Python objects but the strings."""
        buffer = io.BytesIO()
        statement = f"COPY ({select}) TO STDOUT (FORMAT csv, HEADER)"
        with (
            _driver_connection(self.engine, conn) as raw,
            raw.cursor() as cursor,
            cursor.copy(statement, params) as copy,
        ):
            for block in copy:
                buffer.write(block)
        buffer.seek(0)
        table = pa_csv.read_csv(
            buffer,
            convert_options=pa_csv.ConvertOptions(
                column_types=types,
                # Only PostgreSQL's unquoted empty field is NULL: a route named "N/A" or a
                # model named "null" stays text (pyarrow's default would read them as NULL).
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                true_values=["t"],
                false_values=["f"],
            ),
        )
        del buffer
        return pd.DataFrame(
            {name: _pandas_column(table.column(name)) for name in table.column_names}
        )

    # -- writing ---------------------------------------------------------------------------

    def ensure_table(self, output: OutputTable) -> None:
        """Create an output table (and its indexes) the first time it is needed, and add the
        columns a table stored by an earlier release lacks (nullable, so its rows stay valid;
        a re-run of a day fills them).

        On PostgreSQL the DDL is serialised by an advisory lock on the output schema (two
        runs creating the same table at once would otherwise race on the catalogue), and the
        schema is created only when missing: a role with CREATE on that schema alone, and no
        CREATE on the database, can run the pipeline.
        """
        if output.name in self._ready:
            return
        if self.is_postgres and self._table_exists(output):
            # CREATE INDEX IF NOT EXISTS would still queue for a lock on a table another
            # run is writing: look in the catalogue first.
            self._ready.add(output.name)
            return
        definitions = self._column_definitions(output)
        table = self.table(output)
        with self.engine.begin() as conn:
            if self.is_postgres:
                key = lock_key("recon_pipeline:ddl", self._output_schema or "")
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
                if self._output_schema and not self._schema_exists(conn, self._output_schema):
                    conn.execute(sa.text(f'CREATE SCHEMA "{self._output_schema}"'))
            conn.execute(sa.text(f"CREATE TABLE IF NOT EXISTS {table} ({definitions})"))
            have = {
                c["name"]
                for c in sa.inspect(conn).get_columns(output.name, schema=self._output_schema)
            }
            for column in output.columns:
                name = output.stored_name(column)
                if name not in have:
                    conn.execute(
                        sa.text(f'ALTER TABLE {table} ADD COLUMN "{name}" {self._sql_type(column)}')
                    )
            for columns, name in zip(output.indexes, self._index_names(output), strict=True):
                on = ", ".join(f'"{c}"' for c in columns)
                conn.execute(sa.text(f'CREATE INDEX IF NOT EXISTS "{name}" ON {table} ({on})'))
        self._ready.add(output.name)

    def _index_names(self, output: OutputTable) -> list[str]:
        return [
            validate_identifier(f"{output.name}_{'_'.join(columns)}_idx")
            for columns in output.indexes
        ]

    def _table_exists(self, output: OutputTable) -> bool:
        """The table, all its columns and all its indexes are there."""
        names = [self.table(output)] + [
            qualified(name, self._output_schema) for name in self._index_names(output)
        ]
        columns = [output.stored_name(c) for c in output.columns]
        query = sa.text(
            "SELECT bool_and(to_regclass(name) IS NOT NULL) AND (SELECT count(*) FROM pg_attribute"
            " WHERE attrelid = to_regclass(:table) AND attname = ANY(CAST(:columns AS text[]))"
            " AND NOT attisdropped) = cardinality(CAST(:columns AS text[]))"
            " FROM unnest(CAST(:names AS text[])) AS name"
        )
        params = {"names": names, "table": self.table(output), "columns": columns}
        with self.engine.connect() as conn:
            return bool(conn.execute(query, params).scalar())

    @staticmethod
    def _schema_exists(conn: sa.Connection, schema: str) -> bool:
        query = sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :schema")
        return conn.execute(query, {"schema": schema}).first() is not None

    def _column_definitions(self, output: OutputTable) -> str:
        return ", ".join(f'"{output.stored_name(c)}" {self._sql_type(c)}' for c in output.columns)

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
                begin_sqlite(conn)
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
        if self.is_postgres:
            _copy_in(conn, self.table(output), output, frame)
            return
        stored = [output.stored_name(c) for c in output.columns]
        values = [
            f'"{output.frame_name(c)}" * 0.0000000001' if c.kind == "money" else f'"{c.name}"'
            for c in output.columns
        ]
        # The session's own temporary schema: an unqualified name could resolve to a real
        # table of the same name.
        staging = f'temp."staging_{output.name}"'
        stage_types = {"money": "bigint", "usage_id": "text", "date": "TEXT"}
        stage_cols = ", ".join(
            f'"{output.frame_name(c)}" {stage_types.get(c.kind) or self._sql_type(c)}'
            for c in output.columns
        )
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {staging}"))
        conn.execute(sa.text(f"CREATE TEMPORARY TABLE {staging.partition('.')[2]} ({stage_cols})"))
        wire = _wire_frame(output, frame)
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

    def write_back_rows(
        self,
        conn: sa.Connection,
        day: date,
        reconciled_at: datetime,
        results: pd.DataFrame | None = None,
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
        """
        usage = self.usage
        distinct = "IS DISTINCT FROM"
        if results is not None and self.is_postgres:
            source, where, considered = self._stage_write_back(conn, results), "", len(results)
        else:
            source = self.table(RECONCILED_USAGE)
            where = " AND r.usage_date = :day"
            considered = conn.execute(
                sa.text(f"SELECT count(*) FROM {source} WHERE usage_date = :day"),
                {"day": self._day(day)},
            ).scalar_one()
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
        cost = self.written_cost("r.actual_cost_cents")
        differs = (
            f"({usage}.actual_cost_cents {distinct} {cost}"
            f" OR {usage}.reconciliation_status {distinct} r.reconciliation_status)"
        )
        # A row the application changed since it was read keeps its values; the check
        # token_usage_agrees_with_results then reports it, and the next run reconciles it.
        unchanged_by_app = (
            f"(NULLIF({usage}.openai_request_id, '') IS NOT DISTINCT FROM r.openai_request_id"
            f" AND {same_estimate})"
        )
        join = f" FROM {source} AS r WHERE {usage}.id = r.usage_id{where}"
        if self.is_postgres:
            # One pass: rows that differ are updated where the app left them unchanged, and
            # the others, counted as disagreeing, keep their values. No second join to count.
            kept = {
                "actual_cost_cents": cost,
                "reconciliation_status": "r.reconciliation_status",
                "reconciled_at": "CAST(:at AS timestamptz)",
            }
            sets = ", ".join(
                f"{name} = CASE WHEN {unchanged_by_app} THEN {value} ELSE {usage}.{name} END"
                for name, value in kept.items()
            )
            query = sa.text(
                f"WITH changed AS (UPDATE {usage} SET {sets}{join} AND {differs}"
                f" RETURNING {unchanged_by_app} AS applied)"
                " SELECT count(*) FILTER (WHERE applied), count(*) FILTER (WHERE NOT applied)"
                " FROM changed"
            )
            updated, disagreeing = conn.execute(query, {"day": day, "at": reconciled_at}).one()
        else:
            query = sa.text(
                f"UPDATE {usage} SET actual_cost_cents = r.actual_cost_cents,"
                f" reconciliation_status = r.reconciliation_status, reconciled_at = :at"
                f"{join} AND {differs} AND {unchanged_by_app}"
            )
            params = {"day": day.isoformat(), "at": _sqlite_ts(reconciled_at)}
            updated = conn.execute(query, params).rowcount
            disagreeing = self.count_disagreeing(day, conn)
        return WriteBackResult(
            rows_considered=int(considered),
            rows_updated=int(updated),
            rows_disagreeing=int(disagreeing),
        )

    def _stage_write_back(self, conn: sa.Connection, results: pd.DataFrame) -> str:
        """COPY the columns the write-back needs into a temporary table dropped at commit."""
        staging = f"pg_temp.{WRITE_BACK_ROWS.name}"
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {staging}"))
        conn.execute(
            sa.text(
                f"CREATE TEMPORARY TABLE {WRITE_BACK_ROWS.name}"
                f" ({self._column_definitions(WRITE_BACK_ROWS)}) ON COMMIT DROP"
            )
        )
        _copy_in(conn, staging, WRITE_BACK_ROWS, results)
        if len(results) >= 100_000:  # a small day plans well enough from the table's size
            # Enough memory for the UPDATE's hash join to stay in one batch. Spilled into
            # batches, it updates token_usage in batch order and revisits each heap page once
            # per batch: at 1M rows, 32 batches read 1.36M buffers and took 14.0 s; one batch
            # read 56k and took 9.6 s (benchmarks/README.md). Local to this transaction, never
            # lower than the session's own setting.
            kilobytes = min(len(results) * _WRITE_BACK_HASH_BYTES_PER_ROW // 1024, 1024 * 1024)
            conn.execute(
                sa.text(
                    "SELECT set_config('work_mem', greatest(:kb, setting::bigint) || 'kB', true)"
                    " FROM pg_settings WHERE name = 'work_mem'"
                ),
                {"kb": kilobytes},
            )
            conn.execute(sa.text(f"ANALYZE {staging}"))
        return staging

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
        if self.is_postgres:
            frame = self._read_day_copy(output, day, chosen, conn)
        else:
            frame = self._read_day_sql(output, day, chosen, conn)
        for column in chosen:
            name = output.frame_name(column)
            if column.kind == "date":
                frame[name] = day
            elif column.kind == "timestamp" and self.is_postgres:
                frame[name] = pd.to_datetime(frame.pop(f"{name}__us"), unit="us", utc=True)
        return frame[[output.frame_name(c) for c in chosen]]

    def _read_day_copy(
        self,
        output: OutputTable,
        day: date,
        chosen: Sequence[Column],
        conn: sa.Connection | None,
    ) -> pd.DataFrame:
        select, types = [], {}
        for column in chosen:
            name = output.frame_name(column)
            if column.kind == "money":
                select.append(f'round("{column.name}_cents" * 10000000000)::bigint AS "{name}"')
                types[name] = pa.int64()
            elif column.kind == "timestamp":
                select.append(f'(extract(epoch FROM "{name}") * 1000000)::bigint AS "{name}__us"')
                types[f"{name}__us"] = pa.int64()
            elif column.kind != "date":
                select.append(f'"{name}"::text' if column.kind == "usage_id" else f'"{name}"')
                types[name] = _COPY_TYPES[column.kind]
        if not select:
            select.append("1 AS one")
            types["one"] = pa.int64()
        return self._copy_out(
            f"SELECT {', '.join(select)} FROM {self.table(output)} WHERE usage_date = %s",
            (day,),
            types,
            conn,
        )

    def _read_day_sql(
        self,
        output: OutputTable,
        day: date,
        chosen: Sequence[Column],
        conn: sa.Connection | None,
    ) -> pd.DataFrame:
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
            elif column.kind == "timestamp":
                frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601")
            elif column.kind != "date":
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
                "match_method",
                "estimated_cost_pico",
                "actual_cost_pico",
                "variance_pico",
            ],
            conn=conn,
        )

    def read_results_rollup(self, day: date, conn: sa.Connection | None = None) -> pd.DataFrame:
        """A stored day of results added up by route, model, OpenAI's model, status, match
        method and whether a request id was logged, with a `requests` count: all the summary and the
        invoice check need (`summarise.request_counts`), without moving every row out.

        Sums are exact: NUMERIC on PostgreSQL, integer pico-dollars on SQLite; a money sum
        is NULL where no row of the group has a value, as pandas' `sum(min_count=1)`.
        """
        texts = (
            "action_type",
            "model_used",
            "openai_model",
            "reconciliation_status",
            "match_method",
        )
        if self.is_postgres:
            money = "round(sum({m}_cents) * 10000000000)::bigint"
            tokens, day_param = "sum({t})::bigint", "%s"
        else:
            money = "sum(CAST(round({m}_cents * 10000000000) AS INTEGER))"
            tokens, day_param = "sum({t})", ":day"
        sums = {
            **{t: tokens.format(t=t) for t in ("logged_input_tokens", "logged_output_tokens")},
            **{f"{m}_pico": money.format(m=m) for m in _MONEY_COLUMNS},
        }
        select = (
            f"SELECT {', '.join(texts)}, openai_request_id IS NOT NULL AS with_request_id,"
            f" count(*) AS requests, {', '.join(f'{v} AS {k}' for k, v in sums.items())}"
            f" FROM {self.table(RECONCILED_USAGE)} WHERE usage_date = {day_param}"
            " GROUP BY 1, 2, 3, 4, 5, 6"
        )
        if self.is_postgres:
            types = {
                **dict.fromkeys(texts, pa.string()),
                "with_request_id": pa.bool_(),
                **dict.fromkeys(["requests", *sums], pa.int64()),
            }
            if conn is None:
                self.ensure_table(RECONCILED_USAGE)
            frame = self._copy_out(select, (day,), types, conn)
        else:
            with _connection(self.engine, conn) as reader:
                frame = pd.read_sql_query(sa.text(select), reader, params={"day": self._day(day)})
            for name in texts:
                frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
            for name in sums:
                frame[name] = frame[name].astype("Int64")
            frame["with_request_id"] = frame["with_request_id"].astype(bool)
        frame["requests"] = frame["requests"].astype(np.int64)
        return frame.assign(usage_date=day)

    def summary_matches_rows(self, day: date, conn: sa.Connection | None = None) -> bool:
        """Whether the stored summary of a day adds up to its stored rows (exact on PostgreSQL)."""
        rows, summary = self.table(RECONCILED_USAGE), self.table(DAILY_VARIANCE_SUMMARY)
        sums = ", ".join(f"coalesce(sum({m}_cents), 0)" for m in _MONEY_COLUMNS)
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
            f" AND (t.actual_cost_cents IS DISTINCT FROM {self.written_cost('r.actual_cost_cents')}"
            " OR t.reconciliation_status IS DISTINCT FROM r.reconciliation_status)"
        )
        with _connection(self.engine, conn) as reader:
            return int(reader.execute(query, {"day": self._day(day)}).scalar_one())

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


@contextmanager
def _driver_connection(engine: sa.Engine, conn: sa.Connection | None) -> Iterator:
    """The psycopg connection under `conn`, or under a new one (rolled back when returned)."""
    with _connection(engine, conn) as chosen:
        yield chosen.connection.driver_connection


def begin_sqlite(conn: sa.Connection) -> None:
    """pysqlite opens a transaction only before DML; take the write lock at once instead, so
    a day's read-then-write (or a migration's DDL) is one transaction there too."""
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


def _wire_frame(output: OutputTable, frame: pd.DataFrame) -> pd.DataFrame:
    """The frame in SQLite's staging column order, with timestamps and dates as text."""
    wire = pd.DataFrame(index=frame.index)
    for column in output.columns:
        name = output.frame_name(column)
        values = frame[name]
        if column.kind == "timestamp":
            values = pd.to_datetime(values, utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
        elif column.kind == "date":
            values = values.astype(str)
        elif column.kind == "bool":
            values = values.astype("boolean").astype("Int64")
        wire[name] = values
    return wire


# Rows per COPY chunk: bounds the memory of the CSV text to a few tens of MB.
_COPY_CHUNK_ROWS = 100_000
# Measured 115 bytes a staged row in the write-back's hash table; the rest is headroom.
_WRITE_BACK_HASH_BYTES_PER_ROW = 160
_CSV_OPTIONS = pa_csv.WriteOptions(include_header=False, quoting_style="needed")


def _copy_in(conn: sa.Connection, table: str, output: OutputTable, frame: pd.DataFrame) -> None:
    """COPY `frame` straight into `table`, in the caller's transaction, a chunk at a time.

    pyarrow writes the CSV (strings quoted, so an empty string stays distinct from NULL, an
    unquoted empty field); money goes as exact decimal text built from the pico integers,
    never through a float.
    """
    columns = ", ".join(f'"{output.stored_name(c)}"' for c in output.columns)
    cursor = conn.connection.driver_connection.cursor()
    with (
        cursor,
        cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT csv)") as copy,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="copy-in") as sender,
    ):
        # The next chunk is written while PostgreSQL parses this one: one chunk in flight,
        # so memory stays at two chunks of CSV whatever the frame's size.
        sending: Future | None = None
        for start in range(0, len(frame), _COPY_CHUNK_ROWS):
            sink = io.BytesIO()
            part = frame.iloc[start : start + _COPY_CHUNK_ROWS]
            pa_csv.write_csv(_arrow_table(output, part), sink, _CSV_OPTIONS)
            if sending is not None:
                sending.result()
            sending = sender.submit(copy.write, sink.getbuffer())
        if sending is not None:
            sending.result()


def _arrow_table(output: OutputTable, frame: pd.DataFrame) -> pa.Table:
    """The frame as the table's stored columns, typed for the CSV PostgreSQL reads."""
    arrays = {}
    for column in output.columns:
        values = frame[output.frame_name(column)]
        try:
            arrays[output.stored_name(column)] = _arrow_column(column.kind, values)
        except (ValueError, TypeError, pa.ArrowException) as error:
            raise ValueError(
                f"{output.name}.{column.name}: values that are not {column.kind}: {error}"
            ) from None
    return pa.table(arrays)


def _arrow_column(kind: str, values: pd.Series) -> pa.Array:
    if kind == "money":
        valid = values.notna().to_numpy()
        pico = values.astype("Int64").to_numpy(np.int64, na_value=0)
        return _pico_as_cents(pico, valid)
    if kind == "timestamp":
        return _utc_text(pa.array(pd.to_datetime(values, utc=True), pa.timestamp("us", tz="UTC")))
    if kind == "date":
        try:
            return pa.array(values, pa.date32(), from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return pa.array(pd.to_datetime(values.astype(str)).dt.date, pa.date32())
    if kind in ("text", "usage_id"):
        try:
            return pa.array(values, pa.string(), from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            text = values.map(lambda v: None if pd.isna(v) else str(v))
            return pa.array(text, pa.string(), from_pandas=True)
    arrow_type = {"bigint": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}[kind]
    nullable = {"bigint": "Int64", "float": "Float64", "bool": "boolean"}[kind]
    return pa.array(values.astype(nullable), arrow_type, from_pandas=True)


def _utc_text(instants: pa.Array) -> pa.Array:
    """UTC instants as ISO text ending in `Z`, as pyarrow's CSV writer prints them, but
    formatted as naive times: pyarrow looks up the zone for every zoned value (1M values:
    1.17 s against 0.09 s, benchmarks/experiments/csv_timestamps.py). The `Z` keeps the
    text independent of the session's TimeZone."""
    naive = instants.cast(pa.timestamp("us")).cast(pa.string())
    return pc.binary_join_element_wise(naive, pa.scalar("Z"), "")


def _pico_as_cents(pico: np.ndarray, valid: np.ndarray) -> pa.Array:
    """decimal128(24, 10) cents whose unscaled value is the pico amount: exact, no float."""
    words = np.empty((len(pico), 2), dtype=np.int64)
    words[:, 0] = pico
    words[:, 1] = pico >> 63
    mask = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(pa.decimal128(24, 10), len(pico), [mask, pa.py_buffer(words)])


def _pandas_column(column: pa.ChunkedArray) -> pd.Series:
    """A COPYed column as the core types it: nullable Int64 and boolean, float64, object str."""
    return pd.Series(_pandas_values(column), dtype=_PANDAS_TYPES.get(column.type))


_PANDAS_TYPES = {pa.string(): object}


def _pandas_values(column: pa.ChunkedArray) -> np.ndarray | pd.api.extensions.ExtensionArray:
    if pa.types.is_string(column.type):
        return _shared_strings(column)
    array = column.combine_chunks()
    if pa.types.is_floating(array.type):
        return array.to_numpy(zero_copy_only=False)
    mask = array.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_boolean(array.type):
        values = array.fill_null(False).to_numpy(zero_copy_only=False)
        return pd.arrays.BooleanArray(values, mask)
    values = array.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return pd.arrays.IntegerArray(values, mask)


def _shared_strings(column: pa.ChunkedArray) -> np.ndarray:
    """Object array of str or None in which a value repeated down the column is one Python
    object: routes, models and statuses then cost a pointer a row, not a string each."""
    array = column.combine_chunks()
    sample = array.slice(0, 2000)
    if len(sample) and pc.count_distinct(sample).as_py() * 4 > len(sample):
        return array.to_numpy(zero_copy_only=False)  # ids: every value differs anyway
    encoded = pc.dictionary_encode(array)
    words = encoded.dictionary.to_numpy(zero_copy_only=False)
    indices = pc.fill_null(encoded.indices, len(words)).to_numpy()
    return np.append(words, None)[indices]
