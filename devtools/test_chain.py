"""A test certificate chain for Content Credentials: a root CA and a leaf that C2PA
accepts for signing (end entity, critical key usage with digitalSignature, the
emailProtection extended key usage, key identifiers). ``wavespeed-jobs dev`` signs its
images with it; tests make deliberately wrong leaves (expired, a CA) with the knobs.

No reader trusts the root: a validator reports the signing credential as untrusted and
everything else as valid, which is what a test chain can honestly show.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CHAIN_FILE = "c2pa-chain.pem"  # leaf first, then the root
KEY_FILE = "c2pa-key.pem"
ROOT_FILE = "c2pa-root.pem"
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class TestChain:
    chain_path: Path
    key_path: Path
    root_path: Path

    __test__ = False  # not a pytest test class, whatever its name


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wavespeed-jobs test chain"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _usage(*, signs: bool, certifies: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=signs, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=certifies, crl_sign=certifies,
                         encipher_only=False, decipher_only=False)


def _root(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    return (x509.CertificateBuilder().subject_name(_name("test root")).issuer_name(_name("test root"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(signs=False, certifies=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))


def _leaf(root_key: ec.EllipticCurvePrivateKey, root: x509.Certificate, key: ec.EllipticCurvePrivateKey,
          not_before: dt.datetime, not_after: dt.datetime, is_ca: bool) -> x509.Certificate:
    return (x509.CertificateBuilder().subject_name(_name("test signer")).issuer_name(root.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
            .add_extension(_usage(signs=True, certifies=is_ca), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))


def make_test_chain(folder: Path, *, now: dt.datetime | None = None, valid_days: int = 365,
                    expired: bool = False, leaf_is_ca: bool = False) -> TestChain:
    """Write a new root, leaf chain and leaf key (P-256, ES256) under ``folder``.
    ``expired``: the leaf's validity ended yesterday; ``leaf_is_ca``: the leaf is a CA
    (both are certificates C2PA refuses, for tests)."""
    now = now or dt.datetime.now(dt.UTC)
    folder.mkdir(parents=True, exist_ok=True)
    root_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = _root(root_key, now)
    if expired:
        not_before, not_after = now - dt.timedelta(days=30), now - dt.timedelta(days=1)
    else:
        not_before, not_after = now - dt.timedelta(days=1), now + dt.timedelta(days=valid_days)
    leaf = _leaf(root_key, root, leaf_key, not_before, not_after, leaf_is_ca)
    pem = serialization.Encoding.PEM
    chain = TestChain(folder / CHAIN_FILE, folder / KEY_FILE, folder / ROOT_FILE)
    chain.chain_path.write_bytes(leaf.public_bytes(pem) + root.public_bytes(pem))
    chain.root_path.write_bytes(root.public_bytes(pem))
    chain.key_path.touch(mode=0o600)
    chain.key_path.write_bytes(leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    return chain


def ensure_test_chain(folder: Path, now: dt.datetime | None = None) -> TestChain:
    """The test chain under ``folder``, made on first use and again when its leaf ends
    within RENEW_BEFORE (so the dev stack's images keep one signer between runs)."""
    now = now or dt.datetime.now(dt.UTC)
    chain = TestChain(folder / CHAIN_FILE, folder / KEY_FILE, folder / ROOT_FILE)
    if chain.chain_path.exists() and chain.key_path.exists() and chain.root_path.exists():
        leaf = x509.load_pem_x509_certificates(chain.chain_path.read_bytes())[0]
        if leaf.not_valid_after_utc - RENEW_BEFORE > now:
            return chain
    return make_test_chain(folder, now=now)
