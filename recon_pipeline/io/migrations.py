"""The one migration the pipeline needs on the application's `token_usage` table.

It adopts the table as the application left it. It adds the three columns the pipeline
writes (plus the OpenAI id columns if the application has not added them yet), widens an
integer `actual_cost_cents` to exact NUMERIC (recreating every view that reads it), adds a
CHECK on the status (NOT VALID while rows hold other values), the indexes the daily and
pending queries use unless equivalent ones exist, and the pipeline's own view
`<table>_reconciliation`. It never replaces a view it did not create.

The migration is planned first, from the catalogue, as a list of SQL statements; then the
statements run, all in one transaction, or are only printed (`--dry-run`) or written to a
file (`--print-sql`). Each step is planned only when missing, so a re-run changes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from recon_pipeline.core.schema import STATUSES
from recon_pipeline.io.catalogue import has_equivalent_index, pg_snapshot, resolve_table
from recon_pipeline.io.connections import begin_sqlite
from recon_pipeline.io.identifiers import qualified, validate_identifier
from recon_pipeline.io.migration_sql import blocks, script, write_sql_file
from recon_pipeline.io.output_schema import upgrade_output_schema
from recon_pipeline.io.secrets import masked_url, scrub_url_secrets
from recon_pipeline.io.usage_types import usage_type_message, wrong_usage_types
from recon_pipeline.io.view_rebuild import dependent_views, rebuild_statements
from recon_pipeline.io.whole_cents import INTEGER_TYPES

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
VIEW_MARKER = "Created by recon-migrate (recon_pipeline); it replaces this view when it changes."
KEEP_INTEGER_CENTS_ENV = "RECON_KEEP_INTEGER_CENTS"
# Serialises concurrent runs of this migration within a database.
_ADVISORY_LOCK_KEY = 0x7265636F6E6D6967  # "reconmig"
_MAX_IDENTIFIER = 63


class MigrationError(RuntimeError):
    """The table cannot be brought to the pipeline's shape as it stands."""


@dataclass(frozen=True)
class MigrationNames:
    """Every name the migration uses, validated and quoted once, before any SQL exists."""

    table: str
    schema: str | None
    view: str
    status_check: str
    created_at_idx: str
    request_id_idx: str
    pending_idx: str


@dataclass
class MigrationPlan:
    """What the migration does to one table: `statements` in order, in one transaction.

    `preamble` runs before the catalogue is read (lock timeout, the migration's advisory
    lock, an empty search_path); `notices` are what the user must know but the migration
    does not change (rows with other statuses). `steps` is filled once it has run.
    """

    target: str
    preamble: list[str] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    rebuilt_views: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    def sql(self) -> str:
        """The exact SQL the migration runs (empty when there is nothing to do)."""
        return script(self.preamble + self.statements) if self.statements else ""


def derived_name(table: str, suffix: str) -> str:
    """`<table>_<suffix>`, shortened with a hash when over 63 characters (PostgreSQL would
    silently truncate it, and two long names could then collide)."""
    name = f"{table}_{suffix}"
    if len(name) > _MAX_IDENTIFIER:
        digest = hashlib.sha1(table.encode()).hexdigest()[:8]
        keep = _MAX_IDENTIFIER - len(suffix) - len(digest) - 2
        name = f"{table[:keep]}_{digest}_{suffix}"
    return validate_identifier(name, "derived name")


def migration_names(table: str, schema: str | None) -> MigrationNames:
    """Raises InvalidIdentifierError for a bad name before a connection is opened."""
    qualified(table, schema)
    return MigrationNames(
        table=table,
        schema=schema,
        view=derived_name(table, "reconciliation"),
        status_check=derived_name(table, "reconciliation_status_check"),
        created_at_idx=derived_name(table, "created_at_idx"),
        request_id_idx=derived_name(table, "openai_request_id_idx"),
        pending_idx=derived_name(table, "pending_created_at_idx"),
    )


def _statuses_literal() -> str:
    return ", ".join("'" + s.replace("'", "''") + "'" for s in RECONCILIATION_STATUSES)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# PostgreSQL


