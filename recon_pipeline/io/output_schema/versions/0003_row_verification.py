"""Rows verified without a request id (issue 17): the columns that record how.

`openai_requests` gains `metadata_tag`, `reconciled_usage` gains `match_method` and
`matched_request_id`, `daily_variance_summary` gains a count per method. Rows an earlier
release wrote keep NULL there until their day is reconciled again, as the pipeline leaves
them when it adds these columns itself.

Revision ID: 0003_row_verification
Revises: 0002_project_scope
"""

from recon_pipeline.io.output_schema.steps import add_columns

revision = "0003_row_verification"
down_revision = "0002_project_scope"
branch_labels = None
depends_on = None

COLUMNS = (
    ("openai_requests", "metadata_tag", "text", "TEXT", None),
    ("reconciled_usage", "match_method", "text", "TEXT", None),
    ("reconciled_usage", "matched_request_id", "text", "TEXT", None),
    *(
        ("daily_variance_summary", f"verified_by_{method}", "bigint", "INTEGER", None)
        for method in ("request_id", "metadata_tag", "fingerprint")
    ),
)


def upgrade() -> None:
    add_columns(COLUMNS)


def downgrade() -> None:
    raise NotImplementedError("the output tables are only ever upgraded")
