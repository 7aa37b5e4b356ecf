"""Capture the views that depend on a table's columns, so a column's type can change.

PostgreSQL refuses `ALTER COLUMN … TYPE` while a view reads the column, and the application's
views (`select t.*, …`) read every column. The migration therefore captures each dependent
view, in any schema, and the views that depend on those, with everything a `DROP VIEW` would
lose: definition, owner, options (`security_invoker`, `security_barrier`, `check_option`),
grants (table and column), comments (view and columns), column defaults, INSTEAD OF
triggers and rules. It drops them dependents-first and recreates them in dependency order,
all inside the migration's one transaction. Definitions are read with an empty search_path,
so every name in them is schema-qualified and the SQL means the same wherever it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

# Every view reading one of the columns, then every view reading one of those, and so on;
# `depth` is the longest path from the table, so ascending depth is a creation order.
_DEPENDENTS = """
WITH RECURSIVE deps(oid, depth) AS (
    SELECT DISTINCT r.ev_class, 1
    FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
    WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
      AND d.refobjid = :table AND d.refobjsubid = ANY(CAST(:attnums AS int[]))
      AND r.ev_class <> :table
    UNION
    SELECT r.ev_class, deps.depth + 1
    FROM deps
    JOIN pg_depend d ON d.refobjid = deps.oid AND d.refclassid = 'pg_class'::regclass
      AND d.classid = 'pg_rewrite'::regclass
    JOIN pg_rewrite r ON r.oid = d.objid
    WHERE r.ev_class <> deps.oid
)
SELECT c.oid, deepest.depth, c.relkind,
       format('%I.%I', n.nspname, c.relname) AS name,
       quote_ident(pg_get_userbyid(c.relowner)) AS owner,
       pg_get_viewdef(c.oid) AS definition,
       c.reloptions, obj_description(c.oid, 'pg_class') AS comment
FROM (SELECT oid, max(depth) AS depth FROM deps GROUP BY oid) AS deepest
JOIN pg_class c ON c.oid = deepest.oid JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY deepest.depth, n.nspname, c.relname
"""
_GRANTS = """
SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
       a.privilege_type, a.is_grantable, NULL::text AS column_name
FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = :oid
UNION ALL
SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
       a.privilege_type, a.is_grantable, quote_ident(att.attname)
FROM pg_attribute att, aclexplode(att.attacl) a
WHERE att.attrelid = :oid AND att.attnum > 0 AND NOT att.attisdropped
ORDER BY 4 NULLS FIRST, 1, 2
"""
_COLUMNS = """
SELECT quote_ident(a.attname), col_description(a.attrelid, a.attnum),
       pg_get_expr(d.adbin, d.adrelid)
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = :oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""
_TRIGGERS_AND_RULES = """
SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t WHERE t.tgrelid = :oid AND NOT t.tgisinternal
UNION ALL
SELECT pg_get_ruledef(r.oid) FROM pg_rewrite r WHERE r.ev_class = :oid AND r.rulename <> '_RETURN'
"""


class ViewRebuildError(RuntimeError):
    """A dependent object cannot be captured and recreated faithfully."""


@dataclass(frozen=True)
class CapturedView:
    """One dependent view as the catalogue has it; `name` and `owner` are quoted."""

    name: str
    depth: int
    owner: str
    definition: str
    options: tuple[str, ...]
    has_acl: bool
    grants: tuple[tuple[str, str, bool, str | None], ...]
    comment: str | None
    column_comments: tuple[tuple[str, str], ...]
    column_defaults: tuple[tuple[str, str], ...]
    extras: tuple[str, ...]

    def drop_sql(self) -> str:
        """No CASCADE: anything else that depends on the view stops the migration instead."""
        return f"DROP VIEW {self.name}"

    def create_sql(self) -> list[str]:
        """The statements that bring the view back as it was, owner and grants included."""
        options = f" WITH ({', '.join(self.options)})" if self.options else ""
        body = self.definition.strip().rstrip(";")
        statements = [f"CREATE VIEW {self.name}{options} AS\n{body}"]
        statements.append(f"ALTER VIEW {self.name} OWNER TO {self.owner}")
        for column, default in self.column_defaults:
            statements.append(f"ALTER VIEW {self.name} ALTER COLUMN {column} SET DEFAULT {default}")
        if self.has_acl:
            # The owner's default rights are implicit only while the ACL is NULL.
            statements.append(f"REVOKE ALL ON {self.name} FROM {self.owner}")
        for grantee, privilege, grantable, column in self.grants:
            columns = f" ({column})" if column else ""
            option = " WITH GRANT OPTION" if grantable else ""
            statements.append(f"GRANT {privilege}{columns} ON {self.name} TO {grantee}{option}")
        if self.comment is not None:
            statements.append(f"COMMENT ON VIEW {self.name} IS {_literal(self.comment)}")
        for column, comment in self.column_comments:
            statements.append(f"COMMENT ON COLUMN {self.name}.{column} IS {_literal(comment)}")
        statements.extend(extra.strip().rstrip(";") for extra in self.extras)
        return statements


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def dependent_views(conn: sa.Connection, table_oid: int, columns: list[str]) -> list[CapturedView]:
    """The views that read `columns` of the table, directly or through other views, in
    creation order. Call it with an empty search_path (see the module's docstring)."""
    attnums = conn.execute(
        sa.text(
            "SELECT attnum FROM pg_attribute WHERE attrelid = :oid"
            " AND attname = ANY(CAST(:names AS text[])) AND NOT attisdropped"
        ),
        {"oid": table_oid, "names": columns},
    ).scalars()
    rows = conn.execute(sa.text(_DEPENDENTS), {"table": table_oid, "attnums": list(attnums)}).all()
    refused = [r.name for r in rows if r.relkind != "v"]
    if refused:
        raise ViewRebuildError(
            f"materialized views {refused} read the column; drop them, run recon-migrate,"
            " and create them again (their data would have to be recomputed)"
        )
    return [_capture(conn, row) for row in rows]


def _capture(conn: sa.Connection, row: sa.Row) -> CapturedView:
    params = {"oid": row.oid}
    grants = conn.execute(sa.text(_GRANTS), params).all()
    has_acl = conn.execute(
        sa.text("SELECT relacl IS NOT NULL FROM pg_class WHERE oid = :oid"), params
    ).scalar_one()
    columns = conn.execute(sa.text(_COLUMNS), params).all()
    extras = conn.execute(sa.text(_TRIGGERS_AND_RULES), params).scalars().all()
    return CapturedView(
        name=row.name,
        depth=int(row.depth),
        owner=row.owner,
        definition=row.definition,
        options=tuple(row.reloptions or ()),
        has_acl=bool(has_acl),
        grants=tuple((g[0], g[1], bool(g[2]), g[3]) for g in grants),
        comment=row.comment,
        column_comments=tuple((c[0], c[1]) for c in columns if c[1] is not None),
        column_defaults=tuple((c[0], c[2]) for c in columns if c[2] is not None),
        extras=tuple(extras),
    )


def rebuild_statements(views: list[CapturedView], change: list[str]) -> list[str]:
    """Drop `views` dependents-first, run `change`, recreate them in creation order."""
    statements = [v.drop_sql() for v in reversed(views)]
    statements.extend(change)
    for view in views:
        statements.extend(view.create_sql())
    return statements
