"""Secrets at rest: sealed with SECRETS_ENCRYPTION_KEY (a Fernet key: AES-128-CBC +
HMAC-SHA256, from the ``cryptography`` package) when it is set, stored as they are
otherwise. A sealed value carries a prefix, so values written before the key was set
still read; they are sealed the next time they are written (a rotation)."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

from service.domain.errors import ConfigError

SEALED_PREFIX = "fernet:"


class Sealer:
    """Seals and opens stored secrets; ``Sealer(None)`` stores them as they are."""

    def __init__(self, key: str | None) -> None:
        try:
            self._fernet = Fernet(key.encode("ascii")) if key else None
        except (ValueError, UnicodeEncodeError):
            raise ConfigError(
                "SECRETS_ENCRYPTION_KEY must be a Fernet key (32 url-safe base64-encoded bytes; "
                "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
            ) from None

    def seal(self, secret: str) -> str:
        if self._fernet is None:
            return secret
        return SEALED_PREFIX + self._fernet.encrypt(secret.encode("utf-8")).decode("ascii")

    def open(self, stored: str) -> str:
        if not stored.startswith(SEALED_PREFIX):
            return stored
        if self._fernet is None:
            raise ConfigError("a stored secret is encrypted but SECRETS_ENCRYPTION_KEY is not set")
        try:
            return self._fernet.decrypt(stored[len(SEALED_PREFIX):].encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise ConfigError("a stored secret does not open with SECRETS_ENCRYPTION_KEY (wrong key?)") from None