def _check_types(table: str, columns: dict, keep_integer_cents: bool) -> bool:
    """Whether actual_cost_cents must be widened; raises, before any change, for a type the
    pipeline would get wrong results from (`usage_types`: the run refuses the same table)."""
    missing_app = [c for c in APP_COLUMNS if c not in columns]
    if missing_app:
        raise MigrationError(f"table {table} lacks the application's columns {missing_app}")
    wrong = wrong_usage_types({name: column[0] for name, column in columns.items()})
    if wrong:
        raise MigrationError(usage_type_message(table, wrong) + "; nothing was changed")
    cost_type = str(columns["actual_cost_cents"][0]) if "actual_cost_cents" in columns else ""
    return cost_type in INTEGER_TYPES and not keep_integer_cents


def status_offenders(conn: sa.Connection, table: str) -> list[tuple[str, int]]:
    return [
        (str(value), int(count))
        for value, count in conn.execute(
            sa.text(
                f"SELECT reconciliation_status, count(*) FROM {table}"
                f" WHERE reconciliation_status NOT IN ({_statuses_literal()})"
                " GROUP BY 1 ORDER BY 2 DESC, 1"
            )
        )
    ]


def _offender_notice(table: str, offenders: list[tuple[str, int]], check: str) -> str:
    counts = ", ".join(f"{value!r}: {count}" for value, count in offenders)
    values = ", ".join(_literal(value) for value, _ in offenders)
    return (
        f"{table}.reconciliation_status holds values that are not pipeline statuses"
        f" ({counts}); the CHECK {check} stays NOT VALID (new rows are checked) until they"
        f" are dealt with, e.g. `UPDATE {table} SET reconciliation_status = 'pending'"
        f" WHERE reconciliation_status IN ({values});` (the next run reconciles them), then"
        " run recon-migrate again to validate it"
    )


def _pg_plan(
    conn: sa.Connection, names: MigrationNames, keep_integer_cents: bool
) -> tuple[MigrationPlan, int, dict, str]:
    """Plan the migration from the catalogue; runs only the preamble (no change)."""
    sql = blocks("postgres_migration.sql")
    plan = MigrationPlan(target=qualified(names.table, names.schema))
    plan.preamble = [
        sql["lock_timeout"],
        sql["advisory_lock"].format(lock_key=_ADVISORY_LOCK_KEY),
    ]
    for statement in plan.preamble:
        conn.exec_driver_sql(statement)
    oid, namespace = resolve_table(conn, plan.target)
    plan.preamble.append(sql["search_path"])
    conn.exec_driver_sql(sql["search_path"])
    table = plan.target = qualified(names.table, namespace)
    view = qualified(names.view, namespace)
    subst = {
        "table": table,
        "view": view,
        "status_check": f'"{names.status_check}"',
        "statuses": _statuses_literal(),
        "created_at_idx": f'"{names.created_at_idx}"',
        "request_id_idx": f'"{names.request_id_idx}"',
        "pending_idx": f'"{names.pending_idx}"',
    }

    view_sql = sql["view"].format(**subst)
    marker = f"{VIEW_MARKER} [{hashlib.sha256(view_sql.encode()).hexdigest()[:16]}]"
    subst |= {"view_marker_text": marker, "view_marker": _literal(marker)}

    def add(block: str) -> None:
        plan.statements.append(sql[block].format(**subst))

    before = pg_snapshot(conn, oid, view)
    columns = before["columns"]
    widen = _check_types(table, columns, keep_integer_cents)
    for column in MIGRATED_COLUMNS:
        if column not in columns:
            add(f"add_column.{column}")
    if widen:
        views = dependent_views(conn, oid, ["actual_cost_cents"])
        plan.rebuilt_views = [v.name for v in views]
        change = [sql["widen_actual_cost_cents"].format(**subst)]
        plan.statements.extend(rebuild_statements(views, change))
    _plan_status_check(conn, plan, names, before, "reconciliation_status" in columns, add)
    indexes = before["indexes"]
    if not has_equivalent_index(indexes, names.created_at_idx, "created_at"):
        add("index.created_at")
    if not has_equivalent_index(indexes, names.request_id_idx, "openai_request_id"):
        add("index.openai_request_id")
    if not has_equivalent_index(indexes, names.pending_idx, "reconciliation_status", True):
        add("index.pending")
    _plan_view(plan, before, view, subst, add)
    return plan, oid, before, view


