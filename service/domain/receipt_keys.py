"""The keys receipts are signed with: Ed25519 or P-256, each named by its RFC 7638
thumbprint (the JWS ``kid``), published as a JWK Set.

RECEIPT_SIGNING_KEY (a PEM file) signs when it is set; otherwise the service makes an
Ed25519 key on first start and keeps it in the database, sealed with
SECRETS_ENCRYPTION_KEY when that is set (service/domain/sealing.py). Every key that
ever signed stays published (its public part only), so a receipt signed before a
rotation still verifies after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey

from service.domain.errors import ConfigError

MAX_PEM_BYTES = 64 * 1024
# JWS algorithm per key (RFC 9864's fully specified Ed25519, not the older "EdDSA").
ALGORITHMS = ("Ed25519", "ES256")
SigningKey = OKPKey | ECKey


@dataclass(frozen=True)
class ReceiptKey:
    kid: str
    alg: str
    key: SigningKey  # with its private part when it signs

    def public_jwk(self) -> dict[str, Any]:
        return {**self.key.as_dict(private=False), "kid": self.kid, "alg": self.alg, "use": "sig"}

    def private_pem(self) -> str:
        return self.key.as_pem(private=True).decode("ascii")


def _named(key: SigningKey) -> ReceiptKey:
    if isinstance(key, OKPKey) and key.curve_name == "Ed25519":
        return ReceiptKey(key.thumbprint(), "Ed25519", key)
    if isinstance(key, ECKey) and key.curve_name == "P-256":
        return ReceiptKey(key.thumbprint(), "ES256", key)
    raise ConfigError("RECEIPT_SIGNING_KEY must be an Ed25519 or P-256 (prime256v1) private key")


def generate() -> ReceiptKey:
    """A new Ed25519 key (a new kid)."""
    return _named(OKPKey.generate_key("Ed25519"))


def from_pem(pem: bytes | str, source: str = "RECEIPT_SIGNING_KEY") -> ReceiptKey:
    """A private key in PEM (PKCS#8, or SEC1 for P-256); ConfigError naming ``source``."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    for kind in (OKPKey, ECKey):
        try:
            return _named(kind.import_key(data))
        except (JoseError, ValueError, TypeError):
            continue
    raise ConfigError(f"{source} is not an unencrypted PEM Ed25519 or P-256 private key")


def load(path: str) -> ReceiptKey:
    """RECEIPT_SIGNING_KEY's file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"RECEIPT_SIGNING_KEY: cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_PEM_BYTES:
        raise ConfigError(f"RECEIPT_SIGNING_KEY: {path} is larger than {MAX_PEM_BYTES} bytes, not a key")
    key = from_pem(data)
    if key.key.private_key is None:
        raise ConfigError("RECEIPT_SIGNING_KEY holds a public key; it must be the private key")
    return key


def jwks(public_jwks: list[dict[str, Any]]) -> dict[str, Any]:
    """The JWK Set ``GET /.well-known/jwks.json`` answers."""
    return {"keys": public_jwks}
