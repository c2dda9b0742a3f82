"""The certificate Content Credentials are signed with (C2PA_SIGNING_CERT, C2PA_SIGNING_KEY),
checked at start against what C2PA validators require of a signer, so a certificate
that every reader would reject stops the service with the reason instead of marking
every image with a manifest that fails validation.

The rules are the C2PA specification's for a claim signer: an X.509 v3 end-entity
certificate (not a CA), a critical key usage with digitalSignature, an extended key
usage that names emailProtection or documentSigning and not anyExtendedKeyUsage, an
authority key identifier when another certificate issued it, inside its validity
period, and a private key that belongs to it. The C2PA library has the last word: the
content signer signs a probe image at start (service/domain/content_credentials.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from service.domain.errors import ConfigError

DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")
SIGNING_PURPOSES = {ExtendedKeyUsageOID.EMAIL_PROTECTION, DOCUMENT_SIGNING}
MAX_PEM_BYTES = 1024 * 1024
# The C2PA algorithm a key signs with, by key type (and curve).
EC_ALGORITHMS = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}


@dataclass(frozen=True)
class SigningCredential:
    """A checked chain (leaf first) and its key, as C2PA takes them."""

    chain_pem: bytes
    key_pem: bytes
    alg: str  # es256, es384, es512, ps256 or ed25519
    subject: str
    not_after: dt.datetime


def _read(path: str, variable: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_PEM_BYTES:
        raise ConfigError(f"{variable}: {path} is larger than {MAX_PEM_BYTES} bytes, not a PEM file")
    return data


def load_credential(cert_path: str, key_path: str, now: dt.datetime) -> SigningCredential:
    """Read and check the PEM chain at ``cert_path`` and the key at ``key_path``;
    ConfigError naming the variable and the problem otherwise."""
    return check_credential(_read(cert_path, "C2PA_SIGNING_CERT"), _read(key_path, "C2PA_SIGNING_KEY"), now)


def check_credential(chain_pem: bytes, key_pem: bytes, now: dt.datetime) -> SigningCredential:
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise ConfigError("C2PA_SIGNING_CERT holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError("C2PA_SIGNING_KEY is not an unencrypted PEM private key") from None
    leaf = chain[0]
    subject = leaf.subject.rfc4514_string()
    found = leaf_problems(leaf, now) + chain_problems(chain[1:], now)
    if found:
        raise ConfigError(f"C2PA_SIGNING_CERT ({subject}) would be rejected by C2PA: {'; '.join(found)}")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, spki)
            != leaf.public_key().public_bytes(serialization.Encoding.DER, spki)):
        raise ConfigError(f"C2PA_SIGNING_KEY is not the private key of the certificate ({subject})")
    return SigningCredential(chain_pem=chain_pem, key_pem=key_pem, alg=algorithm_for(key), subject=subject,
                             not_after=leaf.not_valid_after_utc)


def algorithm_for(key: object) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"  # C2PA signs with RSA only as RSASSA-PSS
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in EC_ALGORITHMS:
        return EC_ALGORITHMS[key.curve.name]
    raise ConfigError("C2PA_SIGNING_KEY must be an Ed25519, RSA, or P-256/P-384/P-521 EC key")


def _validity_problems(cert: x509.Certificate, now: dt.datetime, what: str) -> list[str]:
    if cert.not_valid_after_utc <= now:
        return [f"the {what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"]
    if cert.not_valid_before_utc > now:
        return [f"the {what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"]
    return []


def leaf_problems(leaf: x509.Certificate, now: dt.datetime) -> list[str]:
    """Every reason C2PA would refuse ``leaf`` as a claim signer (empty: none)."""
    found = [] if leaf.version == x509.Version.v3 else ["it is not an X.509 v3 certificate"]
    found += _validity_problems(leaf, now, "certificate")
    extensions = {ext.oid: ext for ext in leaf.extensions}
    constraints = extensions.get(x509.oid.ExtensionOID.BASIC_CONSTRAINTS)
    if constraints is not None and isinstance(constraints.value, x509.BasicConstraints) and constraints.value.ca:
        found.append("it is a CA certificate (basic constraints CA:TRUE); sign with an end-entity certificate")
    usage = extensions.get(x509.oid.ExtensionOID.KEY_USAGE)
    if usage is None or not usage.critical:
        found.append("its key usage extension is missing or not critical")
    elif isinstance(usage.value, x509.KeyUsage) and not usage.value.digital_signature:
        found.append("its key usage lacks digitalSignature")
    purposes = extensions.get(x509.oid.ExtensionOID.EXTENDED_KEY_USAGE)
    oids = set(purposes.value) if purposes is not None and isinstance(purposes.value, x509.ExtendedKeyUsage) else set()
    if ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in oids:
        found.append("its extended key usage includes anyExtendedKeyUsage, which C2PA forbids")
    elif not oids & SIGNING_PURPOSES:
        found.append("its extended key usage names neither emailProtection nor documentSigning")
    self_issued = leaf.issuer == leaf.subject
    if self_issued:
        found.append("it is self-signed; C2PA needs a certificate issued by a CA (wavespeed-jobs dev makes a test "
                     "chain)")
    elif x509.oid.ExtensionOID.AUTHORITY_KEY_IDENTIFIER not in extensions:
        found.append("it has no authority key identifier")
    return found


def chain_problems(issuers: list[x509.Certificate], now: dt.datetime) -> list[str]:
    found: list[str] = []
    for cert in issuers:
        found += _validity_problems(cert, now, f"issuing certificate {cert.subject.rfc4514_string()}")
    return found
