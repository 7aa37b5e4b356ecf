"""Connections: opening an engine without leaking its password, borrowing the caller's
connection, SQLite's immediate transactions, advisory-lock keys."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime

import pandas as pd
import sqlalchemy as sa

from recon_pipeline.io.secrets import error_detail, masked_url, url_secrets


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
        detail = error_detail(cause, url_secrets(raw_url))
        raise DatabaseConnectionError(f"cannot connect to {shown}: {detail}") from None
    return engine


def lock_key(*parts: str) -> int:
    """A signed 64-bit advisory-lock key for the parts (stable across processes and hosts)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def connection(engine: sa.Engine, conn: sa.Connection | None) -> Iterator[sa.Connection]:
    """`conn` itself when given (the caller's transaction), else a new connection."""
    if conn is not None:
        yield conn
        return
    with engine.connect() as fresh:
        yield fresh


@contextmanager
def driver_connection(engine: sa.Engine, conn: sa.Connection | None) -> Iterator:
    """The psycopg connection under `conn`, or under a new one (rolled back when returned)."""
    with connection(engine, conn) as chosen:
        yield chosen.connection.driver_connection


def begin_sqlite(conn: sa.Connection) -> None:
    """pysqlite opens a transaction only before DML; take the write lock at once instead, so
    a day's read-then-write (or a migration's DDL) is one transaction there too."""
    if not conn.connection.driver_connection.in_transaction:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def sqlite_ts(moment: datetime) -> str:
    return pd.Timestamp(moment).tz_convert("UTC").isoformat(timespec="microseconds")


def work_mem_at_least(conn: sa.Connection, kilobytes: int) -> str:
    """A `work_mem` value of at least `kilobytes`, never below the session's own setting."""
    return conn.execute(
        sa.text(
            "SELECT greatest(:kb, setting::bigint) || 'kB' FROM pg_settings WHERE name = 'work_mem'"
        ),
        {"kb": kilobytes},
    ).scalar_one()


@contextmanager
def local_settings(conn: sa.Connection, values: Mapping[str, str]) -> Iterator[None]:
    """PostgreSQL settings for the statements inside, local to the transaction and restored
    after; a failed statement rolls the transaction back, and the settings with it."""
    before = conn.execute(
        sa.text("SELECT " + ", ".join(f"current_setting('{name}')" for name in values))
    ).one()
    setting = sa.text("SELECT set_config(:name, :value, true)")
    for name, value in values.items():
        conn.execute(setting, {"name": name, "value": value})
    yield
    for name, value in zip(values, before, strict=True):
        conn.execute(setting, {"name": name, "value": value})
