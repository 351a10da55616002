"""actions: what users of the status page asked for (redeploy or cancel a run), by whom, and what became of it

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "actions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("by", sa.Text(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("new_run_id", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("entry", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_actions")),
    )
    op.create_index(op.f("ix_actions_run_id"), "actions", ["run_id"])
    op.create_index(op.f("ix_actions_new_run_id"), "actions", ["new_run_id"])
    op.create_index(op.f("ix_actions_entry"), "actions", ["entry"])


def downgrade() -> None:
    op.drop_index(op.f("ix_actions_entry"), table_name="actions")
    op.drop_index(op.f("ix_actions_new_run_id"), table_name="actions")
    op.drop_index(op.f("ix_actions_run_id"), table_name="actions")
    op.drop_table("actions")
