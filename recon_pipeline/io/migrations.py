"""The one migration the pipeline needs on the application's `token_usage` table.

It adds the three columns the pipeline writes (plus the OpenAI id columns if the
application has not added them yet), a CHECK on the status, the indexes the daily and
pending queries use, and the `<table>_with_costs` view. Each step runs only when the
catalogue says it is missing, so a re-run blocks no writer and reports nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from dataclasses import dataclass
from functools import cache
from importlib import resources

import sqlalchemy as sa

from recon_pipeline.core.schema import STATUSES
from recon_pipeline.io.database import begin_sqlite
from recon_pipeline.io.identifiers import qualified, validate_identifier
from recon_pipeline.io.secrets import masked_url, scrub_url_secrets

RECONCILIATION_STATUSES = STATUSES

# Columns in the order they are added; the name of the block in the SQL files is add_column.<c>.
MIGRATED_COLUMNS = (
    "openai_request_id",
    "openai_created",
    "system_fingerprint",
    "actual_cost_cents",
    "reconciled_at",
    "reconciliation_status",
)
# The application's columns the view selects; without them the view cannot be created.
APP_COLUMNS = (
    "id",
    "user_id",
    "action_type",
    "model_used",
    "input_tokens",
    "output_tokens",
    "calculated_cost_cents",
    "created_at",
)
# What a pre-existing pipeline column must look like on PostgreSQL (format_type prefixes).
_PG_EXPECTED_TYPES = {
    "actual_cost_cents": ("numeric",),
    "reconciled_at": ("timestamp with time zone",),
    "reconciliation_status": ("text", "character varying"),
}
# Serialises concurrent runs of this migration within a database.
_ADVISORY_LOCK_KEY = 0x7265636F6E6D6967  # "reconmig"
_MAX_IDENTIFIER = 63


class MigrationError(RuntimeError):
    """The table cannot be brought to the pipeline's shape as it stands."""


@dataclass(frozen=True)
class _Names:
    """Every name the migration uses, validated and quoted once, before any SQL exists."""

    table: str
    schema: str | None
    view: str
    status_check: str
    created_at_idx: str
    request_id_idx: str
    pending_idx: str


def _derived_name(table: str, suffix: str) -> str:
    """`<table>_<suffix>`, shortened with a hash when over 63 characters (PostgreSQL would
    silently truncate it, and two long names could then collide)."""
    name = f"{table}_{suffix}"
    if len(name) > _MAX_IDENTIFIER:
        digest = hashlib.sha1(table.encode()).hexdigest()[:8]
        keep = _MAX_IDENTIFIER - len(suffix) - len(digest) - 2
        name = f"{table[:keep]}_{digest}_{suffix}"
    return validate_identifier(name, "derived name")


def _names(table: str, schema: str | None) -> _Names:
    """Raises InvalidIdentifierError for a bad name before a connection is opened."""
    qualified(table, schema)
    return _Names(
        table=table,
        schema=schema,
        view=_derived_name(table, "with_costs"),
        status_check=_derived_name(table, "reconciliation_status_check"),
        created_at_idx=_derived_name(table, "created_at_idx"),
        request_id_idx=_derived_name(table, "openai_request_id_idx"),
        pending_idx=_derived_name(table, "pending_created_at_idx"),
    )


@cache
def _blocks(filename: str) -> dict[str, str]:
    """The `-- name: x` blocks of an SQL file under io/sql, comments dropped."""
    text = resources.files("recon_pipeline.io").joinpath("sql", filename).read_text("utf-8")
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        marker = re.fullmatch(r"--\s*name:\s*(\S+)\s*", line)
        if marker:
            current = blocks.setdefault(marker.group(1), [])
        elif current is not None and not line.lstrip().startswith("--"):
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in blocks.items()}


def _statuses_literal() -> str:
    return ", ".join("'" + s.replace("'", "''") + "'" for s in RECONCILIATION_STATUSES)


# PostgreSQL


def _pg_snapshot(conn: sa.Connection, oid: int, view: str) -> dict[str, dict[str, object]]:
    """The table's columns, indexes, constraints and the view, as the catalogue has them."""
    columns = conn.execute(
        sa.text(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,"
            " pg_get_expr(d.adbin, d.adrelid)"
            " FROM pg_attribute a"
            " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
            " WHERE a.attrelid = :oid AND a.attnum > 0 AND NOT a.attisdropped"
            " ORDER BY a.attnum"
        ),
        {"oid": oid},
    ).all()
    indexes = conn.execute(
        sa.text(
            "SELECT i.relname, pg_get_indexdef(i.oid), x.indisvalid, am.amname,"
            " a.attname AS first_column, x.indpred IS NOT NULL AS partial"
            " FROM pg_index x"
            " JOIN pg_class i ON i.oid = x.indexrelid"
            " JOIN pg_am am ON am.oid = i.relam"
            " LEFT JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]"
            " WHERE x.indrelid = :oid"
        ),
        {"oid": oid},
    ).all()
    constraints = conn.execute(
        sa.text(
            "SELECT conname, pg_get_constraintdef(oid), convalidated"
            " FROM pg_constraint WHERE conrelid = :oid"
        ),
        {"oid": oid},
    ).all()
    view_def = conn.execute(
        sa.text(
            "SELECT pg_get_viewdef(c.oid) FROM pg_class c"
            " WHERE c.oid = to_regclass(:view) AND c.relkind = 'v'"
        ),
        {"view": view},
    ).scalar()
    return {
        "columns": {r[0]: (r[1], r[2], r[3]) for r in columns},
        "indexes": {r[0]: tuple(r[1:]) for r in indexes},
        "constraints": {r[0]: (r[1], r[2]) for r in constraints},
        "view": {view: view_def} if view_def is not None else {},
    }


