"""`recon-doctor`: a read-only preflight of the application's database.

It reads the catalogue and the last 7 days of `token_usage` in a READ ONLY transaction and
reports what the pipeline needs and what it finds: columns and types, the status CHECK,
indexes (missing, redundant, invalid), row-level security and the role's privileges, the
views that read the reconciliation columns, and per route the share of rows carrying a
request id; and what the write-back's UPDATE meets: the application's CHECK constraints
on the written columns, tried on every status and cost the pipeline writes, and its
triggers that fire on UPDATE (`doctor_writes.py`). Every problem comes with the command or
SQL that fixes it. Exit code 0 only when the pipeline can run (warnings allowed).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from recon_pipeline.io.catalogue import has_equivalent_index, pg_snapshot
from recon_pipeline.io.database import REQUIRED_USAGE_COLUMNS, WRITTEN_USAGE_COLUMNS
from recon_pipeline.io.doctor_writes import check_constraints, update_triggers
from recon_pipeline.io.identifiers import qualified, validate_identifier
from recon_pipeline.io.migration_sql import blocks
from recon_pipeline.io.migrations import (
    KEEP_INTEGER_CENTS_ENV,
    migration_names,
    status_offenders,
)
from recon_pipeline.io.request_ids import postgres_request_id
from recon_pipeline.io.row_security import inspect_row_security
from recon_pipeline.io.secrets import masked_url, scrub_url_secrets
from recon_pipeline.io.usage_types import wrong_usage_types
from recon_pipeline.io.view_rebuild import ViewRebuildError, dependent_views
from recon_pipeline.io.whole_cents import INTEGER_TYPES

MIGRATE = "uv run recon-migrate"
_DUPLICATE_INDEXES = """
SELECT i.relname AS name, min(i2.relname) AS kept
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_index x2 ON x2.indrelid = x.indrelid AND x2.indexrelid <> x.indexrelid
  AND x2.indkey = x.indkey AND x2.indclass = x.indclass
  AND pg_get_expr(x2.indpred, x2.indrelid) IS NOT DISTINCT FROM pg_get_expr(x.indpred, x.indrelid)
  AND pg_get_expr(x2.indexprs, x2.indrelid) IS NOT DISTINCT FROM
      pg_get_expr(x.indexprs, x.indrelid)
JOIN pg_class i2 ON i2.oid = x2.indexrelid AND i2.relam = i.relam
WHERE x.indrelid = :oid AND NOT x.indisprimary AND NOT x.indisunique
  AND (x2.indisprimary OR x2.indisunique OR x2.indexrelid < x.indexrelid)
