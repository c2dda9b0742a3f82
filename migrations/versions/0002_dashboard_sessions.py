"""Dashboard sessions: signing in to the web page creates a server-side session, so the
browser's cookie holds a random token rather than the API key itself.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Only the token's sha256 is stored: a leaked table cannot be replayed as cookies.
    # The session hangs off the API key that opened it, so revoking (or deleting) the
    # key ends its sessions too.
    op.execute(
        """
        CREATE TABLE dashboard_sessions (
            token_hash text PRIMARY KEY,
            owner      text NOT NULL,
            api_key_id bigint NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL
        )
        """
    )
    # Expired sessions are swept by range on sign-in.
    op.execute("CREATE INDEX dashboard_sessions_expires ON dashboard_sessions (expires_at)")
    op.execute("CREATE INDEX dashboard_sessions_api_key ON dashboard_sessions (api_key_id)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS dashboard_sessions")
