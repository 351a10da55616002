"""github_reports: the outbox of the calls GitHub must receive about runs (commit statuses, deployments and
their statuses), each kept until the worker's reporter has sent it or given it up

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "github_reports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("repository", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("commit", sa.String(64), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("follows", sa.Integer(), nullable=True),
        sa.Column("result", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_github_reports_run_id_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["follows"],
            ["github_reports.id"],
            name=op.f("fk_github_reports_follows_github_reports"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_github_reports")),
    )
    op.create_index(op.f("ix_github_reports_run_id"), "github_reports", ["run_id"])
    op.create_index(
        op.f("ix_github_reports_state_next_attempt_at"), "github_reports", ["state", "next_attempt_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_github_reports_state_next_attempt_at"), table_name="github_reports")
    op.drop_index(op.f("ix_github_reports_run_id"), table_name="github_reports")
    op.drop_table("github_reports")
