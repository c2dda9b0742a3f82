"""Provenance: the keys receipts are signed with, and which stored outputs carry Content
Credentials.

``receipt_keys`` holds every key that ever signed a receipt, by its RFC 7638 thumbprint
(the JWS ``kid``), with its public JWK, published at ``/.well-known/jwks.json`` for as
long as the row lives so old receipts keep verifying. ``private_key`` (PEM, sealed with
SECRETS_ENCRYPTION_KEY when set) is kept only for the key the service made itself and
signs with now: a rotation clears it, and a key from RECEIPT_SIGNING_KEY is recorded
without it. The partial unique index allows one signing key at a time, so two processes
starting together cannot each make one.

``job_outputs.content_credentials``: the stored object has an embedded, signed C2PA
manifest (the history page shows it; receipts say it). Outputs stored before are false.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE receipt_keys (
            kid         text PRIMARY KEY,
            alg         text NOT NULL,
            public_jwk  jsonb NOT NULL,
            private_key text,
            created_at  timestamptz NOT NULL DEFAULT now(),
            retired_at  timestamptz
        )
        """
    )
    op.execute("CREATE UNIQUE INDEX receipt_keys_one_signing ON receipt_keys ((private_key IS NOT NULL)) "
               "WHERE private_key IS NOT NULL")
    op.execute("ALTER TABLE job_outputs ADD COLUMN content_credentials boolean NOT NULL DEFAULT false")


def downgrade() -> None:
    op.execute("ALTER TABLE job_outputs DROP COLUMN content_credentials")
    op.execute("DROP TABLE receipt_keys")
