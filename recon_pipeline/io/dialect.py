"""What differs between PostgreSQL and SQLite, behind one interface.

`Database` holds one `Dialect` and never asks which database it talks to: types, how a day
or an instant is passed, locks, the fast COPY path against plain SQL, and the write-back's
UPDATE are the dialect's. PostgreSQL is in `dialect_postgres.py`, SQLite in
`dialect_sqlite.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import TypeVar

import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from recon_pipeline.io.tables import Column, OutputTable
from recon_pipeline.io.write_back import WriteBackSql

# The column holding a hash of each record a day's parts are read with
# (`Dialect.read_openai_parts`), from which a full run sums its incremental basis.
RECORD_HASH = "unshown_hash"

T = TypeVar("T")


class Dialect(ABC):
    """One database's way of doing what `Database` needs; `usage`: token_usage's
    qualified name."""

    name: str
    # Whether the write-back may run on a second connection while the day's results are
    # stored on the first (one writer at a time on SQLite).
    parallel_write_back: bool
    # Whether a changed day may be redone in part (`io/day_changes.py`); else it runs in full.
    incremental_days: bool = False
    # The largest |amount| in pico-dollars an output table's money column stores exactly, and
    # what to call that column's type in the error that refuses a day beyond it.
    money_limit_pico: int
    money_type: str

    def __init__(self, engine: sa.Engine, usage: str) -> None:
        self.engine = engine
        self.usage = usage

    @abstractmethod
    def day(self, day: date) -> date | str:
        """A day as a bound parameter."""

    @abstractmethod
    def request_id(self, column: str) -> str:
        """SQL of a logged request id as the pipeline reads it (`io/request_ids.py`)."""

    @abstractmethod
    def moment(self, moment: datetime) -> datetime | str:
        """An instant as a bound parameter compared with stored timestamps."""

    @abstractmethod
    def utc_day_sql(self, column: str) -> str:
        """SQL of the UTC day of a timestamp column."""

    @abstractmethod
    def check_usage_types(self) -> None:
        """Raise `UsageTypeError` for a column of token_usage whose type would give wrong
        results (`usage_types`)."""

    @abstractmethod
    def check_usage_table(self) -> bool:
        """Whether token_usage keeps its actual cost in whole cents; raises
        `RowSecurityError` when row-level security would hide rows from the pipeline, and
        `UsageTypeError` for a column whose type would give wrong results (`usage_types`)."""

    @abstractmethod
    def sql_type(self, column: Column) -> str:
        """The stored type of an output column."""

    @abstractmethod
    def table_complete(
        self, table: str, index_names: Sequence[str], columns: Sequence[str]
    ) -> bool:
        """The table, all its columns and indexes are there (False: let DDL make sure)."""

    @abstractmethod
    def before_ddl(self, conn: sa.Connection, schema: str | None) -> None:
        """Serialise creating tables in `schema`, and create the schema when missing."""

    @abstractmethod
    def prepare_writes(self) -> None:
        """Look up, before a write transaction opens, what its DDL will need."""

    @abstractmethod
    def begin_day(self, conn: sa.Connection, key: int) -> bool:
        """Start a day's write transaction on `conn`; False: another run holds the day."""

    @abstractmethod
    def try_lock_day(self, conn: sa.Connection, key: int) -> bool:
        """In a day's write transaction, also take the lock `key` if it is free (False:
        another run holds it)."""

    @abstractmethod
    def lock_table_day(self, conn: sa.Connection, key: int) -> None:
        """Wait for the lock of one day of one table, until the transaction ends."""

    @abstractmethod
    def insert(
        self, conn: sa.Connection, table: str, output: OutputTable, frame: pd.DataFrame
    ) -> None:
        """Insert the core's frame (money in pico) into an output table."""

    @abstractmethod
    def read_logged(
        self, conn: sa.Connection | None, optional: dict[str, str], start: datetime, end: datetime
    ) -> pd.DataFrame:
        """token_usage rows created in [start, end); `optional`: SQL of the optional
        columns cached_input_tokens, user_id, openai_created and audio_seconds (a column or
        NULL). Audio seconds come out as a double, or NULL where the value is not a plain
        number (the application's column may be of any type): a bad value must not stop
        the day. `Database` takes whole milliseconds from them as from a record's."""

    @abstractmethod
    def read_openai_requests(
        self, conn: sa.Connection | None, table: str, names: Sequence[str], day: date
    ) -> pd.DataFrame:
        """The named columns and created_at of a stored day of openai_requests."""

    @abstractmethod
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
        """`read_logged`'s rows, read once and kept in `directory` as `parts` + 1 files: part
        k holds the rows whose request id hashes to k, the last one the rows without an id
        (the hash is the same as `read_openai_parts`'). `rows`: the day's rows and records
        in all, where a database reads a large day another way."""

    @abstractmethod
    def logged_part(self, path: Path) -> pd.DataFrame:
        """One file of `read_logged_parts`, as `read_logged` gives rows."""

    @abstractmethod
    def logged_part_batches(self, path: Path) -> Iterator[pd.DataFrame]:
        """One file of `read_logged_parts` a block at a time, as `logged_part` gives rows."""

    @abstractmethod
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
        """`read_openai_requests`' records in files as `read_logged_parts` keeps rows. A
        dialect that keeps a day's incremental basis adds each record's hash (`RECORD_HASH`)."""

    @abstractmethod
    def openai_part(self, path: Path) -> pd.DataFrame:
        """One file of `read_openai_parts`, as `read_openai_requests` gives records."""

    @abstractmethod
    def row_versions(
        self, conn: sa.Connection, source: str, params: dict[str, object], columns: Sequence[str]
    ) -> tuple[str, ...]:
        """The rows of `source` (`FROM … WHERE …`, with `params`) counted, and a summary of
        their versions, in any order: any row inserted, deleted or updated since changes it
        (PostgreSQL: their xmin; SQLite: a hash of `columns`)."""

    @abstractmethod
    def content_hash(
        self, conn: sa.Connection, source: str, params: dict[str, object], columns: Sequence[str]
    ) -> tuple[str, ...]:
        """The rows of `source` counted, and an order-independent hash of their `columns`:
        a change to any other column leaves it as it was."""

    @abstractmethod
    def read_snapshot(self, conn: sa.Connection) -> str | None:
        """The snapshot `conn`'s transaction reads (None: the database cannot name it, and
        nothing else writes while the day's transaction holds it, as on SQLite)."""

    @abstractmethod
    def unchanged_since_sql(self, table: str) -> str:
        """SQL: `table`'s row is the version the snapshot in `:snapshot` saw (or TRUE where
        `read_snapshot` is None)."""

    @abstractmethod
    def rows_changed_since(
        self, conn: sa.Connection, source: str, params: dict[str, object], snapshot: str | None
    ) -> int:
        """Rows of `source` written, by another transaction than `conn`'s, after `snapshot`."""

    @abstractmethod
    @contextmanager
    def snapshot_reader(self, conn: sa.Connection) -> Iterator[sa.Connection]:
        """A connection whose reads all see one snapshot, taken now: a day read in several
        queries then never sees a row twice or not at all. `conn`: the day's transaction."""

    def read_beside(
        self, reader: sa.Connection, reads: Sequence[Callable[[sa.Connection], T]]
    ) -> list[T]:
        """Each read's result, each read given a connection that sees `reader`'s snapshot
        (`snapshot_reader`). Here in turn on `reader`; a database that can share a snapshot
        between connections runs them at once, a connection each."""
        return [read(reader) for read in reads]

    @abstractmethod
    def read_day(
        self,
        conn: sa.Connection | None,
        table: str,
        output: OutputTable,
        day: date,
        chosen: Sequence[Column],
    ) -> pd.DataFrame:
        """The chosen columns of a stored day but its date, in the core's names and types."""

    @abstractmethod
    def day_param(self) -> str:
        """The placeholder of the day in a query run by `select_frame`."""

    @abstractmethod
    def bigint_sum(self, column: str) -> str:
        """SQL of an exact integer sum."""

    @abstractmethod
    def pico_sum(self, cents: str) -> str:
        """SQL of an exact sum of a NUMERIC cents column, in integer pico-dollars, of type
        `pico_sum_type` (a sum may leave int64: `money.money_series` reads either)."""

    pico_sum_type: pa.DataType = pa.int64()

    @abstractmethod
    def select_frame(
        self, conn: sa.Connection | None, select: str, day: date, types: dict[str, pa.DataType]
    ) -> pd.DataFrame:
        """Run `select` (its day at `day_param()`) into a frame typed as `types` says:
        strings as str or None, integers as Int64, booleans as boolean."""

    @abstractmethod
    def sums_equal(self, left: Sequence, right: Sequence) -> bool:
        """Whether two rows of sums agree (exactly, where the database sums exactly)."""

    @abstractmethod
    def same_estimate(self, usage: str) -> str:
        """SQL: token_usage's estimate equals the one the results were computed from."""

    @abstractmethod
    def stage_write_back(
        self, conn: sa.Connection, results: pd.DataFrame, definitions: str
    ) -> str | None:
        """Stage a part's results for the write-back and name the table, or None to read
        the stored day of reconciled_usage instead (`stage_results`)."""

    @abstractmethod
    def write_back_update(
        self,
        conn: sa.Connection,
        sql: WriteBackSql,
        day: date,
        reconciled_at: datetime,
        count_disagreeing: Callable[[], int],
    ) -> tuple[int, int]:
        """Run the write-back's UPDATE: (rows updated, rows the application changed)."""

    @abstractmethod
    def cancel(self, conn: sa.Connection) -> None:
        """Stop the statement running on `conn` from another thread."""

    @abstractmethod
    def analyze(self, conn: sa.Connection, table: str) -> None:
        """Refresh the planner's statistics of `table`, in `conn`'s transaction."""


def dialect_for(engine: sa.Engine, usage: str) -> Dialect:
    """The dialect of the engine's database."""
    from recon_pipeline.io.dialect_postgres import PostgresDialect
    from recon_pipeline.io.dialect_sqlite import SqliteDialect

    if engine.dialect.name == "postgresql":
        return PostgresDialect(engine, usage)
    return SqliteDialect(engine, usage)
