"""Per-owner callback secrets.

Every owner that exists now (the distinct owners of api_keys and jobs) gets a row whose
``secret`` is NULL, which means "the service-wide secret": CALLBACK_SIGNING_SECRET when
set, else the one generated into service_secrets. That is the secret their backends
verify with today, so nothing breaks on upgrade; the marker is resolved when a callback
is signed (the migration needs neither the environment nor SECRETS_ENCRYPTION_KEY). A
rotation replaces it with a random secret of the owner's own. Owners created later get a
random secret on first need (service/db/callback_secrets.py).

Revision ID: 0005
Revises: 0007
Create Date: 2026-12-02
"""

from alembic import op

revision = "0005"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE callback_secrets (
            owner               text PRIMARY KEY,
            secret              text,
            previous_secret     text,
            previous_expires_at timestamptz,
            created_at          timestamptz NOT NULL DEFAULT now(),
            rotated_at          timestamptz
        )
        """
    )
    op.execute(
        """
        INSERT INTO callback_secrets (owner, secret)
        SELECT owner, NULL FROM api_keys UNION SELECT owner, NULL FROM jobs
        ON CONFLICT DO NOTHING
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE callback_secrets")
