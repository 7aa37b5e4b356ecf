"""Row-level security on the application's table, as it applies to one role.

With RLS enabled and no policy for the pipeline's role, PostgreSQL shows that role no row
and lets it update none, without an error: a day would read as empty and every row would
stay `pending` for ever. The pipeline therefore needs a permissive policy that lets its role
read every row (`USING (true)`) and one that lets it update every row, and no restrictive
policy that narrows either; `deploy/least_privilege.sql` creates them. The same rules serve
the run (which fails naming the table, the role and the fix) and `recon-doctor`.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

READ_POLICY = "recon_pipeline_read"
WRITE_POLICY = "recon_pipeline_write"

_STATE = """
SELECT c.relrowsecurity AS enabled, c.relforcerowsecurity AS forced,
       r.rolname AS role, r.rolsuper OR r.rolbypassrls AS bypasses,
       pg_has_role(r.oid, c.relowner, 'USAGE') AS owns
FROM pg_class c, pg_roles r
WHERE c.oid = to_regclass(:table) AND r.rolname = coalesce(:role, current_user)
"""
# Policies that apply to the role: to PUBLIC, or to a role whose privileges it has.
_POLICIES = """
SELECT p.polname AS name, p.polpermissive AS permissive, p.polcmd AS cmd,
       pg_get_expr(p.polqual, p.polrelid) AS using_expr,
       pg_get_expr(p.polwithcheck, p.polrelid) AS check_expr
FROM pg_policy p
WHERE p.polrelid = to_regclass(:table)
  AND (0 = ANY(p.polroles) OR EXISTS (
        SELECT 1 FROM unnest(p.polroles) AS pr(oid)
        WHERE pr.oid <> 0 AND pg_has_role(coalesce(:role, current_user), pr.oid, 'USAGE')))
ORDER BY p.polname
"""
# pg_policy.polcmd: r SELECT, w UPDATE, * ALL.
_READS, _UPDATES = ("r", "*"), ("w", "*")


@dataclass(frozen=True)
class RowSecurity:
    """How RLS on `table` treats `role`; `problem` is None when it hides nothing."""

    table: str
    role: str
    enabled: bool
    forced: bool
    applies: bool
    policies: tuple[str, ...]
    problem: str | None


def _opens(policies: list[sa.Row], commands: tuple[str, ...], update: bool) -> bool:
    """A permissive policy opens every row for the commands, and no restrictive one narrows."""

    def all_rows(p: sa.Row) -> bool:
        return (p.using_expr or "true") == "true" and (
            not update or (p.check_expr or "true") == "true"
        )

    relevant = [p for p in policies if p.cmd in commands]
    return any(p.permissive and all_rows(p) for p in relevant) and all(
        all_rows(p) for p in relevant if not p.permissive
    )


def fix_sql(table: str, role: str) -> str:
    """The policies that let `role` read every row of `table` and update it."""
    quoted = '"' + role.replace('"', '""') + '"'
    return (
        f"CREATE POLICY {READ_POLICY} ON {table} FOR SELECT TO {quoted} USING (true); "
        f"CREATE POLICY {WRITE_POLICY} ON {table} FOR UPDATE TO {quoted}"
        " USING (true) WITH CHECK (true);"
    )


def inspect_row_security(conn: sa.Connection, table: str, role: str | None = None) -> RowSecurity:
    """RLS on `table` (a quoted, qualified name) as it applies to `role` (default: the
    connected role). PostgreSQL only."""
    state = conn.execute(sa.text(_STATE), {"table": table, "role": role}).first()
    if state is None:
        raise ValueError(f"no table {table} or no role {role!r}")
    policies = conn.execute(sa.text(_POLICIES), {"table": table, "role": role}).all()
    applies = state.enabled and not state.bypasses and (state.forced or not state.owns)
    problem = None
    if applies:
        blocked = [
            what
            for what, commands, update in (("read", _READS, False), ("update", _UPDATES, True))
            if not _opens(policies, commands, update)
        ]
        if blocked:
            found = ", ".join(p.name for p in policies) or "none"
            problem = (
                f"row-level security on {table} does not let role {state.role}"
                f" {' or '.join(blocked)} every row (policies that apply to it: {found}),"
                " so a day would look empty or never be written back. Fix, as the table's"
                " owner: run deploy/least_privilege.sql for this role, or "
                + fix_sql(table, state.role)
            )
    return RowSecurity(
        table=table,
        role=state.role,
        enabled=bool(state.enabled),
        forced=bool(state.forced),
        applies=bool(applies),
        policies=tuple(p.name for p in policies),
        problem=problem,
    )