def _has_equivalent_index(indexes: dict[str, tuple], name: str, column: str) -> bool:
    """Our index, or a valid full btree index led by the same column the app already has."""
    if name in indexes:
        return True
    return any(
        valid and am == "btree" and first == column and not partial
        for _, valid, am, first, partial in indexes.values()
    )


def _pg_migrate(conn: sa.Connection, names: _Names) -> list[str]:
    blocks = _blocks("postgres_migration.sql")
    table = qualified(names.table, names.schema)
    conn.exec_driver_sql(blocks["lock_timeout"])
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK_KEY})

    found = conn.execute(
        sa.text(
            "SELECT c.oid, n.nspname, c.relkind FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(:t)"
        ),
        {"t": table},
    ).first()
    if found is None or found.relkind not in ("r", "p"):
        raise MigrationError(f"table {table} does not exist (or is not a table)")
    oid, namespace = found.oid, validate_identifier(found.nspname, "schema name")
    subst = {
        "table": table,
        "view": qualified(names.view, namespace),
        "status_check": f'"{names.status_check}"',
        "statuses": _statuses_literal(),
        "created_at_idx": f'"{names.created_at_idx}"',
        "request_id_idx": f'"{names.request_id_idx}"',
        "pending_idx": f'"{names.pending_idx}"',
    }

    before = _pg_snapshot(conn, oid, subst["view"])
    columns = before["columns"]
    missing_app = [c for c in APP_COLUMNS if c not in columns]
    if missing_app:
        raise MigrationError(f"table {table} lacks the application's columns {missing_app}")
    wrong = {
        c: columns[c][0]
        for c, prefixes in _PG_EXPECTED_TYPES.items()
        if c in columns and not str(columns[c][0]).startswith(prefixes)
    }
    if wrong:
        raise MigrationError(f"table {table} has pipeline columns of the wrong type: {wrong}")

    def run(block: str) -> None:
        conn.exec_driver_sql(blocks[block].format(**subst))

    for column in MIGRATED_COLUMNS:
        if column not in columns:
            run(f"add_column.{column}")
    check = before["constraints"].get(names.status_check)
    if check is None:
        run("add_status_check")
    if check is None or not check[1]:
        run("validate_status_check")
    indexes = before["indexes"]
    if not _has_equivalent_index(indexes, names.created_at_idx, "created_at"):
        run("index.created_at")
    if not _has_equivalent_index(indexes, names.request_id_idx, "openai_request_id"):
        run("index.openai_request_id")
    if names.pending_idx not in indexes:
        run("index.pending")
    run("view")

    return _describe_changes(before, _pg_snapshot(conn, oid, subst["view"]))


# SQLite


def _sqlite_snapshot(conn: sa.Connection, schema: str, table: str, view: str) -> dict:
    columns = conn.exec_driver_sql(f'PRAGMA "{schema}".table_info("{table}")').all()
    objects = conn.exec_driver_sql(
        f'SELECT type, name, sql FROM "{schema}".sqlite_master'
        " WHERE (type = 'index' AND tbl_name = ?) OR (type = 'view' AND name = ?)",
        (table, view),
    ).all()
    return {
        "columns": {r[1]: (r[2], bool(r[3]), r[4]) for r in columns},
        "indexes": {name: (sql,) for kind, name, sql in objects if kind == "index"},
        "constraints": {},
        "view": {name: sql for kind, name, sql in objects if kind == "view"},
    }


def _view_body(create_view_sql: str) -> str:
    return create_view_sql.partition(" AS")[2].strip()


