"""PostgreSQL: COPY in and out (`pg_copy.py`), a large day's reads through ADBC (`pg_arrow.py`),
advisory locks, exact NUMERIC sums."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import date, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from recon_pipeline.core.output_tables import OPENAI_COLUMNS
from recon_pipeline.io.connections import lock_key
from recon_pipeline.io.dialect import RECORD_HASH, Dialect, T
from recon_pipeline.io.pg_arrow import (
    ARROW_READ_ROWS,
    arrow_out_parts,
    day_literal,
    export_snapshot,
    moment_literal,
)
from recon_pipeline.io.pg_copy import (
    COPY_TYPES,
    MONEY_LIMIT_PICO,
    copy_in,
    copy_out,
    copy_out_parts,
    join_big_money,
    money_select,
    read_part,
    read_part_batches,
)
from recon_pipeline.io.request_ids import postgres_record_id, postgres_request_id
from recon_pipeline.io.row_security import inspect_row_security
from recon_pipeline.io.tables import Column, OutputTable, RowSecurityError, SchemaNotReadyError
from recon_pipeline.io.usage_types import (
    UsageTypeError,
    usage_column_types,
    usage_type_message,
    wrong_usage_types,
)
from recon_pipeline.io.whole_cents import INTEGER_TYPES
from recon_pipeline.io.write_back import (
    CHANGED_FLAG,
    MAX_ESTIMATE_CENTS,
    WriteBackSql,
    postgres_same_estimate,
    postgres_update,
    stage_results,
)

_PG_TYPES = {
    "text": "text",
    "bigint": "bigint",
    "float": "double precision",
    "bool": "boolean",
    "date": "date",
    "timestamp": "timestamptz",
    "money": "numeric(24,10)",
}


def column_type(column: Column) -> str:
    """The column's type on PostgreSQL, as the catalog shows it."""
    return _PG_TYPES.get(column.kind, "the type of token_usage.id")


LOGGED_TYPES = {
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
    "audio_seconds": pa.float64(),
}
_PLAIN_NUMBER = r"^\s*[0-9]+(\.[0-9]*)?\s*$"
_ARROW_TYPES = {"object": pa.string(), "bool": pa.bool_(), "int64": pa.int64()}


def epoch_us(column: str) -> str:
    return f"(extract(epoch FROM {column}) * 1000000)::bigint"


def _xid8(table: str | None) -> str:
    """A row's xmin with its epoch, as pg_visible_in_snapshot takes it: the current epoch,
    or the one before for an xmin above the current transaction's."""
    xmin = f"{table + '.' if table else ''}xmin::text::bigint"
    current = "pg_current_xact_id()::text::bigint"
    return (
        f"((((({current}) >> 32) - CASE WHEN {xmin} > (({current}) & 4294967295)"
        f" THEN 1 ELSE 0 END) << 32) | {xmin})::text::xid8"
    )


# The fields of an OpenAI record its price depends on that a stored result does not show.
RECORD_UNSHOWN = ("request_id", "created_at", "input_audio_tokens", "output_audio_tokens")


def record_hash_sql(alias: str) -> str:
    """SQL: a hash of a record's `RECORD_UNSHOWN` fields, each hashed as its own type with a
    seed of its own and the four combined by XOR; a NULL field hashes as a constant of its
    own. The time is hashed as epoch seconds in float8, exact to the microsecond for any date
    of this era: `hashint8extended` of the microseconds would fold their 64 bits to 32 first,
    so two times 2^32 + 1 µs apart could hash alike. Summed over the records behind a day's
    rows matched by id, it is part of the day's incremental basis (`io.day_changes`).
    Hashing the text of `ROW(...)` was as sensitive but cost the day's read of OpenAI's
    records 0.4 to 0.5 s in 1.5 to 1.6 s at 1M rows (benchmarks/README.md, session 11)."""
    request_id, created_at, audio_in, audio_out = (f"{alias}.{c}" for c in RECORD_UNSHOWN)
    fields = (
        f"hashtextextended({request_id}, 1)",
        f"hashfloat8extended(extract(epoch FROM {created_at})::float8, 2)",
        f"hashint8extended({audio_in}, 3)",
        f"hashint8extended({audio_out}, 4)",
    )
    return "(" + " # ".join(f"coalesce({h}, {-n})" for n, h in enumerate(fields, 1)) + ")"


