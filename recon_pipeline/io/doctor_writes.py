"""`recon-doctor`'s checks of what the write-back's UPDATE meets on `token_usage` beyond the
columns' types and privileges: the application's CHECK constraints on the written columns,
and its triggers that fire on UPDATE. Either can pass every other check and still stop a
run half-way (a CheckViolation once a status outside the application's vocabulary is due,
a permission error in an audit trigger), so the doctor reports them before the first run.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from recon_pipeline.core.schema import DISCREPANCY, MATCHED, STATUSES
from recon_pipeline.io.connections import local_settings
from recon_pipeline.io.tables import WRITTEN_USAGE_COLUMNS

Report = Callable[..., None]

# The costs a CHECK is tried with (US cents): none, the smallest the pipeline stores (one
# pico-dollar), and $100, more than one request costs.
_COSTS = ("0", "0.0000000001", "10000")
_CHECK_TIME = {"statement_timeout": "5s"}
# The row's CHECK constraints that read a written column, with what to try them on.
_CHECKS = """
SELECT c.conname, pg_get_constraintdef(c.oid), pg_get_expr(c.conbin, c.conrelid)
FROM pg_constraint c
WHERE c.conrelid = :oid AND c.contype = 'c'
  AND c.conkey && ARRAY(SELECT attnum FROM pg_attribute
                        WHERE attrelid = :oid AND attname = ANY(:written))
ORDER BY 1
"""
_COLUMNS = """
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = :oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum
"""
# tgtype bits: 1 FOR EACH ROW, 2 BEFORE, 16 UPDATE, 64 INSTEAD OF. tgenabled: O and A fire
# in an ordinary session, R only in replication, D never.
_TRIGGERS = """
SELECT t.tgname, t.tgfoid::regprocedure::text AS function, t.tgenabled IN ('O', 'A') AS fires,
       t.tgenabled = 'R' AS replica_only,
       CASE WHEN t.tgtype & 2 <> 0 THEN 'BEFORE' ELSE 'AFTER' END AS timing,
       CASE WHEN t.tgtype & 1 <> 0 THEN 'ROW' ELSE 'STATEMENT' END AS level,
       p.prosecdef AS definer, pg_get_userbyid(p.proowner) AS owner,
       ARRAY(SELECT a.attname::text FROM unnest(t.tgattr::int2[]) AS k(n)
             JOIN pg_attribute a ON a.attrelid = t.tgrelid AND a.attnum = k.n) AS columns
FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
WHERE t.tgrelid = :oid AND NOT t.tgisinternal AND t.tgtype & 16 <> 0
ORDER BY 1
"""


def written_values() -> list[tuple[str, str | None]]:
    """Each (status, cost in cents) the write-back can write: matched rows carry OpenAI's
    cost, discrepancy rows carry it when the record could be priced (else none), the other
    statuses never do (`core/reconcile.py`, `_judge_rows`)."""
    values: list[tuple[str, str | None]] = []
    for status in STATUSES:
        if status != MATCHED:
            values.append((status, None))
        if status in (MATCHED, DISCREPANCY):
            values.extend((status, cost) for cost in _COSTS)
    return values


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _row_sql(columns: list[tuple[str, str]], status: str, cost: str | None) -> str:
    """A one-row SELECT shaped like the table: the written columns as the write-back sets
    them, every other column NULL (which a CHECK lets pass, as it would on a real row whose
    other values satisfy it)."""
    written = {
        "reconciliation_status": "'" + status.replace("'", "''") + "'",
        "actual_cost_cents": cost or "NULL",
        "reconciled_at": "now()",
    }
    return ", ".join(
        f"CAST({written.get(name, 'NULL')} AS {kind}) AS {_quoted(name)}" for name, kind in columns
    )


def _rejected(conn: sa.Connection, expression: str, columns: list[tuple[str, str]]) -> list[str]:
    """The written values the CHECK `expression` rejects (it rejects a row where it is
    false, not where it is NULL).

    The expression is evaluated by a SELECT over a row shaped like the table, in a
    savepoint of the doctor's READ ONLY transaction: nothing can be written, no row is
    locked and no trigger fires, where an UPDATE rolled back afterwards would fire the
    application's triggers, take row locks, need the write privilege the doctor may not
    have, and could not run read-only at all. Raises what the expression raises."""
    literal = conn.execution_options(no_parameters=True)  # `:` or `%` in the expression
    rejected = []
    for status, cost in written_values():
        row = _row_sql(columns, status, cost)
        query = f"SELECT ({expression}) IS FALSE FROM (SELECT {row}) AS token_usage"
        if literal.exec_driver_sql(query).scalar_one():
            rejected.append(f"'{status}'" + (f" with cost {cost}" if cost is not None else ""))
    return rejected


def check_constraints(report: Report, conn: sa.Connection, table: str, oid: int) -> None:
    """Report each CHECK on the table that reads a written column, failing one that rejects
    a status or cost the write-back writes: it would stop the run once such a row is due.
    A NOT VALID check is tried too: PostgreSQL enforces it on every UPDATE."""
    written = list(WRITTEN_USAGE_COLUMNS)
    checks = conn.execute(sa.text(_CHECKS), {"oid": oid, "written": written}).all()
    if not checks:
        report("ok", "no CHECK constraint reads the written columns")
        return
    columns = [(str(n), str(k)) for n, k in conn.execute(sa.text(_COLUMNS), {"oid": oid})]
    for name, definition, expression in checks:
        try:
            # The application's CHECK may call a function of its own: bounded in time.
            with conn.begin_nested(), local_settings(conn, _CHECK_TIME):
                rejected = _rejected(conn, expression, columns)
        except sa.exc.DBAPIError as exc:
            problem = str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__
            report("warn", f"CHECK {name}: {definition}; could not try it: {problem}")
            continue
        if not rejected:
            report("ok", f"CHECK {name} accepts every status and cost the write-back writes")
            continue
        report(
            "fail",
            f"CHECK {name} ({definition}) rejects what the write-back writes:"
            f" {', '.join(rejected)}; the run stops with a CheckViolation when one is due",
            f"ALTER TABLE {table} DROP CONSTRAINT {_quoted(name)}; then add it back so that it"
            " accepts them (recon-migrate adds the pipeline's own status CHECK)",
        )


def update_triggers(report: Report, conn: sa.Connection, table: str, oid: int, who: str) -> None:
    """Report each trigger of the application's that fires on the write-back's UPDATE, as a
    warning: it runs as the pipeline's role (unless SECURITY DEFINER), and the pipeline
    cannot know what it does; a trigger that writes where the role may not stops the run."""
    found = False
    for t in conn.execute(sa.text(_TRIGGERS), {"oid": oid}):
        found = True
        what = f"trigger {t.tgname} ({t.timing} UPDATE FOR EACH {t.level}) runs {t.function}"
        if not t.fires:
            when = "fires only in a replication session" if t.replica_only else "is disabled"
            report("info", f"{what}; it {when}")
        elif t.columns and not set(t.columns) & set(WRITTEN_USAGE_COLUMNS):
            report("info", f"{what} on UPDATE OF {', '.join(t.columns)}: not the write-back's")
        else:
            runs_as = t.owner if t.definer else who
            how = " (SECURITY DEFINER)" if t.definer else ""
            report(
                "warn",
                f"{what} on the write-back's UPDATE, as {runs_as}{how}; the pipeline cannot"
                " know what it does",
                f"make sure {runs_as} may do what {t.function} does (e.g. INSERT into the"
                " table it writes to): where it may not, the run stops with its error",
            )
    if not found:
        report("ok", "no trigger fires on UPDATE")