def _sqlite_migrate(conn: sa.Connection, names: _Names) -> list[str]:
    blocks = _blocks("sqlite_migration.sql")
    schema = validate_identifier(names.schema or "main", "schema name")
    subst = {
        "table": qualified(names.table, schema),
        "table_name": f'"{names.table}"',
        "view": qualified(names.view, schema),
        "status_check_name": f'"{names.status_check}"',
        "statuses": _statuses_literal(),
        "created_at_idx": qualified(names.created_at_idx, schema),
        "request_id_idx": qualified(names.request_id_idx, schema),
        "pending_idx": qualified(names.pending_idx, schema),
    }

    def sql(block: str) -> str:
        return blocks[block].format(**subst)

    before = _sqlite_snapshot(conn, schema, names.table, names.view)
    columns = before["columns"]
    if not columns:
        raise MigrationError(f"table {subst['table']} does not exist")
    missing_app = [c for c in APP_COLUMNS if c not in columns]
    if missing_app:
        raise MigrationError(
            f"table {subst['table']} lacks the application's columns {missing_app}"
        )
    for column in MIGRATED_COLUMNS:
        if column not in columns:
            conn.exec_driver_sql(sql(f"add_column.{column}"))
    for block in ("index.created_at", "index.openai_request_id", "index.pending"):
        conn.exec_driver_sql(sql(block))
    stored_view = before["view"].get(names.view)
    if stored_view is None or _view_body(stored_view) != _view_body(sql("view")):
        conn.exec_driver_sql(sql("drop_view"))
        conn.exec_driver_sql(sql("view"))

    return _describe_changes(before, _sqlite_snapshot(conn, schema, names.table, names.view))


# Shared


def _describe_changes(before: dict, after: dict) -> list[str]:
    steps: list[str] = []
    for name, (type_, notnull, default) in after["columns"].items():
        if name not in before["columns"]:
            extra = (" NOT NULL" if notnull else "") + (f" DEFAULT {default}" if default else "")
            steps.append(f"added column {name} {type_}{extra}")
    for name, (definition, validated) in after["constraints"].items():
        old = before["constraints"].get(name)
        if old is None:
            steps.append(f"added constraint {name} {definition}")
        elif validated and not old[1]:
            steps.append(f"validated constraint {name}")
    for name in after["indexes"]:
        if name not in before["indexes"]:
            steps.append(f"created index {name}")
    for name, definition in after["view"].items():
        old = before["view"].get(name)
        if old is None:
            steps.append(f"created view {name}")
        elif old != definition:
            steps.append(f"replaced view {name}")
    return steps


def _migrate(conn: sa.Connection, names: _Names) -> list[str]:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return _pg_migrate(conn, names)
    if dialect == "sqlite":
        return _sqlite_migrate(conn, names)
    raise MigrationError(f"unsupported database {dialect!r} (PostgreSQL or SQLite)")


def apply_migration(
    engine: sa.Engine, table: str = "token_usage", schema: str | None = None
) -> list[str]:
    """Bring `table` to the shape the pipeline needs, in one transaction.

    Idempotent; returns the steps that actually changed something (empty when up to date).
    `schema=None` means the connection's search_path on PostgreSQL, `main` on SQLite.
    """
    names = _names(table, schema)
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            begin_sqlite(conn)
        return _migrate(conn, names)


def create_demo_token_usage(
    engine: sa.Engine, table: str = "token_usage", schema: str | None = None
) -> None:
    """Create an empty, already migrated table shaped like the application's.

    The embedded demo and the tests need the application's table without the application.
    """
    names = _names(table, schema)
    with engine.begin() as conn:
        dialect = conn.dialect.name
        if dialect == "sqlite":
            begin_sqlite(conn)
            target = qualified(table, schema or "main")
            conn.exec_driver_sql(_blocks("sqlite_migration.sql")["demo_table"].format(table=target))
        elif dialect == "postgresql":
            target = qualified(table, schema)
            conn.exec_driver_sql(
                _blocks("postgres_migration.sql")["demo_table"].format(table=target)
            )
        _migrate(conn, names)


def main(argv: list[str] | None = None) -> int:
    """`recon-migrate`: apply the migration to RECON_DATABASE_URL (or --url)."""
    parser = argparse.ArgumentParser(
        prog="recon-migrate",
        description="Add the reconciliation columns, indexes and view to token_usage.",
    )
    parser.add_argument("--url", default=None, help="SQLAlchemy URL (default: $RECON_DATABASE_URL)")
    parser.add_argument(
        "--table",
        default=os.environ.get("RECON_USAGE_TABLE", "token_usage"),
        help="table name (default: $RECON_USAGE_TABLE, else token_usage)",
    )
    parser.add_argument(
        "--schema",
        default=os.environ.get("RECON_USAGE_SCHEMA") or None,
        help="schema (default: $RECON_USAGE_SCHEMA, else the search_path; `main` on SQLite)",
    )
    args = parser.parse_args(argv)

    raw_url = args.url or os.environ.get("RECON_DATABASE_URL")
    if not raw_url:
        print("recon-migrate: set RECON_DATABASE_URL or pass --url", file=sys.stderr)
        return 2
    try:
        url = sa.make_url(raw_url)
        target = qualified(args.table, args.schema)
        engine = sa.create_engine(url)
        try:
            print(f"recon-migrate: {target} at {masked_url(raw_url)}")
            steps = apply_migration(engine, args.table, args.schema)
        finally:
            engine.dispose()
    except Exception as exc:
        detail = scrub_url_secrets(f"{type(exc).__name__}: {exc}", raw_url)
        print(f"recon-migrate: failed: {detail}", file=sys.stderr)
        return 1
    for step in steps:
        print(f"  {step}")
    if not steps:
        print("  already up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
