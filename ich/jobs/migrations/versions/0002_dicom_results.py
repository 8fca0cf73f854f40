"""Where a study came from, its DICOM results, and their delivery to the PACS (issue 17).

Revision ID: 0002_dicom_results
Revises: 0001_jobs
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_dicom_results"
down_revision = "0001_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ich_jobs") as batch:
        batch.add_column(sa.Column("origin", sa.String(16), nullable=False, server_default="upload"))
        batch.add_column(sa.Column("delivery_status", sa.String(16), nullable=True))
        batch.add_column(sa.Column("delivery_attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("delivery_available_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("delivered_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("delivery_error", sa.Text, nullable=True))
    op.create_index("ix_ich_jobs_delivery", "ich_jobs", ["delivery_status", "delivery_available_at"])
    op.create_table(
        "ich_job_outputs",
        sa.Column(
            "job_id",
            sa.String(36),
            sa.ForeignKey("ich_jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ich_job_outputs")
    op.drop_index("ix_ich_jobs_delivery", table_name="ich_jobs")
    with op.batch_alter_table("ich_jobs") as batch:
        for name in (
            "delivery_error",
            "delivered_at",
            "delivery_available_at",
            "delivery_attempts",
            "delivery_status",
            "origin",
        ):
            batch.drop_column(name)
