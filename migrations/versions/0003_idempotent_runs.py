"""runs are numbered per (delivery, pipeline), at most one forwarding each; refs and names are Text

A crash between forwarding a delivery and recording it, or a routing retried after an error, created
another run each time. ``attempt`` numbers the runs of one (delivery, pipeline): the router's run is
attempt 1 and the unique constraint makes a second one impossible; a run that does an interrupted or
failed entry again is the next attempt. Refs, repository, pipeline and step names and entry names had
lengths that GitHub and git do not have (a branch name may be longer than 255 characters): they become
Text.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WIDENED = {
    "deliveries": {"entry": sa.String(32), "repository": sa.String(255), "ref": sa.String(255)},
    "runs": {"pipeline": sa.String(100), "entry": sa.String(32), "ref": sa.String(255)},
    "steps": {"name": sa.String(200)},
}


def upgrade() -> None:
    for table, columns in WIDENED.items():
        with op.batch_alter_table(table) as batch:
            for column, old in columns.items():
                batch.alter_column(column, existing_type=old, type_=sa.Text())
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"))
    # Runs made before this revision: numbered in the order they were made, so the constraint holds for
    # the duplicates the old router left.
    op.execute(
        "UPDATE runs SET attempt = (SELECT COUNT(*) FROM runs AS earlier"
        " WHERE earlier.delivery_id = runs.delivery_id AND earlier.pipeline = runs.pipeline"
        " AND earlier.id <= runs.id) WHERE delivery_id IS NOT NULL"
    )
    with op.batch_alter_table("runs") as batch:
        batch.create_unique_constraint(
            op.f("uq_runs_delivery_id_pipeline_attempt"), ["delivery_id", "pipeline", "attempt"]
        )


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint(op.f("uq_runs_delivery_id_pipeline_attempt"), type_="unique")
        batch.drop_column("attempt")
    # Values longer than the old lengths are cut: the old schema cannot hold them.
    for table, columns in WIDENED.items():
        for column, old in columns.items():
            value = sa.table(table, sa.column(column, sa.Text())).c[column]
            op.execute(
                value.table.update()
                .where(sa.func.length(value) > old.length)
                .values({column: sa.func.substr(value, 1, old.length)})
            )
        with op.batch_alter_table(table) as batch:
            for column, old in columns.items():
                batch.alter_column(column, existing_type=sa.Text(), type_=old)
