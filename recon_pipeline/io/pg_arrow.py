"""A large day's two reads on PostgreSQL through ADBC (`adbc-driver-postgresql`), which reads
COPY's binary format into Arrow in C++: at 1M rows, both sides of a day in two thirds of the
time and half the process's CPU of psycopg's COPY to CSV parsed by pyarrow (`pg_copy`;
benchmarks/README.md, issue 19 session 12). A smaller day keeps to psycopg, on the reader's
own connection: a read here opens a connection of its own (`ARROW_READ_ROWS`).

That connection is opened with the reader's parameters and password, on the same server
(host and port pinned), and imports the reader's snapshot (`pg_export_snapshot`), so it sees
exactly what the reader's REPEATABLE READ transaction sees. ADBC streams a query through COPY
only when it has no bound parameters (it would otherwise fetch the whole result at once), so
the query's dates and instants are written into it as literals (`day_literal`,
`moment_literal`): nothing else is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import date, datetime
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from recon_pipeline.io.pg_copy import write_parts
from recon_pipeline.io.secrets import SECRET_QUERY_KEYS, error_detail

# A day whose rows and records add up to this many is read through ADBC; at 100,000 rows its
# two reads take about a second, against a few milliseconds for the connection it opens.
ARROW_READ_ROWS = 100_000
_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f]+-[0-9A-Fa-f]+-[0-9]+")
# Parameters that could send the read's connection to another server than the reader's.
_ANOTHER_SERVER = ("load_balance_hosts", "target_session_attrs")


class ArrowReadError(RuntimeError):
    """The read's own connection could not be opened or set up; the message carries none of
    the connection's secrets."""


def export_snapshot(conn: sa.Connection) -> str:
    """The id of `conn`'s snapshot, for another connection's `SET TRANSACTION SNAPSHOT`."""
    snapshot = conn.execute(sa.text("SELECT pg_export_snapshot()")).scalar_one()
    if not _SNAPSHOT_ID.fullmatch(snapshot):
        raise RuntimeError(f"unexpected snapshot id from pg_export_snapshot: {snapshot!r}")
    return snapshot


def moment_literal(moment: datetime) -> str:
    """An aware instant as a `timestamptz` literal, exact to the microsecond."""
    if type(moment) is not datetime or moment.utcoffset() is None:
        raise ValueError(f"not an aware datetime: {moment!r}")
    return f"'{moment.isoformat()}'::timestamptz"


def day_literal(day: date) -> str:
    """A day as a `date` literal."""
    if type(day) is not date:
        raise ValueError(f"not a date: {day!r}")
    return f"'{day.isoformat()}'::date"


def _conninfo(conn: sa.Connection) -> tuple[str, set[str]]:
    """The reader's connection parameters for the read's own connection, pinned to the
    reader's server, in UTF-8; and the secrets among them."""
    info = conn.connection.driver_connection.info
    params = {k: v for k, v in conninfo_to_dict(info.dsn).items() if k not in _ANOTHER_SERVER}
    params |= {"host": info.host, "port": str(info.port), "client_encoding": "UTF8"}
    if info.hostaddr:
        params["hostaddr"] = info.hostaddr
    if info.password:
        params["password"] = info.password
    secrets = {str(v) for k, v in params.items() if k in SECRET_QUERY_KEYS and v}
    return make_conninfo("", **params), secrets


@contextmanager
def snapshot_connection(conn: sa.Connection) -> Iterator[adbc.Connection]:
    """An ADBC connection to `conn`'s server, in a read-only REPEATABLE READ transaction that
    sees `conn`'s snapshot; rolled back and closed when the block ends. When the block
    raises, whatever the connection is running is cancelled first, so that the rollback does
    not wait for the rest of a day's COPY."""
    snapshot = export_snapshot(conn)
    conninfo, secrets = _conninfo(conn)
    arrow = None
    try:
        arrow = adbc.connect(conninfo, autocommit=False)
        with arrow.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cursor.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
    except Exception as error:
        if arrow is not None:
            with suppress(Exception):
                arrow.close()
        raise ArrowReadError(
            f"cannot open the read's own connection: {error_detail(error, secrets)}"
        ) from None
    try:
        yield arrow
    except BaseException:
        with suppress(Exception):
            arrow.adbc_cancel()
        with suppress(Exception):
            arrow.rollback()
        with suppress(Exception):
            arrow.close()
        raise
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
    column as `types` says (every column but `part`, an int32, must be there). `select` must
    carry no parameters (`day_literal`, `moment_literal`). Text is checked to be UTF-8, as
    pyarrow's CSV reader checks it."""
    with snapshot_connection(conn) as arrow, arrow.cursor() as cursor:
        cursor.execute(select)
        reader = cursor.fetch_record_batch()
        schema = pa.schema(
            pa.field(field.name, pa.int32() if field.name == "part" else types[field.name])
            for field in reader.schema
        )
        return write_parts(_checked(reader, schema), schema, parts, directory, name)


def _checked(reader: pa.RecordBatchReader, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    for batch in reader:
        batch = batch.cast(schema)
        batch.validate(full=True)
        yield batch
