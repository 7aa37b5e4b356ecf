"""What the catalogue says about the application's table: columns, indexes, constraints
and the pipeline's view. Shared by the migration (to plan) and the doctor (to report)."""

from __future__ import annotations

import sqlalchemy as sa

from recon_pipeline.io.identifiers import validate_identifier


class TableNotFoundError(RuntimeError):
    """The configured table does not exist, or is not a table."""


def pg_snapshot(conn: sa.Connection, oid: int, view: str) -> dict[str, dict[str, object]]:
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
    view_row = conn.execute(
        sa.text(
            "SELECT c.relkind, pg_get_viewdef(c.oid), obj_description(c.oid, 'pg_class')"
            " FROM pg_class c WHERE c.oid = to_regclass(:view)"
        ),
        {"view": view},
    ).first()
    return {
        "columns": {r[0]: (r[1], r[2], r[3]) for r in columns},
        "indexes": {r[0]: tuple(r[1:]) for r in indexes},
        "constraints": {r[0]: (r[1], r[2]) for r in constraints},
        "view": {view: view_row[1]} if view_row is not None else {},
        "view_row": {view: tuple(view_row)} if view_row is not None else {},
    }


def has_equivalent_index(
    indexes: dict[str, tuple], name: str, column: str, partial_ok: bool = False
) -> bool:
    """Our index, or a valid btree index led by the same column the app already has."""
    if name in indexes:
        return True
    return any(
        valid and am == "btree" and first == column and (partial_ok or not partial)
        for _, valid, am, first, partial in indexes.values()
    )


def resolve_table(conn: sa.Connection, table: str) -> tuple[int, str]:
    found = conn.execute(
        sa.text(
            "SELECT c.oid, n.nspname, c.relkind FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(:t)"
        ),
        {"t": table},
    ).first()
    if found is None or found.relkind not in ("r", "p"):
        raise TableNotFoundError(f"table {table} does not exist (or is not a table)")
    return int(found.oid), validate_identifier(found.nspname, "schema name")
