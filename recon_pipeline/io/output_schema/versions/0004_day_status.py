"""Days that settle (issue 18): the daily tables finance reads say whether a day is final.

`invoice_check`, `invoice_gap` and `daily_variance_summary` gain `day_status` (`open`,
`closed` or `restated`, `core/settlement.py`). Rows an earlier release wrote get `open`: no
Costs read of theirs was recorded as settling them, and the next run that reads their Costs
totals again after the grace period closes them. `day_settlement`, the history of each
day's totals, is new: the pipeline creates it on first use.

Revision ID: 0004_day_status
Revises: 0003_row_verification
"""

from recon_pipeline.io.output_schema.steps import add_columns

revision = "0004_day_status"
down_revision = "0003_row_verification"
branch_labels = None
depends_on = None

COLUMNS = tuple(
    (table, "day_status", "text", "TEXT", "open")
    for table in ("invoice_check", "invoice_gap", "daily_variance_summary")
)


def upgrade() -> None:
    add_columns(COLUMNS)


def downgrade() -> None:
    raise NotImplementedError("the output tables are only ever upgraded")