def _plan_status_check(
    conn: sa.Connection,
    plan: MigrationPlan,
    names: MigrationNames,
    before: dict,
    had_column: bool,
    add,
) -> None:
    check = before["constraints"].get(names.status_check)
    if check is not None and check[1]:
        return
    if check is None:
        add("add_status_check")
    offenders = status_offenders(conn, plan.target) if had_column else []
    if offenders:
        plan.notices.append(_offender_notice(plan.target, offenders, names.status_check))
    else:
        add("validate_status_check")


def _plan_view(plan: MigrationPlan, before: dict, view: str, subst: dict, add) -> None:
    """Create or replace the pipeline's own view when its SQL changed; refuse to touch any
    relation of that name that recon-migrate did not create."""
    existing = before["view_row"].get(view)
    if existing is not None:
        kind, _, comment = existing
        if kind != "v" or not str(comment or "").startswith(VIEW_MARKER):
            raise MigrationError(
                f"{view} exists and was not created by recon-migrate, which never replaces"
                " a relation it did not create: rename or drop it, then run recon-migrate again"
            )
        if comment == subst["view_marker_text"]:
            return
    add("view")
    add("view_comment")


def _pg_migrate(
    conn: sa.Connection, names: MigrationNames, keep_integer_cents: bool, execute: bool
) -> MigrationPlan:
    plan, oid, before, view = _pg_plan(conn, names, keep_integer_cents)
    if not execute:
        return plan
    # Without parameters, so a captured view's `LIKE 'x%'` is not read as a placeholder.
    literal = conn.execution_options(no_parameters=True)
    for statement in plan.statements:
        literal.exec_driver_sql(statement)
    after = pg_snapshot(conn, oid, view)
    plan.steps = _describe_changes(before, after)
    plan.steps += [f"recreated view {v} (reads actual_cost_cents)" for v in plan.rebuilt_views]
    return plan


# SQLite (the embedded demo): a whole-cent column, RLS and foreign views do not arise there.


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


def _sqlite_migrate(conn: sa.Connection, names: MigrationNames, execute: bool) -> MigrationPlan:
    sql = blocks("sqlite_migration.sql")
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
    plan = MigrationPlan(target=subst["table"])

    def add(block: str) -> None:
        plan.statements.append(sql[block].format(**subst))

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
            add(f"add_column.{column}")
    for index, name in (
        ("index.created_at", names.created_at_idx),
        ("index.openai_request_id", names.request_id_idx),
        ("index.pending", names.pending_idx),
    ):
        if name not in before["indexes"]:
            add(index)
    stored_view = before["view"].get(names.view)
    if stored_view is None or _view_body(stored_view) != _view_body(sql["view"].format(**subst)):
        add("drop_view")
        add("view")
    if execute:
        for statement in plan.statements:
            conn.exec_driver_sql(statement)
        after = _sqlite_snapshot(conn, schema, names.table, names.view)
        plan.steps = _describe_changes(before, after)
    return plan


# Shared


def _describe_changes(before: dict, after: dict) -> list[str]:
    steps: list[str] = []
    for name, (type_, notnull, default) in after["columns"].items():
        old = before["columns"].get(name)
        if old is None:
            extra = (" NOT NULL" if notnull else "") + (f" DEFAULT {default}" if default else "")
            steps.append(f"added column {name} {type_}{extra}")
        elif old[0] != type_:
            steps.append(f"changed column {name} from {old[0]} to {type_}")
    for name, (definition, validated) in after["constraints"].items():
        old = before["constraints"].get(name)
        if old is None:
            # pg_get_constraintdef ends a constraint not yet validated with "NOT VALID".
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


def migrate(
    engine: sa.Engine,
    table: str = "token_usage",
    schema: str | None = None,
    keep_integer_cents: bool = False,
    execute: bool = True,
) -> MigrationPlan:
    """Plan the migration of `table` and, when `execute`, run it, in one transaction.

    Idempotent: `plan.steps` lists what changed (empty when up to date). Without `execute`
    the transaction is rolled back and nothing is changed (`plan.sql()` is what would run).
    `schema=None` means the connection's search_path on PostgreSQL, `main` on SQLite.
    """
    names = migration_names(table, schema)
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            dialect = conn.dialect.name
            if dialect == "postgresql":
                plan = _pg_migrate(conn, names, keep_integer_cents, execute)
            elif dialect == "sqlite":
                begin_sqlite(conn)
                plan = _sqlite_migrate(conn, names, execute)
            else:
                raise MigrationError(f"unsupported database {dialect!r} (PostgreSQL or SQLite)")
        except BaseException:
            transaction.rollback()
            raise
        if execute:
            transaction.commit()
        else:
            transaction.rollback()
    return plan


