"""What the output-schema revisions do, checked against the catalogue first."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from alembic import op

from recon_pipeline.io.dialect import dialect_for
from recon_pipeline.io.identifiers import qualified, validate_identifier
from recon_pipeline.io.tables import OutputTable


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


def create_table(output: OutputTable) -> None:
    """Create a table new in this revision, with its declared columns and indexes, where
    the output schema does not hold it yet (the pipeline would create it on first use;
    `recon-migrate` creates it up front, as the table's owner)."""
    conn, schema, steps = _context()
    if sa.inspect(conn).has_table(output.name, schema=schema):
        return
    dialect = dialect_for(conn.engine, output.name)
    target = qualified(output.name, schema)
    columns = ", ".join(f'"{output.stored_name(c)}" {dialect.sql_type(c)}' for c in output.columns)
    conn.execute(sa.text(f"CREATE TABLE {target} ({columns})"))
    for indexed in output.indexes:
        name = validate_identifier(f"{output.name}_{'_'.join(indexed)}_idx")
        on = ", ".join(f'"{c}"' for c in indexed)
        conn.execute(sa.text(f'CREATE INDEX "{name}" ON {target} ({on})'))
    steps.append(f"{output.name}: created")
