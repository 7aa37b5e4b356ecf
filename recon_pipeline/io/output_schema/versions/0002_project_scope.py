"""Per-project invoice check and billed quantities (issue 16).

`openai_daily_costs` gains `quantity` (the Costs API's billed quantity, when given) and
`invoice_check` gains `project_id`; the rows an earlier release wrote were checked for the
whole organisation, so they get `(all)`. A table that does not exist yet is left to the
pipeline, which creates it with every column.

Revision ID: 0002_project_scope
Revises: 0001_release_fb4caf3
"""

from recon_pipeline.io.output_schema.steps import add_columns

revision = "0002_project_scope"
down_revision = "0001_release_fb4caf3"
branch_labels = None
depends_on = None

# (table, column, PostgreSQL type, SQLite type, value for the rows already there)
COLUMNS = (
    ("openai_daily_costs", "quantity", "double precision", "REAL", None),
    ("invoice_check", "project_id", "text", "TEXT", "(all)"),
)


def upgrade() -> None:
    add_columns(COLUMNS)


def downgrade() -> None:
    raise NotImplementedError("the output tables are only ever upgraded")