GROUP BY i.relname ORDER BY 1
"""
_REQUEST_ID_SHARE = f"""
SELECT action_type, count(*) AS rows, count({postgres_request_id("openai_request_id")}) AS with_id
FROM {{table}} WHERE created_at >= now() - interval '7 days'
GROUP BY 1 ORDER BY 2 DESC, 1
"""


@dataclass(frozen=True)
class Finding:
    """One line of the report. `level`: ok, info, warn (runs anyway) or fail (cannot run)."""

    section: str
    level: str
    message: str
    fix: str | None = None


class _Report:
    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.section = ""

    def __call__(self, level: str, message: str, fix: str | None = None) -> None:
        self.findings.append(Finding(self.section, level, message, fix))


def diagnose(
    conn: sa.Connection,
    table: str = "token_usage",
    schema: str | None = None,
    output_schema: str | None = None,
    role: str | None = None,
) -> list[Finding]:
    """Every finding on the table, for `role` (default: the connected role); PostgreSQL."""
    names = migration_names(table, schema)
    report = _Report()
    report.section = "table"
    oid = conn.execute(sa.text("SELECT to_regclass(:t)::oid"), {"t": qualified(table, schema)})
    oid = oid.scalar()
    if oid is None:
        report(
            "fail",
            f"no table {qualified(table, schema)}",
            "set RECON_USAGE_SCHEMA and RECON_USAGE_TABLE to where the application's table is",
        )
        return report.findings
    namespace = conn.execute(
        sa.text(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.oid = :o"
        ),
        {"o": oid},
    ).scalar_one()
    namespace = validate_identifier(namespace, "schema name")
    target = qualified(table, namespace)
    before = pg_snapshot(conn, oid, qualified(names.view, namespace))
    hidden = inspect_row_security(conn, target).problem is not None
    who = role or conn.execute(sa.text("SELECT current_user")).scalar_one()
    sections: list[tuple[str, Callable[[], None]]] = [
        ("columns", lambda: _columns(report, conn, target, oid, before)),
        ("status", lambda: _status(report, conn, target, names, before, hidden)),
        ("indexes", lambda: _indexes(report, conn, target, oid, names, before)),
        ("access", lambda: _access(report, conn, target, namespace, output_schema, role)),
        ("write-back constraints", lambda: check_constraints(report, conn, target, oid)),
        ("write-back triggers", lambda: update_triggers(report, conn, target, oid, who)),
        ("views", lambda: _views(report, conn, oid, before)),
        ("request ids, last 7 days", lambda: _request_ids(report, conn, target, before, hidden)),
    ]
    for section, check in sections:
        report.section = section
        check()
    return report.findings


def _columns(report: _Report, conn: sa.Connection, table: str, oid: int, before: dict) -> None:
    columns = before["columns"]
    types = {name: column[0] for name, column in columns.items()}
    wrong = {w.column: w for w in wrong_usage_types(types)}  # the run refuses the same
    for column in REQUIRED_USAGE_COLUMNS:
        if column not in columns:
            written = column in WRITTEN_USAGE_COLUMNS or column == "openai_request_id"
            fix = MIGRATE if written else "the application must log it"
            report("fail", f"{column}: missing", fix)
            continue
        found = str(columns[column][0])
        if column in wrong:
            report("fail", wrong[column].describe(), wrong[column].fix(table))
        elif column == "actual_cost_cents" and found in INTEGER_TYPES:
            count = len(_dependents(conn, oid, ["actual_cost_cents"]) or [])
            report(
                "warn",
                f"{column}: {found}; the write-back stores whole cents rounded half to even"
                " (reconciled_usage keeps the exact cost)",
                f"{MIGRATE} widens it to numeric(20,10), recreating the {count} views that"
                f" read it; or keep it: {MIGRATE} --keep-integer-cents"
                f" (or {KEEP_INTEGER_CENTS_ENV}=1)",
            )
        else:
            report("ok", f"{column}: {found}")


_HIDDEN = (
    "the connected role sees no row (row-level security): run recon-doctor as the table's"
    " owner, with --role for the pipeline's role, to see the rows"
)


def _status(report: _Report, conn, table: str, names, before: dict, hidden: bool) -> None:
    if "reconciliation_status" not in before["columns"]:
        return
    if hidden:
        report("info", _HIDDEN)
    offenders = status_offenders(conn, table)
    nulls = conn.execute(
        sa.text(f"SELECT count(*) FROM {table} WHERE reconciliation_status IS NULL")
    ).scalar_one()
    check = before["constraints"].get(names.status_check)
    if check is None:
        report("warn", "no CHECK on reconciliation_status", MIGRATE)
    elif not check[1]:
        report("warn", f"CHECK {names.status_check} is NOT VALID", f"then {MIGRATE}")
    else:
        report("ok", f"CHECK {names.status_check} validated")
    if offenders:
        counts = ", ".join(f"{value!r}: {count}" for value, count in offenders)
        values = ", ".join("'" + v.replace("'", "''") + "'" for v, _ in offenders)
        report(
            "warn",
            f"rows with statuses the pipeline does not know: {counts}",
            f"UPDATE {table} SET reconciliation_status = 'pending'"
            f" WHERE reconciliation_status IN ({values});",
        )
    if nulls:
        report("info", f"{nulls} rows with a NULL status; the next run of their day sets it")


def _indexes(report: _Report, conn, table: str, oid: int, names, before: dict) -> None:
    indexes = before["indexes"]
    sql = blocks("postgres_migration.sql")
    subst = {
        "table": table,
        "created_at_idx": f'"{names.created_at_idx}"',
        "request_id_idx": f'"{names.request_id_idx}"',
        "pending_idx": f'"{names.pending_idx}"',
    }
    wanted = (
        ("a day's rows", names.created_at_idx, "created_at", False, "index.created_at"),
        (
            "request ids",
            names.request_id_idx,
            "openai_request_id",
            False,
            "index.openai_request_id",
        ),
        ("pending rows", names.pending_idx, "reconciliation_status", True, "index.pending"),
    )
    for purpose, name, column, partial_ok, block in wanted:
        serving = [
            index
            for index, (_, valid, am, first, partial) in indexes.items()
            if index == name or (valid and am == "btree" and first == column)
            if partial_ok or not partial or index == name
        ]
        if has_equivalent_index(indexes, name, column, partial_ok) and serving:
            report("ok", f"{purpose}: {', '.join(sorted(serving))}")
        else:
            report("warn", f"{purpose}: no index", sql[block].format(**subst) + ";")
    by_id = sorted(
        index
        for index, (_, valid, am, first, partial) in indexes.items()
        if valid and am == "btree" and first == "id" and not partial
    )
    if by_id:
        report("ok", f"the write-back's join by id: {', '.join(by_id)}")
    else:
        report(
            "warn",
            "no index on id (the table's primary key should be one): the write-back joins"
            " each part of a day by a scan of the whole table",
            f"ALTER TABLE {table} ADD PRIMARY KEY (id);",
        )
    schema = table.split(".")[0].strip('"')
    for index, (_, valid, *_rest) in sorted(indexes.items()):
        if not valid:
            report(
                "warn",
                f"{index} is INVALID (a failed CREATE INDEX CONCURRENTLY)",
                f'REINDEX INDEX "{schema}"."{index}";',
            )
    for duplicate, kept in conn.execute(sa.text(_DUPLICATE_INDEXES), {"oid": oid}):
        report(
            "warn",
            f"{duplicate} duplicates {kept}: every insert pays for both",
            f'DROP INDEX "{schema}"."{duplicate}";',
        )


def _access(report: _Report, conn, table: str, schema: str, output_schema, role) -> None:
    rls = inspect_row_security(conn, table, role)
    who = rls.role
    grantee = '"' + who.replace('"', '""') + '"'
    if rls.problem:
        problem, _, fix = rls.problem.partition(" Fix, as the table's owner: ")
        report("fail", problem, fix)
    elif rls.enabled:
        state = "enabled and forced" if rls.forced else "enabled"
        how = f"policies {', '.join(rls.policies)}" if rls.applies else "it bypasses them"
        report("ok", f"row-level security {state}; {who} reads and updates every row ({how})")
    else:
        report("ok", "row-level security disabled")
    superuser = conn.execute(
        sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = :r"), {"r": who}
    ).scalar_one()
    if superuser:
        report(
            "warn",
            f"role {who} is a superuser: it could change anything",
            "create the pipeline's role with deploy/least_privilege.sql and run as that role",
        )
        return
    output = output_schema or schema
    columns = ", ".join(WRITTEN_USAGE_COLUMNS)
    checks = [
        ("has_schema_privilege(:r, :s, 'USAGE')", f"USAGE on schema {schema}",
         f'GRANT USAGE ON SCHEMA "{schema}" TO {grantee};'),
        ("has_table_privilege(:r, :t, 'SELECT')", f"SELECT on {table}",
         f"GRANT SELECT ON {table} TO {grantee};"),
        ("has_database_privilege(:r, current_database(), 'TEMPORARY')",
         "TEMPORARY on the database (staging tables)",
         f"GRANT TEMPORARY ON DATABASE <database> TO {grantee};"),
        *[(f"has_column_privilege(:r, :t, '{column}', 'UPDATE')", f"UPDATE ({column}) on {table}",
           f"GRANT UPDATE ({columns}) ON {table} TO {grantee};")
          for column in WRITTEN_USAGE_COLUMNS],
    ]  # fmt: skip
    exists = conn.execute(sa.text("SELECT to_regnamespace(:o) IS NOT NULL"), {"o": f'"{output}"'})
    if exists.scalar_one():
        checks.append(
            ("has_schema_privilege(:r, :o, 'USAGE') AND has_schema_privilege(:r, :o, 'CREATE')",
             f"USAGE and CREATE on output schema {output}",
             f'GRANT USAGE, CREATE ON SCHEMA "{output}" TO {grantee};')
        )  # fmt: skip
    else:
        report(
            "fail",
            f"output schema {output} does not exist",
            f'CREATE SCHEMA "{output}"; GRANT USAGE, CREATE ON SCHEMA "{output}" TO {grantee};',
        )
    params = {"r": who, "s": schema, "t": table, "o": output}
    for expression, what, fix in checks:
        allowed = conn.execute(sa.text(f"SELECT {expression}"), params).scalar_one()
        report("ok" if allowed else "fail", f"{who}: {what}", None if allowed else fix)
    extra = (
        conn.execute(
            sa.text(
                "SELECT p FROM unnest(ARRAY['INSERT', 'DELETE', 'TRUNCATE', 'UPDATE']) AS p"
                " WHERE has_table_privilege(:r, :t, p)"
            ),
            params,
        )
        .scalars()
        .all()
    )
    if extra:
        report(
            "warn",
            f"{who} may also {', '.join(extra)} {table} (every column); it needs none of it",
            f"REVOKE {', '.join(extra)} ON {table} FROM {grantee};"
            " then apply deploy/least_privilege.sql's grants",
        )


def _dependents(conn: sa.Connection, oid: int, columns: list[str]):
    conn.exec_driver_sql("SET LOCAL search_path = ''")
    try:
        return dependent_views(conn, oid, columns)
    except ViewRebuildError:
        return None


def _views(report: _Report, conn: sa.Connection, oid: int, before: dict) -> None:
    columns = [c for c in WRITTEN_USAGE_COLUMNS if c in before["columns"]]
    views = _dependents(conn, oid, columns)
    if views is None:
        conn.exec_driver_sql("SET LOCAL search_path = ''")
        report(
            "warn",
            "materialized views read the reconciliation columns: recon-migrate cannot widen"
            " actual_cost_cents under them",
            "drop them, run recon-migrate, create them again",
        )
        return
    if not views:
        report("ok", "no view reads the reconciliation columns")
    for view in views:
        options = f" with ({', '.join(view.options)})" if view.options else ""
        report("info", f"{view.name} (owner {view.owner}{options}, depth {view.depth})")


def _request_ids(report: _Report, conn, table: str, before: dict, hidden: bool) -> None:
    if not {"action_type", "openai_request_id", "created_at"} <= set(before["columns"]):
        return
    if hidden:
        report("info", _HIDDEN)
        return
    rows = conn.execute(sa.text(_REQUEST_ID_SHARE.format(table=table))).all()
    if not rows:
        report("info", "no rows in the last 7 days")
    for route, count, with_id in rows:
        share = with_id / count
        level = "info" if share >= 0.5 else "warn"
        fix = None
        if level == "warn":
            fix = "log OpenAI's response id on this route; its rows are `unverifiable`"
        report(level, f"{route}: {share:.1%} of {count} rows carry a request id", fix)


def render(findings: list[Finding]) -> str:
    """The report as text, one section after the other, fixes under their problem."""
    lines: list[str] = []
    section = None
    for finding in findings:
        if finding.section != section:
            section = finding.section
            lines.append(f"\n{section}")
        lines.append(f"  {finding.level:<5} {finding.message}")
        if finding.fix:
            lines.append(f"        fix: {finding.fix}")
    failed = sum(f.level == "fail" for f in findings)
    warned = sum(f.level == "warn" for f in findings)
    verdict = (
        f"the pipeline cannot run: {failed} problem(s) to fix"
        if failed
        else f"the pipeline can run ({warned} warning(s))"
    )
    return "\n".join([*lines, "", verdict, ""])


def main(argv: list[str] | None = None) -> int:
    """`recon-doctor`: check RECON_DATABASE_URL (or --url) before the first run."""
    parser = argparse.ArgumentParser(prog="recon-doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="SQLAlchemy URL (default: $RECON_DATABASE_URL)")
    parser.add_argument("--table", default=os.environ.get("RECON_USAGE_TABLE", "token_usage"))
    parser.add_argument("--schema", default=os.environ.get("RECON_USAGE_SCHEMA") or None)
    parser.add_argument("--output-schema", default=os.environ.get("RECON_OUTPUT_SCHEMA") or None)
    parser.add_argument(
        "--role", default=None, help="check this role's access (default: the connected role)"
    )
    args = parser.parse_args(argv)
    raw_url = args.url or os.environ.get("RECON_DATABASE_URL")
    if not raw_url:
        print("recon-doctor: set RECON_DATABASE_URL or pass --url", file=sys.stderr)
        return 2
    try:
        target = qualified(args.table, args.schema)
        if args.output_schema:
            validate_identifier(args.output_schema, "schema name")
        engine = sa.create_engine(sa.make_url(raw_url))
        try:
            with engine.connect() as conn:
                if conn.dialect.name != "postgresql":
                    print("recon-doctor: PostgreSQL only (the embedded demo needs no check)")
                    return 0
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                findings = diagnose(conn, args.table, args.schema, args.output_schema, args.role)
                conn.rollback()
        finally:
            engine.dispose()
    except Exception as exc:
        detail = scrub_url_secrets(f"{type(exc).__name__}: {exc}", raw_url)
        print(f"recon-doctor: failed: {detail}", file=sys.stderr)
        return 1
    print(f"recon-doctor: {target} at {masked_url(raw_url)}")
    print(render(findings), end="")
    return 1 if any(f.level == "fail" for f in findings) else 0


if __name__ == "__main__":
    raise SystemExit(main())
