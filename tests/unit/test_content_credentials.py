"""The content signer: what its manifest says (read back with c2pa-python's Reader), that
it validates but for the test root's trust, that a changed image no longer does, and that
what C2PA refuses to sign is a failure with C2PA's reason, never an unsigned image."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest
from PIL import Image

from devtools.test_chain import make_test_chain
from service.domain.content_credentials import (
    TRAINED_ALGORITHMIC_MEDIA,
    ContentSigner,
    Provenance,
    SigningFailed,
    manifest_for,
)
from service.domain.errors import ConfigError
from service.domain.signing_certificate import SigningCredential, load_credential
from tests.manifests import UNTRUSTED, flip_one_byte, read

NOW = dt.datetime.now(dt.UTC)
INPUT = {"prompt": "a secret idea", "seed": 1234, "loras": [{"path": "acme/watercolor", "scale": 0.7}]}
FORMATS = [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")]


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> ContentSigner:
    chain = make_test_chain(tmp_path_factory.mktemp("chain"))
    return ContentSigner(load_credential(str(chain.chain_path), str(chain.key_path), NOW))


def image(pillow_format: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (96, 64), (30, 120, 200)).save(out, pillow_format)
    return out.getvalue()


def signed(signer: ContentSigner, data: bytes, content_type: str, include_prompt: bool = False) -> bytes:
    out = io.BytesIO()
    provenance = Provenance.of_job("job_1", "wavespeed-ai/flux-dev-lora", INPUT, 1, NOW, include_prompt=include_prompt)
    signer.sign(io.BytesIO(data), out, content_type, provenance)
    return out.getvalue()


@pytest.mark.parametrize(("pillow_format", "content_type"), FORMATS)
def test_a_signed_image_says_it_was_made_by_a_trained_model_and_names_the_job(
        signer: ContentSigner, pillow_format: str, content_type: str) -> None:
    reading = read(signed(signer, image(pillow_format), content_type), content_type)
    created = reading.created
    assert created["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert created["parameters"] == {"job_id": "job_1", "model": "wavespeed-ai/flux-dev-lora", "seed": 1234,
                                     "loras": [{"path": "acme/watercolor", "scale": 0.7}], "output_index": 1}
    assert created["softwareAgent"]["name"] == "wavespeed-ai/flux-dev-lora"
    assert "a secret idea" not in str(reading.manifest)
    assert reading.failures == [UNTRUSTED]  # valid in every respect but the test root's trust


@pytest.mark.parametrize(("pillow_format", "content_type"), FORMATS)
def test_one_changed_byte_of_the_picture_fails_validation(signer: ContentSigner, pillow_format: str,
                                                          content_type: str) -> None:
    tampered = flip_one_byte(signed(signer, image(pillow_format), content_type), content_type)
    reading = read(tampered, content_type)
    assert reading.state == "Invalid"
    assert "assertion.dataHash.mismatch" in reading.failures


def test_the_prompt_is_in_the_manifest_only_when_asked_for(signer: ContentSigner) -> None:
    reading = read(signed(signer, image("PNG"), "image/png", include_prompt=True), "image/png")
    assert reading.created["parameters"]["prompt"] == "a secret idea"
    assert "prompt" not in manifest_for(Provenance.of_job("j", "m", INPUT, 0, NOW, include_prompt=False)) \
        ["assertions"][0]["data"]["actions"][0]["parameters"]


def test_the_time_made_is_in_utc() -> None:
    made = dt.datetime(2026, 12, 7, 13, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    action = manifest_for(Provenance.of_job("j", "m", {}, 0, made, include_prompt=False))["assertions"][0]
    assert action["data"]["actions"][0]["when"] == "2026-12-07T12:00:00Z"


@pytest.mark.parametrize(("data", "content_type", "reason"), [
    (b"GIF89a" + bytes(64), "image/gif", "cannot be embedded in image/gif"),
    (b"\x89PNG\r\n\x1a\n" + bytes(40), "image/png", "signing with Content Credentials failed"),
])
def test_what_cannot_be_signed_is_a_failure_with_its_reason(signer: ContentSigner, data: bytes, content_type: str,
                                                            reason: str) -> None:
    out = io.BytesIO()
    with pytest.raises(SigningFailed, match=reason):
        signer.sign(io.BytesIO(data), out, content_type, Provenance("j", "m", [], None, 0, NOW))


def test_a_certificate_that_c2pa_itself_refuses_stops_the_signer_at_start(tmp_path: Path) -> None:
    # The checks here pass a credential by hand; the probe signature still finds the key
    # is not the certificate's, as C2PA sees it.
    one, other = make_test_chain(tmp_path / "one"), make_test_chain(tmp_path / "other")
    credential = SigningCredential(one.chain_path.read_bytes(), other.key_path.read_bytes(), "es256", "CN=x", NOW)
    with pytest.raises(ConfigError, match="C2PA refused the signing certificate"):
        ContentSigner(credential)


@pytest.mark.parametrize(("path", "shown"), [
    ("acme/watercolor", "acme/watercolor"),
    ("https://loras.example.com/styles/ink.safetensors", "https://loras.example.com/styles/ink.safetensors"),
    ("https://bucket.s3.amazonaws.com/ink.safetensors?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeef",
     "https://bucket.s3.amazonaws.com/ink.safetensors"),
    ("https://huggingface.co/acme/ink/resolve/main/ink.safetensors?token=hf_secretvalue#frag",
     "https://huggingface.co/acme/ink/resolve/main/ink.safetensors"),
    ("https://alice:s3cret@loras.example.com:8443/ink.safetensors", "https://loras.example.com:8443/ink.safetensors"),
    ("https://alice:pa/ss@loras.example.com/ink.safetensors", "https://loras.example.com/ink.safetensors"),
    ("acme/ink?token=hf_secretvalue", "acme/ink"),
])
def test_a_lora_urls_credentials_never_reach_the_manifest(path: str, shown: str) -> None:
    job_input = {**INPUT, "loras": [{"path": path, "scale": 1.0}]}
    parameters = manifest_for(Provenance.of_job("j", "m", job_input, 0, NOW, include_prompt=True)) \
        ["assertions"][0]["data"]["actions"][0]["parameters"]
    assert parameters["loras"] == [{"path": shown, "scale": 1.0}]
    for secret in ("AKIAEXAMPLE", "deadbeef", "hf_secretvalue", "s3cret", "pa/ss", "alice"):
        assert secret not in str(parameters)


def test_a_signed_image_shows_a_presigned_lora_url_without_its_signature(signer: ContentSigner) -> None:
    job_input = {**INPUT, "loras": [{"path": "https://b.s3.amazonaws.com/ink.safetensors?X-Amz-Signature=deadbeef",
                                     "scale": 0.5}]}
    out = io.BytesIO()
    signer.sign(io.BytesIO(image("PNG")), out, "image/png",
                Provenance.of_job("job_1", "wavespeed-ai/flux-dev-lora", job_input, 0, NOW, include_prompt=False))
    reading = read(out.getvalue(), "image/png")
    assert reading.created["parameters"]["loras"] == [{"path": "https://b.s3.amazonaws.com/ink.safetensors",
                                                       "scale": 0.5}]
    assert "deadbeef" not in str(reading.manifest)
