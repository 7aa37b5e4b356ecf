"""SQLite, the embedded demo: plain SQLAlchemy, ISO text for dates and instants, one writer."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from recon_pipeline.core.money import MoneyOverflowError, python_ints
from recon_pipeline.io.connections import begin_sqlite, connection, sqlite_ts
from recon_pipeline.io.dialect import Dialect
from recon_pipeline.io.request_ids import sqlite_request_id
from recon_pipeline.io.tables import Column, OutputTable
from recon_pipeline.io.write_back import WriteBackSql, sqlite_same_estimate, sqlite_update

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
_LOGGED_TEXT = ("usage_id", "user_id", "action_type", "model_used", "openai_request_id")


def _texts(frame: pd.DataFrame, names: Sequence[str]) -> None:
    """Missing text as None, as on PostgreSQL (pandas' SQLite path would give NaN)."""
    for name in names:
        frame[name] = frame[name].astype(object).where(frame[name].notna(), None)


def _split(frame: pd.DataFrame, column: str, parts: int, directory: Path, name: str) -> list[Path]:
    """The embedded database's days are small: read whole, split by a hash of the request id
    (the same for both sides), each part kept as a file as PostgreSQL's parts are."""
    ids = frame[column].where(frame[column] != "", None)
    number = np.array(
        [-1 if v is None or v != v else zlib.crc32(str(v).encode()) % parts for v in ids],
        dtype=np.int64,
    )
    paths = []
    for index in range(parts + 1):
        path = directory / f"{name}_{index}.pickle"
        frame[number == (index if index < parts else -1)].reset_index(drop=True).to_pickle(path)
        paths.append(path)
    return paths


def _instants(frame: pd.DataFrame, name: str) -> None:
    frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601")


class SqliteDialect(Dialect):
    name = "sqlite"
    parallel_write_back = False
    incremental_days = False
    # Money is stored as cents in a REAL (pico * 1e-10), which gives back the exact pico
    # amount up to 2^51 (about 2,251 USD; measured: none of 200,000 random amounts of 51 bits
    # wrong, a quarter of those of 52 bits). A day beyond it is refused before anything of
    # it is written, rather than stored a few pico-dollars off.
    money_limit_pico = 2**51 - 1
    money_type = (
        "SQLite's REAL cents (the embedded demo's database; PostgreSQL, via"
        " RECON_DATABASE_URL, holds amounts to 10^12 USD exactly)"
    )

    def day(self, day: date) -> str:
        return day.isoformat()

    def request_id(self, column: str) -> str:
        return sqlite_request_id(column)

    def moment(self, moment: datetime) -> str:
        return sqlite_ts(moment)

    def utc_day_sql(self, column: str) -> str:
        return f"date({column})"

    def check_usage_types(self) -> None:
        """Nothing: SQLite's types are loose, and its table the embedded demo's own."""

    def check_usage_table(self) -> bool:
        return False

    def sql_type(self, column: Column) -> str:
        return _SQLITE_TYPES[column.kind]

    def table_complete(
        self, table: str, index_names: Sequence[str], columns: Sequence[str]
    ) -> bool:
        return False

    def before_ddl(self, conn: sa.Connection, schema: str | None) -> None:
        return None

    def prepare_writes(self) -> None:
        return None

    def begin_day(self, conn: sa.Connection, key: int) -> bool:
        begin_sqlite(conn)
        return True

    def try_lock_day(self, conn: sa.Connection, key: int) -> bool:
        return True  # begin_day's transaction already holds the only write lock

    def lock_table_day(self, conn: sa.Connection, key: int) -> None:
        return None  # SQLite has one writer at a time

    def insert(
        self, conn: sa.Connection, table: str, output: OutputTable, frame: pd.DataFrame
    ) -> None:
        """Through a staging table in the session's own temporary schema (an unqualified
        name could resolve to a real table of the same name), money converted in SQL."""
        stored = [output.stored_name(c) for c in output.columns]
        values = [
            f'"{output.frame_name(c)}" * 0.0000000001' if c.kind == "money" else f'"{c.name}"'
            for c in output.columns
        ]
        staging = f'temp."staging_{output.name}"'
        stage_types = {"money": "bigint", "usage_id": "text", "date": "TEXT"}
        stage_cols = ", ".join(
            f'"{output.frame_name(c)}" {stage_types.get(c.kind) or self.sql_type(c)}'
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
            sa.text(f"INSERT INTO {table} ({target}) SELECT {', '.join(values)} FROM {staging}")
        )
        conn.execute(sa.text(f"DROP TABLE {staging}"))

    def read_logged(
        self, conn: sa.Connection | None, optional: dict[str, str], start: datetime, end: datetime
    ) -> pd.DataFrame:
        user, cached, created, audio = (
            optional[k] for k in ("user_id", "cached", "created", "audio")
        )
        query = sa.text(
            f"SELECT CAST(id AS TEXT) AS usage_id, CAST({user} AS TEXT) AS user_id,"
            f" action_type, model_used, input_tokens, output_tokens,"
            f" {cached} AS cached_input_tokens,"
            f" CAST(round(calculated_cost_cents * 10000000000) AS INTEGER)"
            f" AS calculated_cost_pico, created_at,"
            f" {sqlite_request_id('openai_request_id')} AS openai_request_id,"
            f" CAST({created} AS INTEGER) AS openai_created,"
            f" CASE WHEN typeof({audio}) IN ('integer', 'real') THEN CAST({audio} AS REAL) END"
            " AS audio_seconds"
            f" FROM {self.usage} WHERE created_at >= :start AND created_at < :end"
        )
        params = {"start": sqlite_ts(start), "end": sqlite_ts(end)}
        with connection(self.engine, conn) as reader:
            frame = pd.read_sql_query(query, reader, params=params)
        _instants(frame, "created_at")
        _texts(frame, _LOGGED_TEXT)
        return frame

    def read_openai_requests(
        self, conn: sa.Connection | None, table: str, names: Sequence[str], day: date
    ) -> pd.DataFrame:
        query = sa.text(
            f"SELECT {', '.join(names)}, created_at FROM {table} WHERE usage_date = :day"
        )
        with connection(self.engine, conn) as reader:
            frame = pd.read_sql_query(query, reader, params={"day": day.isoformat()})
        _instants(frame, "created_at")
        frame["batch"] = frame["batch"].astype(bool)
        return frame

    def row_versions(
        self, conn: sa.Connection, source: str, params: dict[str, object], columns: Sequence[str]
    ) -> tuple[str, ...]:
        # No row versions in SQLite: the (small, embedded) rows' values are hashed.
        return self.content_hash(conn, source, params, columns)

    def content_hash(
        self, conn: sa.Connection, source: str, params: dict[str, object], columns: Sequence[str]
    ) -> tuple[str, ...]:
        quoted = ", ".join(f'"{c}"' for c in columns)
        rows = conn.execute(sa.text(f"SELECT {quoted} {source}"), params).all()
        total = sum(
            int.from_bytes(hashlib.blake2b(repr(tuple(row)).encode(), digest_size=8).digest())
            for row in rows
        )
        return str(len(rows)), str(total)

    def read_snapshot(self, conn: sa.Connection) -> str | None:
        return None

    def unchanged_since_sql(self, table: str) -> str:
        return "1 = 1"

    def rows_changed_since(
        self, conn: sa.Connection, source: str, params: dict[str, object], snapshot: str | None
    ) -> int:
        return 0

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
        frame = self.read_logged(conn, optional, start, end)
        return _split(frame, "openai_request_id", parts, directory, "logged")

    def logged_part(self, path: Path) -> pd.DataFrame:
        return pd.read_pickle(path)

    def logged_part_batches(self, path: Path) -> Iterator[pd.DataFrame]:
        yield pd.read_pickle(path)  # an embedded day is small: one block

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
        frame = self.read_openai_requests(conn, table, names, day)
        return _split(frame, "request_id", parts, directory, "openai")

    def openai_part(self, path: Path) -> pd.DataFrame:
        return pd.read_pickle(path)

    @contextmanager
    def snapshot_reader(self, conn: sa.Connection) -> Iterator[sa.Connection]:
        yield conn  # the day's transaction holds SQLite's write lock: nothing changes meanwhile

    def read_day(
        self,
        conn: sa.Connection | None,
        table: str,
        output: OutputTable,
        day: date,
        chosen: Sequence[Column],
    ) -> pd.DataFrame:
        select = ", ".join(
            f'CAST(round("{c.name}_cents" * 10000000000) AS BIGINT) AS "{c.name}_pico"'
            if c.kind == "money"
            else f'"{c.name}"'
            for c in chosen
        )
        query = sa.text(f"SELECT {select} FROM {table} WHERE usage_date = :day")
        with connection(self.engine, conn) as reader:
            frame = pd.read_sql_query(query, reader, params={"day": self.day(day)})
        for column in chosen:
            name = output.frame_name(column)
            if column.kind in ("money", "bigint"):
                frame[name] = frame[name].astype("Int64")
            elif column.kind == "bool":
                frame[name] = frame[name].astype("boolean")
            elif column.kind == "float":
                frame[name] = frame[name].astype("float64")
            elif column.kind == "timestamp":
                _instants(frame, name)
            elif column.kind != "date":
                _texts(frame, [name])
        return frame

    def day_param(self) -> str:
        return ":day"

    def bigint_sum(self, column: str) -> str:
        return f"sum({column})"

    def pico_sum(self, cents: str) -> str:
        return f"sum(CAST(round({cents} * 10000000000) AS INTEGER))"

    def select_frame(
        self, conn: sa.Connection | None, select: str, day: date, types: dict[str, pa.DataType]
    ) -> pd.DataFrame:
        with connection(self.engine, conn) as reader:
            frame = pd.read_sql_query(sa.text(select), reader, params={"day": self.day(day)})
        for name, kind in types.items():
            if pa.types.is_string(kind):
                _texts(frame, [name])
            elif pa.types.is_boolean(kind):
                frame[name] = frame[name].astype(bool)
            else:
                frame[name] = frame[name].astype("Int64")
        return frame

    def sums_equal(self, left: Sequence, right: Sequence) -> bool:
        return all(abs(float(a) - float(b)) < 1e-6 for a, b in zip(left, right, strict=True))

    def same_estimate(self, usage: str) -> str:
        return sqlite_same_estimate(usage)

    def stage_write_back(
        self, conn: sa.Connection, results: pd.DataFrame, definitions: str
    ) -> None:
        return None  # the write-back reads the day just stored in reconciled_usage

    def write_back_update(
        self,
        conn: sa.Connection,
        sql: WriteBackSql,
        day: date,
        reconciled_at: datetime,
        count_disagreeing: Callable[[], int],
    ) -> tuple[int, int]:
        updated = sqlite_update(conn, sql, day, reconciled_at)
        return updated, count_disagreeing()

    def cancel(self, conn: sa.Connection) -> None:
        conn.connection.driver_connection.interrupt()

    def analyze(self, conn: sa.Connection, table: str) -> None:
        return None  # SQLite's plans here need no statistics; its ANALYZE reads every row


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
        elif column.kind == "money" and _largest(values) > SqliteDialect.money_limit_pico:
            raise MoneyOverflowError(
                f"{output.name}.{column.name}: an amount of more than"
                f" {SqliteDialect.money_limit_pico} pico-dollars, which"
                f" {SqliteDialect.money_type} cannot hold exactly; nothing was written"
            )
        wire[name] = values
    return wire


def _largest(values: pd.Series) -> int:
    """The largest |amount| of an integer money column (0 when empty): Python ints for an
    object column (`core.money`), one vectorised pass otherwise."""
    present = values.dropna()
    if present.empty:
        return 0
    if present.dtype == object:
        return max(abs(v) for v in python_ints(present))
    return max(abs(int(present.max())), abs(int(present.min())))
