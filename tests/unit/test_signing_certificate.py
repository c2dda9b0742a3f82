"""The start-up check of C2PA_SIGNING_CERT / C2PA_SIGNING_KEY: the test chain passes, and
each certificate C2PA refuses is refused with its reason named."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devtools.test_chain import ensure_test_chain, make_test_chain
from service.domain.content_credentials import ContentSigner
from service.domain.errors import ConfigError
from service.domain.signing_certificate import DOCUMENT_SIGNING, algorithm_for, check_credential, load_credential

NOW = dt.datetime.now(dt.UTC)
PEM = serialization.Encoding.PEM
ROOT_KEY = ec.generate_private_key(ec.SECP256R1())
ROOT_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root")])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def leaf(*, digital_signature: bool = True, usage_critical: bool = True,
         purposes: list[x509.ObjectIdentifier] | None = None, self_signed: bool = False,
         key_identifier: bool = True) -> tuple[bytes, bytes]:
    """A leaf with one property changed from what C2PA asks; (chain PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")])
    usage = x509.KeyUsage(digital_signature=digital_signature, content_commitment=not digital_signature,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name if self_signed else ROOT_NAME)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(usage, critical=usage_critical))
    purposes = [ExtendedKeyUsageOID.EMAIL_PROTECTION] if purposes is None else purposes
    if purposes:
        builder = builder.add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
    if key_identifier and not self_signed:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ROOT_KEY.public_key()),
                                        critical=False)
    cert = builder.sign(key if self_signed else ROOT_KEY, hashes.SHA256())
    return cert.public_bytes(PEM), _key_pem(key)


def test_the_test_chain_is_accepted_and_signs_with_es256(tmp_path: Path) -> None:
    chain = make_test_chain(tmp_path)
    credential = load_credential(str(chain.chain_path), str(chain.key_path), NOW)
    assert credential.alg == "es256"
    assert "test signer" in credential.subject


@pytest.mark.parametrize(("expired", "leaf_is_ca", "reason"), [
    (True, False, "the certificate expired on"),
    (False, True, "it is a CA certificate"),
])
def test_an_expired_or_ca_certificate_is_refused_naming_the_problem(tmp_path: Path, expired: bool, leaf_is_ca: bool,
                                                                    reason: str) -> None:
    chain = make_test_chain(tmp_path, expired=expired, leaf_is_ca=leaf_is_ca)
    with pytest.raises(ConfigError, match=reason) as caught:
        load_credential(str(chain.chain_path), str(chain.key_path), NOW)
    assert caught.value.message.startswith("C2PA_SIGNING_CERT")


def test_a_certificate_not_yet_valid_is_refused(tmp_path: Path) -> None:
    chain = make_test_chain(tmp_path)
    with pytest.raises(ConfigError, match="not valid before"):
        load_credential(str(chain.chain_path), str(chain.key_path), NOW - dt.timedelta(days=2))


@pytest.mark.parametrize(("changes", "reason"), [
    ({"digital_signature": False}, "lacks digitalSignature"),
    ({"usage_critical": False}, "missing or not critical"),
    ({"purposes": []}, "names neither emailProtection nor documentSigning"),
    ({"purposes": [ExtendedKeyUsageOID.SERVER_AUTH]}, "names neither emailProtection nor documentSigning"),
    ({"purposes": [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]}, "anyExtendedKeyUsage"),
    ({"self_signed": True}, "self-signed"),
    ({"key_identifier": False}, "no authority key identifier"),
])
def test_each_key_usage_c2pa_refuses_is_named(changes: dict[str, object], reason: str) -> None:
    chain, key = leaf(**changes)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=reason):
        check_credential(chain, key, NOW)


def test_a_key_that_is_not_the_certificates_is_refused() -> None:
    chain, _ = leaf()
    _, other_key = leaf()
    with pytest.raises(ConfigError, match="not the private key of the certificate"):
        check_credential(chain, other_key, NOW)


@pytest.mark.parametrize(("chain", "key", "reason"), [
    (b"not a certificate", b"", "holds no PEM certificate"),
    (leaf()[0], b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not an unencrypted PEM"),
])
def test_unreadable_files_are_refused(chain: bytes, key: bytes, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        check_credential(chain, key, NOW)


def test_a_missing_file_names_its_variable(tmp_path: Path) -> None:
    chain = make_test_chain(tmp_path)
    with pytest.raises(ConfigError, match="C2PA_SIGNING_KEY: cannot read"):
        load_credential(str(chain.chain_path), str(tmp_path / "absent.pem"), NOW)


def test_the_algorithm_follows_the_key() -> None:
    assert algorithm_for(ed25519.Ed25519PrivateKey.generate()) == "ed25519"
    assert algorithm_for(ec.generate_private_key(ec.SECP384R1())) == "es384"
    assert algorithm_for(rsa.generate_private_key(public_exponent=65537, key_size=2048)) == "ps256"
    with pytest.raises(ConfigError, match="must be an Ed25519"):
        algorithm_for(ec.generate_private_key(ec.SECP256K1()))


def test_dev_keeps_its_test_chain_between_runs_and_renews_it_before_it_ends(tmp_path: Path) -> None:
    first = ensure_test_chain(tmp_path)
    pem = first.chain_path.read_bytes()
    assert ensure_test_chain(tmp_path).chain_path.read_bytes() == pem  # kept: one signer between runs
    assert ensure_test_chain(tmp_path, NOW + dt.timedelta(days=340)).chain_path.read_bytes() != pem  # renewed


def test_a_document_signing_only_certificate_passes_the_checks_and_the_c2pa_library_has_the_last_word() -> None:
    # The specification allows documentSigning; the C2PA library shipped (c2pa-python 0.38)
    # refuses it by default. The probe signature at start reports the library's reason.
    chain, key = leaf(purposes=[DOCUMENT_SIGNING])
    credential = check_credential(chain, key, NOW)
    with pytest.raises(ConfigError, match=r"(?s)C2PA refused the signing certificate.*missing required EKU"):
        ContentSigner(credential)
