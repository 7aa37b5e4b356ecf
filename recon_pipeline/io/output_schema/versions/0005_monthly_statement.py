"""The month's statement (issue 18): `monthly_statement`, one row per month, project and
statement line, declared in `core/output_tables.py`. A schema that already holds the
pipeline's daily tables gets it here, empty, with its index; the pipeline fills it one month
at a time.

Revision ID: 0005_monthly_statement
Revises: 0004_day_status
"""

from recon_pipeline.io.output_schema.steps import create_table
from recon_pipeline.io.tables import MONTHLY_STATEMENT

revision = "0005_monthly_statement"
down_revision = "0004_day_status"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_table(MONTHLY_STATEMENT)


def downgrade() -> None:
    raise NotImplementedError("the output tables are only ever upgraded")
