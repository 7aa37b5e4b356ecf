"""A day's large reads on PostgreSQL through ADBC (`adbc-driver-postgresql`), which reads
COPY's binary format into Arrow in C++: at 1M rows, both sides of a day in 4.7 to 5.0 s and
3.5 to 4.3 s of the process's CPU, against 6.6 to 7.6 s and 6.8 to 7.8 s through psycopg's
COPY to CSV and pyarrow's CSV reader (benchmarks/README.md, session 12). Used where a read
is large and its parameters are dates and instants the pipeline made; anything else stays on
psycopg (`pg_copy`).

Each read has a connection of its own, opened with the caller's connection parameters and
password, that imports the caller's snapshot (`pg_export_snapshot`), so it sees exactly what
the caller's REPEATABLE READ transaction sees. ADBC streams a query through COPY only when it
has no bound parameters (it would otherwise fetch the whole result at once), so the query's
dates and instants are written into it as literals (`day_literal`, `moment_literal`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
import sqlalchemy as sa
from psycopg.conninfo import make_conninfo

from recon_pipeline.io.pg_copy import write_parts

_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f]+-[0-9A-Fa-f]+-[0-9]+")


class ArrowReadError(RuntimeError):
    """The read's own connection could not be opened or set up; the message carries no
    password."""


def moment_literal(moment: datetime) -> str:
    """An aware instant as a `timestamptz` literal, exact to the microsecond."""
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise ValueError(f"not an aware datetime: {moment!r}")
    return f"'{moment.isoformat()}'::timestamptz"


def day_literal(day: date) -> str:
    if isinstance(day, datetime) or not isinstance(day, date):
        raise ValueError(f"not a date: {day!r}")
    return f"'{day.isoformat()}'::date"


@contextmanager
def snapshot_connection(conn: sa.Connection) -> Iterator[adbc.Connection]:
    """An ADBC connection to `conn`'s database, in a read-only REPEATABLE READ transaction
    that sees `conn`'s snapshot; rolled back and closed when the block ends."""
    snapshot = conn.execute(sa.text("SELECT pg_export_snapshot()")).scalar_one()
    if not _SNAPSHOT_ID.fullmatch(snapshot):
        raise RuntimeError(f"unexpected snapshot id from pg_export_snapshot: {snapshot!r}")
    info = conn.connection.driver_connection.info
    password = info.password or ""
    conninfo = make_conninfo(info.dsn, password=password) if password else info.dsn
    try:
        arrow = adbc.connect(conninfo, autocommit=False)
    except Exception as error:
        detail = " ".join(str(error).split())
        if password:
            detail = detail.replace(password, "***")
        raise ArrowReadError(f"cannot open the read's own connection: {detail}") from None
    try:
        with arrow.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cursor.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        yield arrow
    finally:
        try:
            arrow.rollback()
        finally:
            arrow.close()


def arrow_out_parts(
    conn: sa.Connection,
    select: str,
    types: dict[str, pa.DataType],
    parts: int,
    directory: Path,
    name: str,
) -> list[Path]:
    """`pg_copy.copy_out_parts` through ADBC, in `conn`'s snapshot: the same files, each
    column typed as `types` says (ADBC's own type otherwise), `part` as int32. `select`
    must carry no parameters (`day_literal`, `moment_literal`)."""
    with snapshot_connection(conn) as arrow, arrow.cursor() as cursor:
        cursor.execute(select)
        reader = cursor.fetch_record_batch()
        schema = pa.schema(
            pa.field(
                field.name,
                pa.int32() if field.name == "part" else types.get(field.name, field.type),
            )
            for field in reader.schema
        )
        return write_parts((batch.cast(schema) for batch in reader), schema, parts, directory, name)
