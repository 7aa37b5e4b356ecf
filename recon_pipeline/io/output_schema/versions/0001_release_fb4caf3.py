"""The output tables as release fb4caf3 wrote them: the baseline, nothing to change.

Revision ID: 0001_release_fb4caf3
Revises:
"""

revision = "0001_release_fb4caf3"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
