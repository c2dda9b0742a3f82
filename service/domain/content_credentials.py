"""Content Credentials: a C2PA manifest, signed by the service, embedded in every stored
output (JPEG, PNG, WebP) when C2PA_SIGNING_CERT and C2PA_SIGNING_KEY are set.

The manifest says one thing, in C2PA's own vocabulary: the image was created
(``c2pa.created``) by a trained model (digital source type ``trainedAlgorithmicMedia``),
the machine-readable marking of AI-generated content. The action's parameters name the
job, the model, the LoRAs (path and scale), the seed, the output's index and when it
was made; the prompt only with C2PA_INCLUDE_PROMPT=true (prompts are often a user's own
words). Signing uses ``c2pa-python``, which carries the C2PA library in its wheel: no
network access, no timestamp authority, no remote manifests. C2PA's own claim thumbnail
is left out: the image is its own preview, and the thumbnail cost ~30 KB per image.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from typing import IO, Any

import c2pa

from service.domain.errors import ConfigError, ServiceError
from service.domain.public_urls import public_reference
from service.domain.signing_certificate import SigningCredential, load_credential

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
CREATED = "c2pa.created"
GENERATOR = {"name": "wavespeed-jobs", "version": "0.1.0"}
SIGNABLE = ("image/jpeg", "image/png", "image/webp")
# No network, ever: the service signs, it does not look anything up while doing so.
SETTINGS: dict[str, Any] = {
    "builder": {"thumbnail": {"enabled": False}},
    "verify": {"ocsp_fetch": False, "remote_manifest_fetch": False},
}
# A 1×1 PNG: what the content signer signs at start to learn whether C2PA takes its certificate.
PROBE_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c49444154789c63f8ffff3f0005fe02fe"
    "0def46b80000000049454e44ae426082"
)


class SigningFailed(ServiceError):
    """The output could not be signed with Content Credentials."""


@dataclass(frozen=True)
class Provenance:
    """What a manifest says of one output."""

    job_id: str
    model: str
    loras: list[dict[str, Any]]  # {"path", "scale"} each
    seed: int | None
    index: int
    made_at: dt.datetime
    prompt: str | None = None  # only with C2PA_INCLUDE_PROMPT=true

    @classmethod
    def of_job(cls, job_id: str, model: str, input_: dict[str, Any], index: int, made_at: dt.datetime,
               *, include_prompt: bool) -> Provenance:
        # The image travels far beyond the owner: a LoRA path loses its access (public_urls.py).
        loras = [{"path": public_reference(str(lora["path"])), "scale": lora["scale"]}
                 for lora in input_.get("loras") or []]
        seed = input_.get("seed")
        prompt = input_.get("prompt") if include_prompt else None
        return cls(job_id, model, loras, seed if isinstance(seed, int) else None, index, made_at,
                   prompt if isinstance(prompt, str) else None)


def manifest_for(p: Provenance) -> dict[str, Any]:
    """The manifest definition c2pa's Builder takes."""
    parameters: dict[str, Any] = {"job_id": p.job_id, "model": p.model, "loras": p.loras, "seed": p.seed,
                                  "output_index": p.index}
    if p.prompt is not None:
        parameters["prompt"] = p.prompt
    action = {
        "action": CREATED,
        "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
        "softwareAgent": {"name": p.model},
        "when": p.made_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        "parameters": parameters,
    }
    return {
        "claim_generator_info": [GENERATOR],
        "title": f"{p.job_id} output {p.index}",
        "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": [action]}}],
    }


class ContentSigner:
    """Embeds signed manifests. Built once per process from a checked credential; one
    instance is shared by every signing thread (the C2PA library guards its signer)."""

    def __init__(self, credential: SigningCredential, *, include_prompt: bool = False) -> None:
        self.credential = credential
        self.include_prompt = include_prompt
        try:
            self._context = c2pa.Context.from_dict(SETTINGS)
            self._signer = c2pa.Signer.from_info(
                c2pa.C2paSignerInfo(credential.alg, credential.chain_pem, credential.key_pem, None))
        except c2pa.C2paError as exc:
            raise ConfigError(f"C2PA refused the signing certificate ({credential.subject}): {exc}") from None
        self._probe()

    @classmethod
    def from_files(cls, cert_path: str | None, key_path: str | None, *, include_prompt: bool) -> ContentSigner | None:
        """The signer C2PA_SIGNING_CERT and C2PA_SIGNING_KEY describe (None when unset);
        ConfigError naming what C2PA would reject in them."""
        if cert_path is None or key_path is None:
            return None
        return cls(load_credential(cert_path, key_path, dt.datetime.now(dt.UTC)), include_prompt=include_prompt)

    def _probe(self) -> None:
        """Sign a 1×1 image: C2PA checks the certificate against its own profile as it
        signs, so anything it would refuse is found now, not on every output."""
        try:
            self.sign(io.BytesIO(PROBE_PNG), io.BytesIO(), "image/png",
                      Provenance("probe", "probe", [], None, 0, dt.datetime.now(dt.UTC)))
        except SigningFailed as exc:
            raise ConfigError(f"C2PA refused the signing certificate ({self.credential.subject}): "
                              f"{exc.message}") from None

    def sign(self, source: IO[bytes], dest: IO[bytes], content_type: str, provenance: Provenance) -> None:
        """Write ``source`` with an embedded signed manifest to ``dest`` (both seekable).
        Blocking (CPU and file I/O): call it from a worker thread. SigningFailed with
        C2PA's reason otherwise."""
        if content_type not in SIGNABLE:
            raise SigningFailed(f"Content Credentials cannot be embedded in {content_type}")
        try:
            with c2pa.Builder(manifest_for(provenance), self._context) as builder:
                builder.sign(self._signer, content_type, source, dest)
        except c2pa.C2paError as exc:
            raise SigningFailed(f"signing with Content Credentials failed: {exc}") from None

    def close(self) -> None:
        self._signer.close()
        self._context.close()
