"""Versioned upgrades of the pipeline's OUTPUT tables (Alembic), run by `recon-migrate`.

The pipeline creates its output tables on first use with their current columns. A
deployment that already holds tables written by an earlier release gets the new columns
from the revisions in `versions/`, applied in order by Alembic, which records the version
in `recon_pipeline_schema_version` inside the output schema (never `alembic_version`,
which the application may use for its own migrations). Each revision also looks in the
catalogue before it changes anything, so a re-run, or a run on a database whose tables do
not exist yet, changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from recon_pipeline.io import tables
from recon_pipeline.io.connections import begin_sqlite
from recon_pipeline.io.identifiers import validate_identifier

if TYPE_CHECKING:  # Alembic is imported where it is used: only `recon-migrate` needs it, and
    # importing it cost every run process about 0.25 s.
    from alembic.config import Config

VERSION_TABLE = "recon_pipeline_schema_version"
OUTPUT_TABLES = tuple(
    table.name
    for table in (
        tables.OPENAI_REQUESTS,
        tables.RECONCILED_USAGE,
        tables.UNLOGGED_OPENAI_REQUESTS,
        tables.DAILY_VARIANCE_SUMMARY,
        tables.OPENAI_DAILY_USAGE,
        tables.OPENAI_DAILY_COSTS,
        tables.INVOICE_CHECK,
        tables.INVOICE_GAP,
        tables.DAY_SETTLEMENT,
        tables.MONTHLY_STATEMENT,
    )
)
_HERE = Path(__file__).resolve().parent


def _config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_HERE))
    return config


def current_revision(engine: sa.Engine, schema: str | None) -> str | None:
    """The output schema's recorded revision, None before the first upgrade."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "version_table_schema": schema}
        )
        return context.get_current_revision()


def _has_output_tables(engine: sa.Engine, schema: str | None) -> bool:
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        if schema is not None and schema not in inspector.get_schema_names():
            return False
        return bool(set(OUTPUT_TABLES) & set(inspector.get_table_names(schema=schema)))


def upgrade_output_schema(engine: sa.Engine, schema: str | None) -> list[str]:
    """Bring the output tables in `schema` (None: the search path; `main` on SQLite) to the
    newest revision, in one transaction; returns what changed (empty when up to date, even
    the first time on tables that need nothing: recording the revision is bookkeeping).
    A schema that holds none of them yet is left untouched: no version table either."""
    if schema is not None:
        validate_identifier(schema, "schema name")
    if not _has_output_tables(engine, schema):
        return []  # the pipeline creates them with every column; nothing to record yet
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

    config = _config()
    script = ScriptDirectory.from_config(config)
    steps: list[str] = []
    before = current_revision(engine, schema)

    def upgrade(revision, _context):
        return script._upgrade_revs("head", revision)

    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            begin_sqlite(conn)
        with EnvironmentContext(config, script, fn=upgrade, destination_rev="head") as env:
            env.configure(
                connection=conn,
                version_table=VERSION_TABLE,
                version_table_schema=schema,
                transactional_ddl=True,
                recon_steps=steps,
            )
            env.run_migrations()
    if steps:
        after = current_revision(engine, schema)
        steps.append(f"output tables at revision {after} (were at {before or 'no revision'})")
    return steps
