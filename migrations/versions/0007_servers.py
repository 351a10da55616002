"""deliveries and runs carry their server's name (RUNNER_SERVER_NAME), so that several servers share one
database; runs carry their commit's subject

A delivery is one per (server, delivery id): a hook fanned out to two servers is a new delivery on each,
a redelivery to the same server still a duplicate. A run is one per (server, delivery, pipeline, attempt),
and pipeline names may repeat across servers. The rows there are belong to the server that upgrades: the
name ``Store.upgrade`` passes in, or this host's name when Alembic runs on its own.

Downgraded, one server's history remains possible only: of the rows sharing a delivery id, the downgrading
server's (or else the first recorded) is kept; runs are numbered again per (delivery, pipeline).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

import socket
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _server_name() -> str:
    named = context.config.attributes.get("server_name")
    return named if isinstance(named, str) and named else socket.gethostname()[:64]


def upgrade() -> None:
    server = _server_name()
    for table in ("deliveries", "runs"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("server", sa.String(64), nullable=True))
        rows = sa.table(table, sa.column("server", sa.String(64)))
        op.execute(rows.update().values(server=server))
    with op.batch_alter_table("deliveries") as batch:
        batch.alter_column("server", existing_type=sa.String(64), nullable=False)
        batch.drop_constraint(op.f("pk_deliveries"), type_="primary")
        batch.create_primary_key(op.f("pk_deliveries"), ["server", "delivery_id"])
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("server", existing_type=sa.String(64), nullable=False)
        batch.add_column(sa.Column("subject", sa.Text(), nullable=True))
        batch.drop_constraint(op.f("uq_runs_delivery_id_pipeline_attempt"), type_="unique")
        batch.create_unique_constraint(
            op.f("uq_runs_server_delivery_id_pipeline_attempt"),
            ["server", "delivery_id", "pipeline", "attempt"],
        )
        batch.create_index(op.f("ix_runs_server_pipeline"), ["server", "pipeline"])


def downgrade() -> None:
    server = _server_name()
    # Of the records of one delivery id, one stays: the downgrading server's, else the first recorded.
    op.execute(
        sa.text(
            "DELETE FROM deliveries WHERE EXISTS (SELECT 1 FROM deliveries AS other"
            " WHERE other.delivery_id = deliveries.delivery_id AND other.server <> deliveries.server"
            " AND (other.server = :server OR (deliveries.server <> :server"
            " AND (other.recorded_at < deliveries.recorded_at OR (other.recorded_at = deliveries.recorded_at"
            " AND other.server < deliveries.server)))))"
        ).bindparams(server=server)
    )
    with op.batch_alter_table("runs") as batch:
        batch.drop_index(op.f("ix_runs_server_pipeline"))
        batch.drop_constraint(op.f("uq_runs_server_delivery_id_pipeline_attempt"), type_="unique")
    # Numbered as revision 0003 did, across servers, so that the old constraint holds.
    op.execute(
        "UPDATE runs SET attempt = (SELECT COUNT(*) FROM runs AS earlier"
        " WHERE earlier.delivery_id = runs.delivery_id AND earlier.pipeline = runs.pipeline"
        " AND earlier.id <= runs.id) WHERE delivery_id IS NOT NULL"
    )
    with op.batch_alter_table("runs") as batch:
        batch.create_unique_constraint(
            op.f("uq_runs_delivery_id_pipeline_attempt"), ["delivery_id", "pipeline", "attempt"]
        )
        batch.drop_column("subject")
        batch.drop_column("server")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_constraint(op.f("pk_deliveries"), type_="primary")
        batch.create_primary_key(op.f("pk_deliveries"), ["delivery_id"])
        batch.drop_column("server")