def apply_migration(
    engine: sa.Engine,
    table: str = "token_usage",
    schema: str | None = None,
    keep_integer_cents: bool = False,
) -> list[str]:
    """Run the migration (see `migrate`); the steps that changed something."""
    return migrate(engine, table, schema, keep_integer_cents).steps


def create_demo_token_usage(
    engine: sa.Engine, table: str = "token_usage", schema: str | None = None
) -> None:
    """Create an empty, already migrated table shaped like the application's.

    The embedded demo and the tests need the application's table without the application.
    """
    migration_names(table, schema)
    with engine.begin() as conn:
        dialect = conn.dialect.name
        if dialect == "sqlite":
            begin_sqlite(conn)
            target = qualified(table, schema or "main")
            conn.exec_driver_sql(blocks("sqlite_migration.sql")["demo_table"].format(table=target))
        elif dialect == "postgresql":
            target = qualified(table, schema)
            conn.exec_driver_sql(
                blocks("postgres_migration.sql")["demo_table"].format(table=target)
            )
    migrate(engine, table, schema)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recon-migrate",
        description="Adopt the application's token_usage table: reconciliation columns,"
        " status CHECK, indexes and the pipeline's own view.",
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
    parser.add_argument(
        "--keep-integer-cents",
        action="store_true",
        default=_flag(KEEP_INTEGER_CENTS_ENV),
        help="keep an INTEGER actual_cost_cents (whole cents, rounded half-even) instead of"
        f" widening it to NUMERIC (default: ${KEEP_INTEGER_CENTS_ENV})",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--dry-run", action="store_true", help="print the exact SQL it would run; change nothing"
    )
    output.add_argument(
        "--print-sql",
        metavar="DIR",
        type=Path,
        help="write that SQL to DIR/recon_pipeline_<table>.sql for the application's own"
        " migration folder; change nothing",
    )
    parser.add_argument(
        "--output-schema",
        default=os.environ.get("RECON_OUTPUT_SCHEMA") or None,
        help="the output tables' schema (default: $RECON_OUTPUT_SCHEMA, else --schema)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """`recon-migrate`: apply the migration to RECON_DATABASE_URL (or --url)."""
    args = _parser().parse_args(argv)
    raw_url = args.url or os.environ.get("RECON_DATABASE_URL")
    if not raw_url:
        print("recon-migrate: set RECON_DATABASE_URL or pass --url", file=sys.stderr)
        return 2
    execute = not (args.dry_run or args.print_sql)
    try:
        url = sa.make_url(raw_url)
        target = qualified(args.table, args.schema)
        engine = sa.create_engine(url)
        try:
            comment = "-- " if args.dry_run else ""
            print(f"{comment}recon-migrate: {target} at {masked_url(raw_url)}")
            plan = migrate(engine, args.table, args.schema, args.keep_integer_cents, execute)
            output_steps = (
                upgrade_output_schema(engine, args.output_schema or args.schema) if execute else []
            )
        finally:
            engine.dispose()
    except Exception as exc:
        detail = scrub_url_secrets(f"{type(exc).__name__}: {exc}", raw_url)
        print(f"recon-migrate: failed: {detail}", file=sys.stderr)
        return 1
    if args.print_sql:
        statements = plan.preamble + plan.statements if plan.statements else []
        path = write_sql_file(args.print_sql, plan.target, statements, plan.notices)
        print(f"  wrote {path}")
    elif args.dry_run:
        print(plan.sql() or "-- already up to date: nothing to run", end="")
    else:
        for step in [*plan.steps, *output_steps]:
            print(f"  {step}")
        if not plan.steps and not output_steps:
            print("  already up to date")
    for notice in plan.notices:
        print(f"{'-- ' if args.dry_run else '  '}note: {notice}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