def _part(request_id: str, parts: int) -> str:
    """SQL of the part a row falls in by a hash of its request id (-1: it has none), the
    same for token_usage and openai_requests; `request_id`: the id's SQL (`request_ids`).
    The id is worked out once: hashtext of NULL is NULL, which coalesce turns into -1."""
    return f"coalesce(mod(hashtext({request_id}) & 2147483647, {int(parts)}), -1)"


def _instants(frame: pd.DataFrame, us: str, name: str) -> None:
    frame[name] = pd.to_datetime(frame.pop(us), unit="us", utc=True)


class PostgresDialect(Dialect):
    name = "postgresql"
    parallel_write_back = True
    incremental_days = True
    money_limit_pico = MONEY_LIMIT_PICO  # numeric(24,10) cents: 14 digits before the point
    money_type = "PostgreSQL's numeric(24,10) cents"
    pico_sum_type = pa.string()  # exact text: a day's sum may leave int64

    def __init__(self, engine: sa.Engine, usage: str) -> None:
        super().__init__(engine, usage)
        self._id_type: str | None = None
        self._id_indexed: bool | None = None
        self._rewritable: bool | None = None
        self._types: dict[str, str] | None = None

    def day(self, day: date) -> date:
        return day

    def request_id(self, column: str) -> str:
        return postgres_request_id(column)

    def moment(self, moment: datetime) -> datetime:
        return moment

    def utc_day_sql(self, column: str) -> str:
        return f"({column} AT TIME ZONE 'UTC')::date"

    def check_usage_types(self) -> None:
        with self.engine.connect() as conn:
            self._usage_types(conn)

    def _usage_types(self, conn: sa.Connection) -> dict[str, str]:
        """token_usage's column types, refused when wrong; read once a run, though both the
        resource (before any step writes) and the first read of the table ask."""
        if self._types is None:
            types = usage_column_types(conn, self.usage)
            wrong = wrong_usage_types(types)
            if wrong:
                raise UsageTypeError(usage_type_message(self.usage, wrong))
            self._types = types
        return self._types

    def check_usage_table(self) -> bool:
        with self.engine.connect() as conn:
            problem = inspect_row_security(conn, self.usage).problem
            if problem is not None:
                raise RowSecurityError(problem)
            return self._usage_types(conn).get("actual_cost_cents") in INTEGER_TYPES

    def sql_type(self, column: Column) -> str:
        if column.kind == "usage_id":
            return self._usage_id_type()
        return _PG_TYPES[column.kind]

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

    def id_indexed(self, conn: sa.Connection) -> bool:
        """Whether a valid btree index leads with token_usage's id (its primary key should),
        so that the write-back may join each part by key (`io.write_back`)."""
        if self._id_indexed is None:
            query = sa.text(
                "SELECT EXISTS (SELECT 1 FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
                " JOIN pg_am am ON am.oid = i.relam JOIN pg_attribute a"
                " ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]"
                " WHERE x.indrelid = CAST(:rel AS regclass) AND a.attname = 'id'"
                " AND x.indisvalid AND x.indpred IS NULL AND am.amname = 'btree')"
            )
            self._id_indexed = bool(conn.execute(query, {"rel": self.usage}).scalar_one())
        return self._id_indexed

    def update_rewritable(self, conn: sa.Connection) -> bool:
        """Whether an UPDATE of token_usage may store other than what it sets, or skip a row:
        an enabled UPDATE row trigger (tgtype's ROW 1 and UPDATE 16 bits), before the write
        (which may change or skip the row) or after it (which may change it again). The
        write-back then counts what still differs afterwards. (An INSTEAD rule on UPDATE
        makes the write-back's RETURNING an error, so it cannot pass unseen.)"""
        if self._rewritable is None:
            query = sa.text(
                "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = CAST(:rel AS regclass)"
                " AND NOT tgisinternal AND tgenabled <> 'D' AND tgtype & 17 = 17)"
            )
            self._rewritable = bool(conn.execute(query, {"rel": self.usage}).scalar_one())
        return self._rewritable

    def table_complete(
        self, table: str, index_names: Sequence[str], columns: Sequence[str]
    ) -> bool:
        # CREATE INDEX IF NOT EXISTS would still queue for a lock on a table another run is
        # writing: look in the catalogue first.
        query = sa.text(
            "SELECT bool_and(to_regclass(name) IS NOT NULL) AND (SELECT count(*) FROM pg_attribute"
            " WHERE attrelid = to_regclass(:table) AND attname = ANY(CAST(:columns AS text[]))"
            " AND NOT attisdropped) = cardinality(CAST(:columns AS text[]))"
            " FROM unnest(CAST(:names AS text[])) AS name"
        )
        params = {"names": [table, *index_names], "table": table, "columns": list(columns)}
        with self.engine.connect() as conn:
            return bool(conn.execute(query, params).scalar())

    def before_ddl(self, conn: sa.Connection, schema: str | None) -> None:
        """Two runs creating the same table at once would race on the catalogue; the schema
        is created only when missing, so a role with CREATE on that schema alone, and no
        CREATE on the database, can run the pipeline."""
        key = lock_key("recon_pipeline:ddl", schema or "")
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        if schema:
            query = sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :schema")
            if conn.execute(query, {"schema": schema}).first() is None:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))

    def prepare_writes(self) -> None:
        self._usage_id_type()

    def begin_day(self, conn: sa.Connection, key: int) -> bool:
        return self.try_lock_day(conn, key)

    def try_lock_day(self, conn: sa.Connection, key: int) -> bool:
        query = sa.text("SELECT pg_try_advisory_xact_lock(:key)")
        return bool(conn.execute(query, {"key": key}).scalar_one())

    def lock_table_day(self, conn: sa.Connection, key: int) -> None:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    def insert(
        self, conn: sa.Connection, table: str, output: OutputTable, frame: pd.DataFrame
    ) -> None:
        copy_in(conn, table, output, frame)

    def logged_select(
        self, optional: dict[str, str], part: str = "", bounds: tuple[str, str] = ("%s", "%s")
    ) -> str:
        """The window's rows as the core reads them; `bounds`: the SQL of its start and end
        (placeholders, or literals for `pg_arrow`)."""
        user, cached, created, audio = (
            optional[k] for k in ("user_id", "cached", "created", "audio")
        )
        return (
            f"SELECT id::text AS usage_id, {user}::text AS user_id, action_type::text,"
            f" model_used::text, input_tokens::bigint, output_tokens::bigint,"
            f" {cached}::bigint AS cached_input_tokens,"
            f" CASE WHEN abs(calculated_cost_cents) < {MAX_ESTIMATE_CENTS}"
            f" THEN round(calculated_cost_cents * 10000000000)::bigint END"
            f" AS calculated_cost_pico,"
            f" {epoch_us('created_at')} AS created_us,"
            f" {postgres_request_id('openai_request_id')} AS openai_request_id,"
            f" {created}::bigint AS openai_created,"
            f" CASE WHEN {audio}::text ~ '{_PLAIN_NUMBER}' THEN {audio}::text::float8 END"
            f" AS audio_seconds{part}"
            f" FROM {self.usage} WHERE created_at >= {bounds[0]} AND created_at < {bounds[1]}"
        )

    def read_logged(
        self, conn: sa.Connection | None, optional: dict[str, str], start: datetime, end: datetime
    ) -> pd.DataFrame:
        frame = copy_out(
            self.engine, self.logged_select(optional), (start, end), LOGGED_TYPES, conn
        )
        _instants(frame, "created_us", "created_at")
        return frame

    def read_logged_parts(
        self,
        conn: sa.Connection,
        optional: dict[str, str],
        start: datetime,
        end: datetime,
        parts: int,
        directory: Path,
        rows: int = 0,
    ) -> list[Path]:
        part = f", {_part(postgres_request_id('openai_request_id'), parts)} AS part"
        return self._out_parts(
            conn,
            lambda *bounds: self.logged_select(optional, part, bounds),
            (start, end),
            moment_literal,
            LOGGED_TYPES,
            parts,
            directory,
            "logged",
            rows,
        )

    def _out_parts(
        self,
        conn: sa.Connection,
        query: Callable[..., str],
        values: tuple[T, ...],
        literal: Callable[[T], str],
        types: dict[str, pa.DataType],
        parts: int,
        directory: Path,
        name: str,
        rows: int,
    ) -> list[Path]:
        """`query` (given the SQL of each of `values`) into part files: through psycopg with
        `values` bound, or, for a day of `ARROW_READ_ROWS` rows and records or more, through
        ADBC with each value written in as its `literal` (`pg_arrow`)."""
        if rows < ARROW_READ_ROWS:
            select = query(*("%s",) * len(values))
            return copy_out_parts(self.engine, select, values, types, conn, parts, directory, name)
        select = query(*(literal(value) for value in values))
        return arrow_out_parts(conn, select, types, parts, directory, name)

    def logged_part(self, path: Path) -> pd.DataFrame:
        frame = read_part(path)
        _instants(frame, "created_us", "created_at")
        return frame

    def logged_part_batches(self, path: Path) -> Iterator[pd.DataFrame]:
        for frame in read_part_batches(path):
            _instants(frame, "created_us", "created_at")
            yield frame

    def _openai_select(
        self, table: str, names: Sequence[str], part: str = "", day: str = "%s"
    ) -> str:
        return (
            f"SELECT {', '.join(names)}, {epoch_us('created_at')} AS created_us{part}"
            f" FROM {table} WHERE usage_date = {day}"
        )

    def _openai_types(self, names: Sequence[str]) -> dict[str, pa.DataType]:
        return {
            **{name: _ARROW_TYPES[OPENAI_COLUMNS[name]] for name in names},
            "created_us": pa.int64(),
        }

    def read_openai_requests(
        self, conn: sa.Connection | None, table: str, names: Sequence[str], day: date
    ) -> pd.DataFrame:
        select = self._openai_select(table, names)
        frame = copy_out(self.engine, select, (day,), self._openai_types(names), conn)
        _instants(frame, "created_us", "created_at")
        return frame

    def read_openai_parts(
        self,
        conn: sa.Connection,
        table: str,
        names: Sequence[str],
        day: date,
        parts: int,
        directory: Path,
        rows: int = 0,
    ) -> list[Path]:
        part = _part(postgres_record_id("request_id"), parts)
        extra = f", {record_hash_sql(table)} AS {RECORD_HASH}, {part} AS part"
        types = self._openai_types(names) | {RECORD_HASH: pa.int64()}
        return self._out_parts(
            conn,
            lambda on: self._openai_select(table, names, extra, on),
            (day,),
            day_literal,
            types,
            parts,
            directory,
            "openai",
            rows,
        )

    def openai_part(self, path: Path) -> pd.DataFrame:
        return self.logged_part(path)

    def read_day(
        self,
        conn: sa.Connection | None,
        table: str,
        output: OutputTable,
        day: date,
        chosen: Sequence[Column],
    ) -> pd.DataFrame:
        select, types = [], {}
        for column in chosen:
            name = output.frame_name(column)
            if column.kind == "money":
                select.extend(money_select(f'"{column.name}_cents"', name))
                types |= {name: pa.int64(), f"{name}__big": pa.string()}
            elif column.kind == "timestamp":
                quoted = f'"{name}"'
                select.append(f'{epoch_us(quoted)} AS "{name}__us"')
                types[f"{name}__us"] = pa.int64()
            elif column.kind != "date":
                select.append(f'"{name}"::text' if column.kind == "usage_id" else f'"{name}"')
                types[name] = COPY_TYPES[column.kind]
        if not select:
            select.append("1 AS one")
            types["one"] = pa.int64()
        frame = copy_out(
            self.engine,
            f"SELECT {', '.join(select)} FROM {table} WHERE usage_date = %s",
            (day,),
            types,
            conn,
        )
        for column in chosen:
            if column.kind == "timestamp":
                _instants(frame, f"{column.name}__us", column.name)
            elif column.kind == "money":
                join_big_money(frame, output.frame_name(column))
        return frame

    def row_versions(
        self, conn: sa.Connection, source: str, params: dict[str, object], columns: Sequence[str]
    ) -> tuple[str, ...]:
        # Every write makes a new row version with a new xmin; summing the xmins and a
        # hash of them costs a scan, not a hash of every value (0.65 s against 2.9 s at 1M).
        # OFFSET 0 keeps the subquery apart, so each row's xmin is converted once, not twice.
        found = conn.execute(
            sa.text(
                "SELECT count(*)::text, coalesce(sum(x), 0)::text,"
                " coalesce(sum(hashint8(x)::bigint), 0)::text"
                f" FROM (SELECT xmin::text::bigint AS x {source} OFFSET 0) AS versions"
            ),
            params,
        ).one()
        return tuple(found)

    def content_hash(
        self, conn: sa.Connection, source: str, params: dict[str, object], columns: Sequence[str]
    ) -> tuple[str, ...]:
        # ROW(...)::text tells NULL from '' and keeps column boundaries; 64-bit hashes summed
        # exactly as NUMERIC, so the order rows come in does not matter.
        row = "ROW(" + ", ".join(f'"{c}"' for c in columns) + ")::text"
        found = conn.execute(
            sa.text(
                "SELECT count(*)::text,"
                f" coalesce(sum(hashtextextended({row}, 0)::numeric), 0)::text {source}"
            ),
            params,
        ).one()
        return tuple(found)

    def read_snapshot(self, conn: sa.Connection) -> str | None:
        return conn.execute(sa.text("SELECT pg_current_snapshot()::text")).scalar_one()

    def unchanged_since_sql(self, table: str) -> str:
        return f"pg_visible_in_snapshot({_xid8(table)}, CAST(:snapshot AS pg_snapshot))"

    def rows_changed_since(
        self, conn: sa.Connection, source: str, params: dict[str, object], snapshot: str | None
    ) -> int:
        # Rows another transaction wrote last, and (by the write-back's flag) rows it wrote
        # before the write-back wrote them again.
        query = sa.text(
            "SELECT count(*) FILTER (WHERE xmin <> pg_current_xact_id()::xid"
            f" AND NOT pg_visible_in_snapshot({_xid8(None)}, CAST(:snapshot AS pg_snapshot)))"
            f" + (coalesce(current_setting('{CHANGED_FLAG}', true), '') = 'yes')::int"
            f" {source}"
        )
        return int(conn.execute(query, params | {"snapshot": snapshot}).scalar_one())

    @contextmanager
    def snapshot_reader(self, conn: sa.Connection) -> Iterator[sa.Connection]:
        # Opened once the day's lock is held, so its snapshot follows the last writer's.
        with self._repeatable_reader() as reader:
            yield reader

    @contextmanager
    def _repeatable_reader(self, snapshot: str | None = None) -> Iterator[sa.Connection]:
        """A read-only REPEATABLE READ transaction: its own snapshot, or one exported."""
        with self.engine.connect() as reader:
            reader = reader.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            with reader.begin():
                if snapshot is not None:
                    reader.execute(sa.text(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))
                yield reader

    def read_beside(
        self, reader: sa.Connection, reads: Sequence[Callable[[sa.Connection], T]]
    ) -> list[T]:
        # The first read runs on `reader`, each other on a connection of its own that imports
        # reader's exported snapshot: an unchanged day's two scans of row versions (token_usage
        # and the stored records) then take the time of the longer, not of both.
        if len(reads) < 2:
            return super().read_beside(reader, reads)
        snapshot = export_snapshot(reader)
        with ExitStack() as connections, ThreadPoolExecutor(len(reads) - 1) as workers:
            beside = [
                connections.enter_context(self._repeatable_reader(snapshot)) for _ in reads[1:]
            ]
            others = [
                workers.submit(read, conn) for read, conn in zip(reads[1:], beside, strict=True)
            ]
            try:
                first = reads[0](reader)
                return [first, *(other.result() for other in others)]
            except BaseException:  # stop the other scans rather than wait them out
                for conn, other in zip(beside, others, strict=True):
                    if not other.done():
                        self.cancel(conn)
                raise

    def day_param(self) -> str:
        return "%s"

    def bigint_sum(self, column: str) -> str:
        return f"sum({column})::bigint"

    def pico_sum(self, cents: str) -> str:
        return f"round(sum({cents}) * 10000000000)::text"

    def select_frame(
        self, conn: sa.Connection | None, select: str, day: date, types: dict[str, pa.DataType]
    ) -> pd.DataFrame:
        return copy_out(self.engine, select, (day,), types, conn)

    def sums_equal(self, left: Sequence, right: Sequence) -> bool:
        return tuple(left) == tuple(right)

    def same_estimate(self, usage: str) -> str:
        return postgres_same_estimate(usage)

    def stage_write_back(self, conn: sa.Connection, results: pd.DataFrame, definitions: str) -> str:
        return stage_results(conn, definitions, results)

    def write_back_update(
        self,
        conn: sa.Connection,
        sql: WriteBackSql,
        day: date,
        reconciled_at: datetime,
        count_disagreeing: Callable[[], int],
    ) -> tuple[int, int]:
        return postgres_update(
            conn,
            sql,
            day,
            reconciled_at,
            by_key=self.id_indexed(conn),
            rewritable=self.update_rewritable(conn),
        )

    def cancel(self, conn: sa.Connection) -> None:
        conn.connection.driver_connection.cancel_safe()

    def analyze(self, conn: sa.Connection, table: str) -> None:
        # A sample of 30,000 rows (default_statistics_target), whatever the table's size.
        conn.execute(sa.text(f"ANALYZE {table}"))
