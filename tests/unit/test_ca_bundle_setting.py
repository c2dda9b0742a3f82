"""AWS_CA_BUNDLE: a PEM file of CA certificates is taken; a path that cannot be read, or
a file that holds no certificate, is refused at start naming the variable and the rule.
(tests/integration/test_storage.py reaches an S3 behind a private CA with it.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_a_pem_file_is_taken_and_unset_means_the_public_roots(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)  # some machines set it for every program
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(PEM)
    assert Settings(aws_ca_bundle=str(bundle)).aws_ca_bundle == str(bundle)
    assert Settings().aws_ca_bundle is None
    assert Settings(aws_ca_bundle="").aws_ca_bundle is None


@pytest.mark.parametrize(("name", "content", "rule"), [
    ("missing.pem", None, "must be a readable file"),
    ("key.pem", b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
     "must be a PEM file of CA certificates"),
    ("empty.pem", b"", "must be a PEM file of CA certificates"),
])
def test_a_bundle_that_is_not_a_readable_pem_of_certificates_is_refused_naming_it(
        tmp_path: Path, name: str, content: bytes | None, rule: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValidationError) as raised:
        Settings(aws_ca_bundle=str(path))
    assert "aws_ca_bundle" in str(raised.value) and rule in str(raised.value)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="must be a readable file"):
        Settings(aws_ca_bundle=str(tmp_path))


def test_the_environment_variable_is_read_and_an_empty_one_means_the_public_roots(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(PEM)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(bundle))
    assert Settings().aws_ca_bundle == str(bundle)
    # Storage then checks against the public roots, never against "" (botocore's own
    # lookup of an empty AWS_CA_BUNDLE turned verification off in older releases).
    monkeypatch.setenv("AWS_CA_BUNDLE", "")
    assert Settings().aws_ca_bundle is None
