"""What the output-schema revisions do, checked against the catalogue first."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from alembic import op

from recon_pipeline.io.identifiers import qualified


def _context() -> tuple[sa.Connection, str | None, list[str]]:
    context = op.get_context()
    return (
        op.get_bind(),
        context.opts.get("version_table_schema"),
        context.opts.get("recon_steps", []),
    )


def add_columns(columns: Iterable[tuple[str, str, str, str, str | None]]) -> None:
    """Add each (table, column, pg type, sqlite type, backfill) where the table exists and
    the column does not."""
    conn, schema, steps = _context()
    inspector = sa.inspect(conn)
    postgres = conn.dialect.name == "postgresql"
    for table, column, pg_type, sqlite_type, backfill in columns:
        if not inspector.has_table(table, schema=schema):
            continue
        if column in {c["name"] for c in inspector.get_columns(table, schema=schema)}:
            continue
        target = qualified(table, schema)
        kind = pg_type if postgres else sqlite_type
        conn.execute(sa.text(f'ALTER TABLE {target} ADD COLUMN "{column}" {kind}'))
        if backfill is not None:
            conn.execute(sa.text(f'UPDATE {target} SET "{column}" = :value'), {"value": backfill})
        steps.append(f"{table}: added column {column}")
